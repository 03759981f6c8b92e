"""No process outlives `r1mega run`, however it dies (kill -9 included): stage processes, their reward workers (even
in the middle of a call), torchrun ranks. Each test starts real processes, SIGKILLs the top one and looks for what
is left in /proc, by an environment marker every descendant inherits."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

MARK = "R1MEGA_LIFELINE_TEST"

CONFIG = {
    "model": {"preset": "tiny-dense", "num_layers": 1},
    "optimizer": {"lr": 1.0e-3, "warmup_steps": 1, "micro_batch_size": 2, "global_batch_size": 4},
    "data": {"seq_length": 32},
    "logging": {"tensorboard": False},
    "checkpoint": {"save_interval": 0},
    "cpu_threads": 1,
}

# Preloaded by the scheduler's fork server: each rank of the stage starts a real reward pool, keeps one worker busy
# in a long call, and writes a heartbeat into the stage directory every 0.05 s (as a training stage writes its
# checkpoints and metrics). The scheduler, the stage processes and `r1mega run --only` are real.
FAKE_STAGES = """
import os, threading, time
from pathlib import Path

import r1mega.cli, r1mega.config, r1mega.platform.distributed
from r1mega.pipeline import runner
from r1mega.rewards.pool import Task, WorkerPool


def _run_kind(cfg, stage):
    rank = int(os.environ.get("RANK", "0"))
    d = Path(cfg.stage_dir(stage))
    pool = WorkerPool(num_workers=1, preload=())
    pool.start()
    threading.Thread(target=pool.run, args=([Task("sleep", (300,), 600)],), daemon=True).start()
    beat = d / f"heartbeat.{rank}"
    for step in range(6000):
        beat.write_text(str(step))
        if step == 20:
            (d / f"ready.{rank}").write_text(str(os.getpid()))
        time.sleep(0.05)
    return {"loss": 0.0}


runner._run_kind = _run_kind
r1mega.platform.distributed.destroy = lambda *a, **k: None  # no process groups here; Megatron is slow to import
"""

SCHEDULER = """
import sys
from r1mega.pipeline import scheduler

scheduler.FORKSERVER_PRELOAD = ("r1mega.pipeline.scheduler", "fake_stages")  # not torch, vLLM, Megatron
from r1mega.cli import main
from r1mega.pipeline import runner
from r1mega.platform import distributed

runner._write_report = lambda cfg: None
distributed.destroy = lambda *a, **k: None

sys.exit(main(["run", sys.argv[1]]))
"""


def _marked(tag: str) -> dict[int, str]:
    """pid -> command line of every live process (zombies have no environment) whose environment carries ``tag``."""
    needle = f"{MARK}={tag}".encode()
    out = {}
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in env.read_bytes().split(b"\0"):
                out[int(env.parent.name)] = (env.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except (OSError, ValueError):
            pass
    out.pop(os.getpid(), None)
    return out


def _wait_gone(tag: str, seconds: float) -> dict[int, str]:
    deadline = time.time() + seconds
    left = _marked(tag)
    while left and time.time() < deadline:
        time.sleep(0.1)
        left = _marked(tag)
    return left


def _kill_all(tag: str) -> None:
    for pid in _marked(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _env(tmp_path: Path, tag: str) -> dict:
    return {**os.environ, MARK: tag, "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}


def _snapshot(d: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in d.iterdir()}


def test_kill_9_of_r1mega_run_kills_its_stage_processes_and_reward_workers(tmp_path):
    """kill -9 of `r1mega run` while a 2-process stage runs (each rank with a reward worker busy in a 300 s call):
    within a few seconds no process of the run is left and the stage directory stops changing. Before the
    lifelines, both ranks kept writing until killed by hand (issue 20)."""
    (tmp_path / "fake_stages.py").write_text(FAKE_STAGES)
    run = tmp_path / "run"
    cfg = {**CONFIG, "pipeline": {"run_dir": str(run), "max_parallel": 2,
                                  "stages": [{"name": "two", "kind": "pretrain", "steps": 1, "processes": 2}]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    tag = uuid.uuid4().hex
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", SCHEDULER, str(path)], stdout=f, stderr=subprocess.STDOUT,
                                env=_env(tmp_path, tag))
    stage = run / "two"
    try:
        deadline = time.time() + 120  # imports on a busy machine; the rest takes seconds
        while not all((stage / f"ready.{r}").exists() for r in (0, 1)) and time.time() < deadline:
            assert proc.poll() is None, out.read_text()[-3000:]
            time.sleep(0.1)
        assert all((stage / f"ready.{r}").exists() for r in (0, 1)), out.read_text()[-3000:]
        before = _marked(tag)
        names = " | ".join(before.values())
        # the scheduler, its fork server, 2 ranks, and per rank a reward fork server and its worker
        assert len(before) >= 6 and names.count("multiprocessing.forkserver") >= 2, before
        assert json.loads((stage / "manifest.json").read_text())["status"] == "running"

        proc.kill()
        proc.wait()
        left = _wait_gone(tag, 10)
        assert not left, f"left running after kill -9 of r1mega run: {left}"
        snap = _snapshot(stage)
        time.sleep(0.5)
        assert _snapshot(stage) == snap  # nothing writes into the run any more
        assert "parent process gone" in (stage / "stage.log").read_text()
        assert json.loads((stage / "manifest.json").read_text())["status"] == "running"  # a rerun resumes it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(tag)


POOL_OWNER = """
import sys, threading, time
from r1mega.rewards.pool import Task, WorkerPool

