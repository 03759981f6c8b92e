"""`pipeline.max_parallel`: independent stages run at the same time in child processes, a stage waits for
the stages it reads and for every stage listed before it to start; a failed stage stops new starts and
names its log; reruns skip as in a sequential run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from r1mega.config import ConfigError, load_config
from r1mega.pipeline.scheduler import Interrupted, _Scheduler, dependencies

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
    """The demo's order with max_parallel 2 (simulated with session-7 stage times): pretraining and R1-Zero run
    as two processes each, alone; then the R1 chain runs back to back, and beside it the student's pretraining,
    the side evaluations and the baseline student fill the second slot; nothing waits for a stage it does not read."""
    cfg = load_config(str(ROOT / "examples/tiny/demo.yaml"), [])
    secs = {"pretrain": 342, "r1_zero": 125, "pretrain_student": 175, "cold_start_data": 26, "cold_start_sft": 26,
            "reasoning_rl": 48, "rejection": 43, "sft_r1": 32, "reward_model": 35, "all_scenario_rl": 52,
            "distill": 33, "eval_r1": 33, "eval_student": 17, "eval_base": 29, "eval_r1_zero": 33,
            "rejection_base": 21, "distill_base": 32, "eval_student_base": 16}
    sched = _Scheduler(cfg, [(st, Path("/nonexistent") / st.name, "", "run") for st in cfg.pipeline.stages], [],
                       cfg.pipeline.max_parallel, log=lambda msg: None)
    start, end, now = {}, {}, 0
    while len(end) < len(secs):
        while (i := sched._startable()) is not None:
            name = sched.todo[i][0].name
            sched.started.add(name)
            sched.running[name] = ([None] * sched.todo[i][0].processes,)  # its processes fill as many slots
            start[name] = now
        name = min(sched.running, key=lambda n: start[n] + secs[n])
        now = end[name] = start[name] + secs[name]
        del sched.running[name]
        sched.done.add(name)
    assert cfg.pipeline.max_parallel == 2 and cfg.stage("pretrain").processes == cfg.stage("r1_zero").processes == 2
    assert start["r1_zero"] == end["pretrain"] and start["pretrain_student"] == end["r1_zero"]  # both slots each
    chain = ["pretrain", "r1_zero", "cold_start_data", "cold_start_sft", "reasoning_rl", "rejection", "sft_r1",
             "reward_model", "all_scenario_rl", "distill", "eval_student"]
    assert all(start[b] == end[a] for a, b in zip(chain, chain[1:]))  # the chain never waits for a slot
    for name in ("eval_base", "eval_r1_zero", "rejection_base"):
        assert start[name] >= end["pretrain_student"]  # side work after the student, in the second slot
    for name, deps in {n: dependencies(cfg, cfg.stage(n)) for n in secs}.items():
        assert all(start[name] >= end[d] for d in deps), name
    assert max(end.values()) == end["eval_student_base"] < sum(secs.values()) - 300  # 795 s of 1118


def test_after_names_an_earlier_stage():
    with pytest.raises(ConfigError, match=r"pipeline.stages\[r1_zero\].after.*'pretrain_studnt'.*did you mean"):
        load_config(str(ROOT / "examples/tiny/demo.yaml"), ["pipeline.stages.r1_zero.after=[pretrain_studnt]"])


def test_max_parallel_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="pipeline.max_parallel"):
        load_config(str(ROOT / "examples/tiny/demo.yaml"), ["pipeline.max_parallel=0"])


def test_a_stage_is_checked_for_its_own_processes():
    """Each stage's batch layout is checked for the world it runs on: the demo's pretraining (2 processes) for
    data parallelism 2, the other stages for 1; more processes than slots, or a global batch that 2 ranks
    cannot split, is an error before anything runs."""
    demo = str(ROOT / "examples/tiny/demo.yaml")
    load_config(demo, [], world_size=1)
    with pytest.raises(ConfigError, match=r"stage 'pretrain': optimizer.global_batch_size: 16 is not a multiple of "
                                          r"micro_batch_size\*DP = 16\*2 = 32"):
        load_config(demo, ["pipeline.stages.pretrain.overrides.optimizer.micro_batch_size=16"], world_size=1)
    with pytest.raises(ConfigError, match=r"stages\[pretrain\].processes: 3 processes need pipeline.max_parallel >= 3"):
        load_config(demo, ["pipeline.stages.pretrain.processes=3"], world_size=1)
    # one stage after another in one process: processes does not apply, the batch is checked for one rank
    one = load_config(demo, ["pipeline.max_parallel=1"], world_size=1)
    assert one.pipeline.stage_world(one.stage("pretrain"), 1) == 1
    with pytest.raises(ConfigError, match=r"stages\[r1_zero\].processes: got 0"):
        load_config(demo, ["pipeline.stages.r1_zero.processes=0"], world_size=1)


CONFIG = {
    "name": "sched",
    "model": {"preset": "tiny-dense", "num_layers": 1},
    "optimizer": {"lr": 1.0e-3, "warmup_steps": 1, "micro_batch_size": 2, "global_batch_size": 2},
    "data": {"seq_length": 32},
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


@pytest.mark.slow
def test_a_two_process_stage_trains_like_one_process(tmp_path):
    """``processes: 2``: the stage runs as two data-parallel ranks (one log each), takes both slots (the next
    stage waits), and trains the same model as one process does on the same global batch."""
    run = tmp_path / "run"
    stages = [{"name": "two", "kind": "pretrain", "steps": 4, "processes": 2},
              {"name": "one", "kind": "pretrain", "steps": 4}]
    cfg = {**CONFIG, "optimizer": {**CONFIG["optimizer"], "micro_batch_size": 2, "global_batch_size": 4},
           "pipeline": {"run_dir": str(run), "max_parallel": 2, "stages": stages}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = _run(path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "stage two (pretrain): started in processes" in res.stdout and "(ranks 0-1)" in res.stdout
    assert "rank 0 of 2" in (run / "two" / "stage.log").read_text()
    assert "rank 1 of 2" in (run / "two" / "stage.rank1.log").read_text()
    assert _times(run, "one")[0] >= _times(run, "two")[1]  # two held both slots
    two = json.loads((run / "two" / "train_summary.json").read_text())
    one = json.loads((run / "one" / "train_summary.json").read_text())
    assert two["steps"] == one["steps"] == 4
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4) and two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-4)


class _FakeProcess:
    def __init__(self, exitcode=None, ignores_sigterm=False):
        self.exitcode, self.pid, self.killed, self.terminated = exitcode, 1, False, False
        self.ignores_sigterm = ignores_sigterm

    def is_alive(self):
        return self.exitcode is None

    def terminate(self):
        self.terminated = True
        if self.exitcode is None and not self.ignores_sigterm:
            self.exitcode = -15

    def kill(self):
        self.killed, self.exitcode = True, -9

    def join(self, timeout=None):
        pass


def test_a_failed_rank_stops_its_stage(tmp_path, monkeypatch):
    """When one rank of a stage exits with an error, the others (which would wait for it in their next
    collective until the process group's timeout) are killed after a grace period, and the failure names
    the failed rank's log."""
    from r1mega.pipeline import scheduler

    cfg = load_config(str(ROOT / "examples/tiny/demo.yaml"), [])
    sched = _Scheduler(cfg, [(st, tmp_path / st.name, "", "run") for st in cfg.pipeline.stages], [], 2,
                       log=lambda msg: None)
    (tmp_path / "pretrain").mkdir()
    rank0, rank1 = _FakeProcess(), _FakeProcess(exitcode=1)
    sched.running["pretrain"] = ([rank0, rank1], scheduler._Tail(tmp_path / "pretrain" / "stage.log"),
                                 tmp_path / "pretrain", 0.0)
    sched._reap()
    assert not rank0.killed and "pretrain" in sched.running  # within the grace period
    monkeypatch.setattr(scheduler, "RANK_GRACE_S", 0)
    sched._reap()  # rank 0 killed
    sched._reap()  # both gone: the stage failed, at rank 1
    assert rank0.killed and "pretrain" not in sched.running
    assert sched.failed == [("pretrain", 1, tmp_path / "pretrain" / "stage.rank1.log")]
    assert sched._startable() is None  # nothing new starts after a failure


def test_sigterm_stops_the_running_stages_like_ctrl_c(tmp_path, monkeypatch):
    """While stages run, SIGTERM and SIGHUP are the scheduler's (in the main thread only): it passes SIGTERM on to
    every stage process, kills the ones still running after STOP_GRACE_S, and raises Interrupted (a
    KeyboardInterrupt, exit code 143); afterwards the previous handlers are back. A SIGHUP ignored by ``nohup``
    stays ignored."""
    from r1mega.pipeline import scheduler

    cfg = load_config(str(ROOT / "examples/tiny/demo.yaml"), [])
    d = tmp_path / "pretrain"
    d.mkdir()
    sched = _Scheduler(cfg, [(cfg.stage("pretrain"), d, "", "run")], [], 2, log=lambda msg: None)
    monkeypatch.setattr(scheduler, "STOP_GRACE_S", 0.3)
    rank0, rank1 = _FakeProcess(), _FakeProcess(ignores_sigterm=True)  # rank 1 does not react: killed
    sched.started.add("pretrain")
    sched.running["pretrain"] = ([rank0, rank1], scheduler._Tail(d / "stage.log"), d, 0.0)
    seen = []

    def reap():  # the signal arrives while the stage runs
        seen.append({sig: signal.getsignal(sig) for sig in scheduler.STOP_SIGNALS})
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)

    monkeypatch.setattr(sched, "_reap", reap)
    term, hup = signal.getsignal(signal.SIGTERM), signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with pytest.raises(Interrupted) as e:
            sched.run()
        assert signal.getsignal(signal.SIGTERM) == term and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, hup)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.exit_code == 128 + signal.SIGTERM
    assert seen[0] == {signal.SIGTERM: sched._on_signal, signal.SIGHUP: signal.SIG_IGN}
    assert rank0.terminated and not rank0.killed and rank1.terminated and rank1.killed
    assert sched.stopped == ["pretrain"] and not sched.running

    sched.signalled, sched.stopping, sched.hurry = None, False, False  # a second signal while stopping: no waiting
    monkeypatch.setattr(scheduler, "STOP_GRACE_S", 60)
    stuck = _FakeProcess(ignores_sigterm=True)
    sched.running["pretrain"] = ([stuck], scheduler._Tail(d / "stage.log"), d, 0.0)
    sched._on_signal(signal.SIGTERM, None)
    sched._on_signal(signal.SIGTERM, None)
    t0 = time.time()
    sched._stop_running(sched.signalled)
    assert stuck.terminated and stuck.killed and time.time() - t0 < 5

    caught = []  # not the main thread: Python cannot install a handler there, nothing changes
    t = threading.Thread(target=lambda: caught.append(sched._catch_signals()))
    t.start()
    t.join()
    assert caught == [{}]


