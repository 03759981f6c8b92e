"""The NeMo-Run launcher with LocalExecutor: torchrun with 2 processes (gloo) on this machine.

The launcher (examples/launch_nemo_run.py) runs in .venv-launch; the ranks run in this test run's
environment (--venv), as `torchrun ... -m r1mega.cli ...`.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = "examples/tiny/pretrain.yaml"
# 2 data-parallel ranks: the tiny example's global batch must be a multiple of micro batch x 2
TWO_RANKS = ["optimizer.micro_batch_size=4", "optimizer.global_batch_size=16"]


def summary(out: str) -> dict:
    """{task: (state, log path)} from the launcher's `[r1mega-launch] NAME: STATE ... log PATH` lines."""
    found = {}
    for m in re.finditer(r"^\[r1mega-launch\] (\S+): ([A-Z_]+)(?:.* log (\S+))?$", out, re.M):
        found[m.group(1)] = (m.group(2), m.group(3))
    return found


def test_local_torchrun_two_processes(launcher, rank_venv):
    """A real r1mega command on 2 ranks: `r1mega config check` sees WORLD_SIZE=2 from torchrun."""
    r = launcher("--executor", "local", "--nproc-per-node", 2, "--venv", rank_venv, "--command", "check", TINY,
                 *TWO_RANKS)
    assert r.returncode == 0, r.stdout[-6000:]
    assert "task check: 1 node(s) x 2 rank(s): torchrun ... -m r1mega.cli config check " + TINY in r.stdout
    state, log = summary(r.stdout)["check"]
    assert state == "SUCCEEDED" and log, r.stdout[-3000:]
    text = Path(log).read_text()
    for rank in (0, 1):  # torchrun --tee prefixes each rank's lines
        assert f"[default{rank}]:config ok: {TINY}; world size 2; stages: pretrain (pretrain)" in text, text[-3000:]
    assert "--nproc-per-node 2" in text or "nproc_per_node           : 2" in text


def test_local_failure_is_reported(launcher, rank_venv):
    """A rank that fails makes the launcher exit 1 and show the end of the task's log."""
    r = launcher("--executor", "local", "--venv", rank_venv, "--command", "check", TINY, "model.nope=1")
    assert r.returncode == 1, r.stdout[-4000:]
    assert summary(r.stdout)["check"][0] == "FAILED"
    assert "r1mega: config error: model.nope: unknown key" in r.stdout


def test_bad_arguments_exit_2(launcher):
    r = launcher("--experiment", "--stage", "pretrain", TINY)
    assert r.returncode == 2 and "exclude each other" in r.stdout
    r = launcher("missing.yaml")
    assert r.returncode == 2 and "config not found" in r.stdout


@pytest.mark.slow
def test_local_tiny_training_two_processes(launcher, rank_venv, tmp_path):
    """The tiny pretraining job itself, 2 steps on 2 ranks, through NeMo-Run."""
    pytest.importorskip("r1mega.train.entry", reason="the trainer (r1mega.train.entry) is not written yet")
    run_dir = tmp_path / "run"
    r = launcher("--executor", "local", "--nproc-per-node", 2, "--venv", rank_venv, "--stage", "pretrain", TINY,
                 *TWO_RANKS, f"pipeline.run_dir={run_dir}", "pipeline.stages.pretrain.steps=2",
                 "pipeline.stages.pretrain.save_interval=2", timeout=600)
    assert r.returncode == 0, r.stdout[-6000:]
    assert summary(r.stdout)["pretrain"][0] == "SUCCEEDED"
    latest = sorted(run_dir.rglob("latest"))
    assert latest, sorted(str(p) for p in run_dir.rglob("*"))
    assert re.search(r"2\s*$", latest[0].read_text())