pool = WorkerPool(num_workers=2, preload=())
pool.start()
threading.Thread(target=pool.run, args=([Task("sleep", (300,), 600), Task("sleep", (300,), 600)],),
                 daemon=True).start()
time.sleep(1.0)
print(" ".join(str(w.proc.pid) for w in pool._workers), flush=True)
time.sleep(600)
"""


def test_reward_workers_die_with_the_pool_owner_even_mid_call(tmp_path):
    """kill -9 of the process that owns a reward pool while both workers are in a 300 s call: the workers (and the
    pool's fork server) are gone within seconds. Before, a busy worker finished its call first: it only noticed
    its closed pipe when it read the next task."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", POOL_OWNER], stdout=subprocess.PIPE, text=True,
                            env=_env(tmp_path, tag))
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2, workers
        assert set(workers) <= set(_marked(tag))
        proc.kill()
        proc.wait()
        left = _wait_gone(tag, 5)
        assert not left, f"left running after kill -9 of the pool's owner: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(tag)


RANK = """
import os, sys, time
from r1mega.cli import die_with_launcher

die_with_launcher()
path = os.path.join(sys.argv[1], f"rank.{os.environ['RANK']}")
open(path + ".tmp", "w").write(str(os.getpid()))
os.replace(path + ".tmp", path)
time.sleep(300)
"""


def test_torchrun_ranks_die_with_torchrun(tmp_path):
    """kill -9 of `torchrun --nproc-per-node 2` running r1mega's entry point: both ranks are gone within seconds
    (PR_SET_PDEATHSIG, armed by the CLI under torchrun). Without it they sleep on as orphans."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("no torchrun next to the interpreter")
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([str(torchrun), "--nproc-per-node", "2", str(script), str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(tmp_path, tag))
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"rank.{r}").exists() for r in (0, 1)) and time.time() < deadline:
            assert proc.poll() is None
            time.sleep(0.1)
        ranks = [int((tmp_path / f"rank.{r}").read_text()) for r in (0, 1)]
        assert set(ranks) <= set(_marked(tag)), (ranks, _marked(tag))
        proc.kill()
        proc.wait()
        left = _wait_gone(tag, 5)
        assert not left, f"left running after kill -9 of torchrun: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(tag)


@pytest.mark.slow
@pytest.mark.parametrize("max_parallel, processes", [(2, 2), (1, 1)])
def test_kill_9_during_real_pretraining(tmp_path, max_parallel, processes):
    """The measured case of issue 20, end to end: a real pretraining stage (Megatron; 2 processes with gloo under
    the scheduler, or in `r1mega run`'s own process) killed with SIGKILL once it trains and has saved a checkpoint;
    nothing of the run is left after 10 s (also not the server process Megatron's checkpoint writer starts) and
    nothing writes into the run any more."""
    run = tmp_path / "run"
    cfg = {**CONFIG, "checkpoint": {"save_interval": 5},
           "pipeline": {"run_dir": str(run), "max_parallel": max_parallel,
                        "stages": [{"name": "pretrain", "kind": "pretrain", "steps": 100000, "processes": processes}]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    tag = uuid.uuid4().hex
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "r1mega.cli", "run", str(path)], stdout=f,
                                stderr=subprocess.STDOUT, env=_env(tmp_path, tag))
    stage = run / "pretrain"
    try:
        deadline = time.time() + 300  # the fork server imports torch, Megatron-Core and vLLM first
        while time.time() < deadline:
            assert proc.poll() is None, out.read_text()[-3000:]
            log = (stage / "stage.log") if max_parallel > 1 else out
            if log.exists() and "step 7:" in log.read_text() and list(stage.rglob("r1mega_meta.json")):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the stage did not train: " + out.read_text()[-3000:])
        running = _marked(tag)
        assert any("spawn_main" in c for c in running.values()), running  # the writer's Manager server
        assert len(running) >= (5 if max_parallel > 1 else 2), running  # + the fork server and 2 ranks

        proc.kill()
        proc.wait()
        left = _wait_gone(tag, 10)
        assert not left, f"left running after kill -9 of r1mega run: {left}"
        files = {p: p.stat().st_mtime_ns for p in stage.rglob("*") if p.is_file()}
        time.sleep(2.0)  # a rank still training would log a step and save a checkpoint every few steps
        assert {p: p.stat().st_mtime_ns for p in stage.rglob("*") if p.is_file()} == files
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(tag)


def test_a_reward_worker_kills_its_rlimit_sandboxes_when_its_owner_dies(tmp_path):
    """The rlimit fallback's sandbox runs in its own session (bubblewrap's --die-with-parent does not apply): when
    the worker's lifeline fires, :func:`r1mega.rewards.sandbox.kill_running` ends it (here called as the worker's
    lifeline calls it), and a stopped sandbox leaves the list."""
    from r1mega.rewards import sandbox as sb

    py = sb.resolve_python("auto")
    procs = [sb.start_python(["-c", "import time; time.sleep(300)"], python=py, backend="rlimit", uid=65534)
             for _ in range(2)]
    try:
        assert all(p.poll() is None for p in procs) and set(procs) <= sb._running
        sb.stop_python(procs[1])
        assert procs[1] not in sb._running
        sb.kill_running()
        procs[0].wait(timeout=5)
        assert procs[0].returncode == -signal.SIGKILL
    finally:
        for p in procs:
            sb.stop_python(p)
    assert not sb._running