# Preloaded by the fork server of the test below: the stages' work is faked, the rest (the child's `r1mega run
# --only`, its runner and manifests) is real. Rank 0 of `slow` stops at SIGTERM as a training stage does (at its
# next step, exit 0, manifest left 'running'); rank 1 ignores SIGTERM (say, stuck in a collective).
FAKE_STAGES = """
import os, signal, time
from pathlib import Path

import r1mega.cli, r1mega.config, r1mega.platform.distributed, r1mega.train.entry
from r1mega.pipeline import runner


def _run_kind(cfg, stage):
    if stage.name == "quick":
        return {"loss": 1.0}
    rank = int(os.environ.get("RANK", "0"))
    if rank:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop = None
    else:
        stop = r1mega.train.entry.StopFlag()
    d = Path(cfg.stage_dir(stage))
    (d / f"pid.{rank}.tmp").write_text(str(os.getpid()))
    os.replace(d / f"pid.{rank}.tmp", d / f"pid.{rank}")
    for step in range(600):
        time.sleep(0.1)
        if stop is not None and stop.should_stop():
            return {"stopped_at": step}
    return {"loss": 0.0}


runner._run_kind = _run_kind
r1mega.platform.distributed.destroy = lambda *a, **k: None  # no process groups here; Megatron is slow to import
"""

