"""`pipeline.max_parallel`: independent stages run at the same time in child processes, a stage waits for
the stages it reads and for every stage listed before it to start; a failed stage stops new starts and
names its log; reruns skip as in a sequential run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from r1mega.config import ConfigError, load_config
from r1mega.pipeline.scheduler import _Scheduler, dependencies

ROOT = Path(__file__).resolve().parents[2]


def test_dependencies_of_the_demo_stages():
    cfg = load_config(str(ROOT / "examples/tiny/demo.yaml"), [])
    deps = {st.name: dependencies(cfg, st) for st in cfg.pipeline.stages}
    assert deps["pretrain"] == set() and deps["pretrain_student"] == {"pretrain"}  # after: [pretrain]
    assert deps["r1_zero"] == {"pretrain"} and deps["eval_r1_zero"] == {"r1_zero"}
    assert deps["cold_start_sft"] == {"pretrain", "cold_start_data"}  # init_from + stage:cold_start_data/samples.jsonl
    assert deps["all_scenario_rl"] == {"sft_r1", "reward_model"}  # rewards.reward_model: stage:reward_model
    assert deps["distill"] == {"pretrain_student", "rejection", "all_scenario_rl"}  # teacher: stage:all_scenario_rl
    assert deps["distill_base"] == {"pretrain_student", "rejection_base", "pretrain"}


def test_demo_schedule():
    """The demo's order with max_parallel 2 (simulated with session-5 stage times): the R1 chain runs back to
    back; the student's pretraining waits for the teacher's (``after``), then runs beside the chain; the side
    evaluations and the baseline student fill the second slot; nothing waits for a stage it does not read."""
    cfg = load_config(str(ROOT / "examples/tiny/demo.yaml"), [])
    secs = {"pretrain": 650, "r1_zero": 170, "pretrain_student": 290, "cold_start_data": 29, "cold_start_sft": 28,
            "reasoning_rl": 70, "rejection": 51, "sft_r1": 38, "reward_model": 44, "all_scenario_rl": 82,
            "distill": 35, "eval_r1": 32, "eval_student": 13, "eval_base": 30, "eval_r1_zero": 33,
            "rejection_base": 23, "distill_base": 32, "eval_student_base": 12}
    sched = _Scheduler(cfg, [(st, Path("/nonexistent") / st.name, "", "run") for st in cfg.pipeline.stages], [],
                       cfg.pipeline.max_parallel, log=lambda msg: None)
    start, end, now = {}, {}, 0
    while len(end) < len(secs):
        while (i := sched._startable()) is not None:
            name = sched.todo[i][0].name
            sched.started.add(name)
            sched.running[name] = None
            start[name] = now
        name = min(sched.running, key=lambda n: start[n] + secs[n])
        now = end[name] = start[name] + secs[name]
        del sched.running[name]
        sched.done.add(name)
    assert cfg.pipeline.max_parallel == 2
    assert start["r1_zero"] == start["pretrain_student"] == end["pretrain"]  # not beside the teacher's pretraining
    chain = ["pretrain", "r1_zero", "cold_start_data", "cold_start_sft", "reasoning_rl", "rejection", "sft_r1",
             "reward_model", "all_scenario_rl", "distill", "eval_student"]
    assert all(start[b] == end[a] for a, b in zip(chain, chain[1:]))  # the chain never waits for a slot
    for name in ("eval_base", "eval_r1_zero", "rejection_base"):
        assert start[name] >= end["pretrain_student"]  # side work after the student, in the second slot
    for name, deps in {n: dependencies(cfg, cfg.stage(n)) for n in secs}.items():
        assert all(start[name] >= end[d] for d in deps), name
    assert max(end.values()) == end["eval_student"] < sum(secs.values()) - 400


def test_after_names_an_earlier_stage():
    with pytest.raises(ConfigError, match=r"pipeline.stages\[r1_zero\].after.*'pretrain_studnt'.*did you mean"):
        load_config(str(ROOT / "examples/tiny/demo.yaml"), ["pipeline.stages.r1_zero.after=[pretrain_studnt]"])


def test_max_parallel_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="pipeline.max_parallel"):
        load_config(str(ROOT / "examples/tiny/demo.yaml"), ["pipeline.max_parallel=0"])


CONFIG = {
    "name": "sched",
    "model": {"preset": "tiny-dense", "num_layers": 1},
    "optimizer": {"lr": 1.0e-3, "warmup_steps": 1, "micro_batch_size": 2, "global_batch_size": 2},
    "data": {"tasks": ["arith"], "difficulties": [1], "seq_length": 32},
    "logging": {"tensorboard": False},
    "checkpoint": {"save_interval": 0},
    "cpu_threads": 1,
}


def _stages(bad_data: str) -> list:
    return [
        {"name": "a", "kind": "pretrain", "steps": 6},
        {"name": "b", "kind": "pretrain", "steps": 6, "nice": 5},  # independent of a: runs beside it
        {"name": "c", "kind": "pretrain", "steps": 2, "init_from": "a"},  # waits for a
        {"name": "d", "kind": "sft", "steps": 2, "init_from": "c",
         "overrides": {"data": {"train_paths": [bad_data]}}},  # fails at run time (a broken JSONL line)
        {"name": "e", "kind": "pretrain", "steps": 2, "after": ["d"]},  # reads nothing, but waits for d
    ]


def _run(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1mega.cli", "run", str(path), *extra], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _times(run: Path, name: str) -> tuple[datetime, datetime]:
    m = json.loads((run / name / "manifest.json").read_text())
    return datetime.fromisoformat(m["started"]), datetime.fromisoformat(m["updated"])


@pytest.mark.slow
def test_parallel_stages_wait_fail_and_rerun(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1", "response": "2"}\n{not json\n')
    run = tmp_path / "run"
    cfg = {**CONFIG, "pipeline": {"run_dir": str(run), "max_parallel": 2, "stages": _stages(str(bad))}}
    path = tmp_path / "sched.yaml"
    path.write_text(yaml.safe_dump(cfg))

    first = _run(path)
    assert first.returncode != 0
    out = first.stdout + first.stderr
    assert "stage b (pretrain): started" in out and "beside a" in out
    assert "stage 'd' failed" in out and str(run / "d" / "stage.log") in out
    a0, a1 = _times(run, "a")
    b0, b1 = _times(run, "b")
    c0, _ = _times(run, "c")
    assert b0 < a1 and a0 < b1  # a and b ran at the same time
    assert c0 >= a1  # c read a's checkpoint: it started once a was complete
    for name in ("a", "b", "c"):
        assert json.loads((run / name / "manifest.json").read_text())["status"] == "complete"
        assert "stage " + name in (run / name / "stage.log").read_text()  # each child's own output, in its log
    assert json.loads((run / "d" / "manifest.json").read_text())["status"] == "failed"
    assert "bad.jsonl" in (run / "d" / "stage.log").read_text()  # the error names the file
    base = os.nice(0)  # children inherit this test's priority; b's process lowers its own by 5
    assert f"nice {min(19, base + 5)}\n" in (run / "b" / "stage.log").read_text()
    assert f"nice {base}\n" in (run / "a" / "stage.log").read_text()
    assert not (run / "e").exists()
    assert "b | " in first.stdout  # child output reaches the console, prefixed with its stage

    # fixed input: the rerun skips a, b and c and runs d and e
    bad.write_text('{"prompt": "1+1", "response": "2"}\n')
    second = _run(path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for name in ("a", "b", "c"):
        assert f"stage {name}: complete, skipped" in second.stdout
    for name in ("d", "e"):
        assert json.loads((run / name / "manifest.json").read_text())["status"] == "complete"
    assert (run / "report.md").exists()