SCHEDULER = """
import sys
from r1mega.pipeline import scheduler

scheduler.FORKSERVER_PRELOAD = ("r1mega.pipeline.scheduler", "fake_stages")  # not torch, vLLM, Megatron
scheduler.STOP_GRACE_S = 1
from r1mega.cli import main
from r1mega.pipeline import runner
from r1mega.platform import distributed

runner._write_report = lambda cfg: None  # not the subject here, and slow to import (as is Megatron, for destroy)
distributed.destroy = lambda *a, **k: None

sys.exit(main(["run", sys.argv[1]]))
"""


def _gone(pid: int) -> bool:
    """No such process, or a zombie (exited, waiting to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _fork_server_process(pid: int) -> bool:
    try:
        return b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_r1mega_run_stops_its_stage_processes(tmp_path):
    """`kill` of `r1mega run` (SIGTERM) while a stage runs in two processes: the run exits with 143 after stopping
    both (the one that ignores SIGTERM is killed after the grace), the fork server ends with it, the stage
    completed before stays complete (a rerun skips it) and the interrupted one stays 'running' (a rerun resumes it)."""
    (tmp_path / "fake_stages.py").write_text(FAKE_STAGES)
    run = tmp_path / "run"
    stages = [{"name": "quick", "kind": "pretrain", "steps": 1},
              {"name": "slow", "kind": "pretrain", "steps": 1, "processes": 2, "after": ["quick"]}]
    cfg = {**CONFIG, "optimizer": {**CONFIG["optimizer"], "global_batch_size": 4},
           "pipeline": {"run_dir": str(run), "max_parallel": 2, "stages": stages}}
    path = tmp_path / "sigterm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out.txt"
    pids: list[int] = []
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", SCHEDULER, str(path)], stdout=f, stderr=subprocess.STDOUT,
                                env=env)
    try:
        deadline = time.time() + 120  # imports on a busy machine; the rest takes seconds
        while len(pids) < 2 and proc.poll() is None and time.time() < deadline:
            pids = [int((run / "slow" / f"pid.{r}").read_text()) for r in (0, 1)
                    if (run / "slow" / f"pid.{r}").exists()]
            time.sleep(0.1)
        assert len(pids) == 2, out.read_text()[-3000:]
        assert json.loads((run / "quick" / "manifest.json").read_text())["status"] == "complete"
        servers = [p for p in _children(proc.pid) if _fork_server_process(p)]
        assert servers, "no fork server"

        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        deadline = time.time() + 10
        while not all(_gone(p) for p in pids + servers) and time.time() < deadline:
            time.sleep(0.1)
        text = out.read_text()
        assert all(_gone(pid) for pid in pids), ("stage processes still running", code, text[-3000:])
        assert all(_gone(p) for p in servers), "fork server still running"  # it ends when its parent goes
        assert code == 128 + signal.SIGTERM and time.time() - t0 < 30, (code, time.time() - t0, text[-3000:])
        assert "stage slow: interrupted" in text and "r1mega: stopped by SIGTERM" in text, text[-3000:]

        assert json.loads((run / "quick" / "manifest.json").read_text())["status"] == "complete"
        assert json.loads((run / "slow" / "manifest.json").read_text())["status"] == "running"
        from r1mega.pipeline.runner import plan

        actions = {st.name: action for st, _, _, action in plan(load_config(str(path), [], world_size=1))}
        assert actions == {"quick": "skip", "slow": "resume"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:  # orphans (without the handler): ours, a fork server's children
            if _fork_server_process(pid) and not _gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
