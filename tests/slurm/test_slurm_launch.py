"""The Slurm launch scripts: dry runs (no cluster) and real jobs on the one-node test cluster.

The real jobs go through slurm/train.sbatch exactly as a user submits it (its #SBATCH header,
srun -> one torchrun per node -> 2 gloo processes), with `--gpus-per-node=0` and GPUS_PER_NODE=2
because the test node has no GPU. The trainer is tests/slurm/fake_train.py (same command shape and
checkpoint contract as `r1mega train`); the `r1mega` variant runs the real trainer and is skipped
until r1mega.train.entry exists.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_SBATCH = REPO / "slurm" / "train.sbatch"
SUBMIT_PIPELINE = REPO / "slurm" / "submit_pipeline.sh"
FAKE_TRAIN = REPO / "tests" / "slurm" / "fake_train.py"
PY = sys.executable
JOB_TIMEOUT_S = 90
RESUMED = re.compile(r"\bresum(?:ed|ing)\b", re.I)  # the trainer's "resumed from step K" line


# ---- trainers ------------------------------------------------------------------------------------
@dataclass
class Trainer:
    """What the sbatch script runs: R1MEGA_CMD, the config and the overrides for a run dir + steps."""
    name: str
    cmd: str
    config: Callable[[Path], str]
    overrides: Callable[[Path, int], List[str]]
    stage: Optional[str] = None
    timeout_s: float = JOB_TIMEOUT_S
    env: dict = field(default_factory=dict)


def _fake() -> Trainer:
    return Trainer(
        name="fake",
        cmd=f"{PY} {FAKE_TRAIN}",
        config=lambda tmp: "none",
        overrides=lambda run_dir, steps: [f"run_dir={run_dir}", f"steps={steps}", "save_interval=2"],
    )


def _real() -> Trainer:
    pytest.importorskip("r1mega.train.entry", reason="the real trainer (r1mega.train.entry) is not written yet")
    # Tiny CPU config, stage and command of the real trainer; override from the environment if they move.
    cmd = os.environ.get("R1MEGA_SLURM_TEST_CMD", f"{PY} -m r1mega.cli")
    config = os.environ.get("R1MEGA_SLURM_TEST_CONFIG", str(REPO / "examples" / "tiny" / "pretrain.yaml"))
    stage = os.environ.get("R1MEGA_SLURM_TEST_STAGE", "pretrain")
    if not Path(config).exists():
        pytest.skip(f"tiny config {config} not found (set R1MEGA_SLURM_TEST_CONFIG)")
    return Trainer(
        name="r1mega",
        cmd=cmd,
        config=lambda tmp: config,
        overrides=lambda run_dir, steps: [f"pipeline.run_dir={run_dir}", f"pipeline.stages.{stage}.steps={steps}",
                                          f"pipeline.stages.{stage}.save_interval={steps}",
                                          # 2 ranks (DP 2): a small batch that splits over them
                                          "optimizer.micro_batch_size=2", "optimizer.global_batch_size=4",
                                          "data.seq_length=64", "model.num_layers=2", "logging.tensorboard=false"],
        stage=stage,
        timeout_s=240,
    )


TRAINERS = {"fake": _fake, "r1mega": _real}


@pytest.fixture(params=["fake", pytest.param("r1mega", marks=pytest.mark.slow)])
def trainer(request) -> Trainer:
    return TRAINERS[request.param]()


# Environment the scripts read: never inherited from the test runner (which may itself run in a job).
SCRIPT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "MASTER_", "NCCL_", "R1MEGA_", "CONTAINER_", "TORCH_NCCL_")
SCRIPT_ENV = {"GPUS_PER_NODE", "CONFIG", "OVERRIDES", "DRY_RUN", "TORCHRUN", "MAX_RESTARTS", "STOP_GRACE",
              "CUDA_DEVICE_MAX_CONNECTIONS", "GLOO_SOCKET_IFNAME"}


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(SCRIPT_ENV_PREFIXES) and k not in SCRIPT_ENV}


def job_env(trainer: Trainer, **extra) -> dict:
    env = clean_env()
    env.update(
        PATH=f"{Path(PY).parent}{os.pathsep}{env.get('PATH', '')}",  # torchrun of this venv
        R1MEGA_CMD=trainer.cmd,
        GPUS_PER_NODE="2",  # CPU node: 2 gloo processes
        OMP_NUM_THREADS="1",
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        **trainer.env,
    )
    env.update(extra)
    return env


CPU_SBATCH = ["--gpus-per-node=0", "--time=10"]  # the test node has no GPU; bound any runaway job


def submit(cluster, tmp: Path, trainer: Trainer, run_dir: Path, steps: int, sbatch_args=(), **env) -> int:
    (tmp / "logs").mkdir(exist_ok=True)
    args = [*CPU_SBATCH, f"--chdir={tmp}", *sbatch_args, str(TRAIN_SBATCH), trainer.config(tmp)]
    if trainer.stage:
        args += ["--stage", trainer.stage]
    args += trainer.overrides(run_dir, steps)
    return cluster.sbatch(args, env=job_env(trainer, **env))


def job_log(info: dict) -> str:
    path = Path(info["StdOut"])
    return path.read_text(errors="replace") if path.exists() else f"<no log at {path}>"


def finish(cluster, job: int, timeout: float) -> tuple[dict, str]:
    info = cluster.wait_job(job, timeout=timeout)
    log = job_log(info)
    assert info["JobState"] == "COMPLETED", f"job {job} ended {info['JobState']} ({info.get('Reason')}):\n{log}"
    return info, log


def latest_step(run_dir: Path) -> int:
    found = sorted(run_dir.rglob("latest"))
    assert found, f"no `latest` checkpoint pointer under {run_dir}: {sorted(p.name for p in run_dir.rglob('*'))}"
    m = re.search(r"(\d+)\s*$", found[0].read_text())
    assert m, f"{found[0]} does not name a step: {found[0].read_text()!r}"
    return int(m.group(1))


# ---- dry runs (no cluster) -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_scontrol(tmp_path_factory) -> str:
    """A PATH whose `scontrol` fails, as on a laptop: the script's own node-list parser must do."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 'scontrol: fatal: no config' >&2\nexit 1\n")
    (bin_dir / "scontrol").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def dry_run(args=(), path=None, **env) -> str:
    base = clean_env()
    if path:
        base["PATH"] = path
    base.update(env)
    r = subprocess.run(["bash", str(TRAIN_SBATCH), "--dry-run", *args], env=base, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    assert r.returncode == 0, r.stdout
    return r.stdout


def command_of(out: str) -> List[str]:
    line = next(l for l in out.splitlines() if l.startswith("[r1mega] command: "))
    return shlex.split(line[len("[r1mega] command: "):])


def option(argv: List[str], name: str) -> str:
    """Value of `--name value` or `--name=value` in argv (the first one)."""
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a[len(name) + 1:]
    raise AssertionError(f"{name} not in {argv}")


def test_dry_run_32_nodes(no_scontrol):
    out = dry_run(["configs/r1.yaml", "--stage", "grpo", "grpo.group_size=16"], no_scontrol, SLURM_NNODES="32",
                  SLURM_JOB_NODELIST="gpu[017-048]", SLURM_JOB_ID="4242", SLURM_GPUS_ON_NODE="8",
                  SLURM_CPUS_ON_NODE="112", NCCL_IB_HCA="mlx5_0,mlx5_1", NCCL_SOCKET_IFNAME="ib0")
    argv = command_of(out)
    t = argv.index("torchrun")
    srun, torchrun = argv[:t], argv[t:]
    assert srun[0] == "srun"
    assert option(srun, "--nodes") == "32" and option(srun, "--ntasks") == "32"
    assert option(srun, "--ntasks-per-node") == "1"  # one torchrun per node
    assert option(srun, "--cpus-per-task") == "112"
    assert "--kill-on-bad-exit=1" in srun
    assert option(torchrun, "--nnodes") == "32"
    assert option(torchrun, "--nproc-per-node") == "8"
    assert option(torchrun, "--rdzv-backend") == "c10d"
    assert option(torchrun, "--rdzv-endpoint") == f"gpu017:{20000 + 4242}"  # first host of the node list
    assert option(torchrun, "--rdzv-id") == "r1mega-4242"
    assert torchrun[-6:] == ["r1mega", "train", "configs/r1.yaml", "--stage", "grpo", "grpo.group_size=16"]
    assert "--no-python" in torchrun
    assert "32 node(s) x 8 process(es) = 256 ranks" in out
    for knob in ("CUDA_DEVICE_MAX_CONNECTIONS=1", "TORCH_NCCL_ASYNC_ERROR_HANDLING=1", "NCCL_DEBUG=WARN",
                 "NCCL_IB_HCA=mlx5_0,mlx5_1", "NCCL_SOCKET_IFNAME=ib0"):
        assert knob in out
    assert "dry run: nothing launched" in out


@pytest.mark.parametrize("nodelist, first", [
    ("gpu[001-032]", "gpu001"),
    ("node7", "node7"),
    ("a1,b[1-2]", "a1"),
    ("gpu[003,007-009],cpu1", "gpu003"),
    ("rack[2-3]-n[01-04]", "rack2-n01"),
    ("dgx-[12-13]-ib", "dgx-12-ib"),
])
def test_dry_run_first_host_without_scontrol(no_scontrol, nodelist, first):
    out = dry_run(["c.yaml"], no_scontrol, SLURM_NNODES="2", SLURM_JOB_NODELIST=nodelist, SLURM_JOB_ID="7")
    assert option(command_of(out), "--rdzv-endpoint") == f"{first}:20007"


def test_dry_run_env_settings():
    """CONFIG/OVERRIDES from the environment, GPUS_PER_NODE for CPU nodes, typed GPU counts,
    pyxis container flags, custom launcher and trainer commands."""
    out = dry_run([], CONFIG="cfg.yaml", OVERRIDES="a=1 b=2", GPUS_PER_NODE="2", MASTER_PORT="29999",
                  SLURM_JOB_NODELIST="n1", R1MEGA_CMD="python -m r1mega.cli", TORCHRUN="python -m torch.distributed.run",
                  CONTAINER_IMAGE="nvcr.io#nvidia/pytorch:25.09-py3", CONTAINER_MOUNTS="/data:/data")
    argv = command_of(out)
    assert option(argv, "--nproc-per-node") == "2"
    assert option(argv, "--rdzv-endpoint") == "n1:29999"
    assert option(argv, "--container-image") == "nvcr.io#nvidia/pytorch:25.09-py3"
    assert option(argv, "--container-mounts") == "/data:/data"
    launcher = argv.index("-m")
    assert argv[launcher - 1:launcher + 2] == ["python", "-m", "torch.distributed.run"]
    assert argv[-7:] == ["python", "-m", "r1mega.cli", "train", "cfg.yaml", "a=1", "b=2"]
    typed = dry_run(["c.yaml"], SLURM_GPUS_PER_NODE="h100:4", SLURM_JOB_NODELIST="n1")
    assert option(command_of(typed), "--nproc-per-node") == "4"


def test_dry_run_needs_a_config():
    r = subprocess.run(["bash", str(TRAIN_SBATCH), "--dry-run"], env={"PATH": os.environ["PATH"]},
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 2 and "usage:" in r.stdout


def test_sbatch_header():
    """The directives a requeue-friendly multi-node job needs (sbatch reads them, bash ignores them)."""
    header = [l.split(None, 1)[1] for l in TRAIN_SBATCH.read_text().splitlines() if l.startswith("#SBATCH ")]
    for want in ("--ntasks-per-node=1", "--requeue", "--signal=B:USR1@120", "--open-mode=append",
                 "--output=logs/%x-%j.out", "--error=logs/%x-%j.out", "--gpus-per-node=8", "--exclusive"):
        assert want in header, want


@pytest.mark.parametrize("script", [TRAIN_SBATCH, SUBMIT_PIPELINE], ids=lambda p: p.name)
def test_scripts_lint(script):
    r = subprocess.run(["bash", "-n", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck); bash -n passed")
    r = subprocess.run(["shellcheck", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout


def test_submit_pipeline_dry_run(tmp_path):
    r = subprocess.run(["bash", str(SUBMIT_PIPELINE), "--dry-run", "--sbatch-args", "--time=1:00:00 -p batch",
                        "cfg.yaml", "sft:4", "grpo:16", "--", "seed=3"], cwd=tmp_path, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["sft $JOB_sft", "grpo $JOB_grpo"]
    cmds = [shlex.split(l) for l in r.stderr.strip().splitlines()]
    assert option(cmds[0], "--nodes") == "4" and not any(a.startswith("--dependency") for a in cmds[0])
    assert option(cmds[1], "--nodes") == "16" and option(cmds[1], "--dependency") == "afterok:$JOB_sft"
    assert "--kill-on-invalid-dep=yes" in cmds[1] and option(cmds[1], "-p") == "batch"
    assert cmds[1][-5:] == [str(TRAIN_SBATCH), "cfg.yaml", "--stage", "grpo", "seed=3"]
    assert (tmp_path / "logs").is_dir()


# ---- real jobs on the one-node cluster -----------------------------------------------------------
@pytest.mark.slurm
def test_train_then_resume(slurm_cluster, trainer, tmp_path):
    """Job 1 trains 2 steps and checkpoints; job 2 (same command, more steps) resumes from `latest`."""
    run_dir = tmp_path / "run"
    job1 = submit(slurm_cluster, tmp_path, trainer, run_dir, steps=2)
    info1, log1 = finish(slurm_cluster, job1, trainer.timeout_s)
    assert Path(info1["StdOut"]) == tmp_path / "logs" / f"r1mega-train-{job1}.out"  # the script's --output
    assert "1 node(s) x 2 process(es) = 2 ranks" in log1
    assert latest_step(run_dir) == 2, log1
    assert not RESUMED.search(log1), log1

    job2 = submit(slurm_cluster, tmp_path, trainer, run_dir, steps=4)
    _, log2 = finish(slurm_cluster, job2, trainer.timeout_s)
    m = RESUMED.search(log2)
    assert m and re.match(r"\D*2\b", log2[m.end():]), log2  # "resumed from step 2"
    assert latest_step(run_dir) == 4, log2
    if trainer.name == "fake":
        assert "world_size=2 all_reduce ok" in log2
        steps = [int(s) for s in re.findall(r"\] step (\d+) ", log2)]
        assert steps == [3, 4], log2  # continued, not restarted
        assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_2", "step_4"]
        assert sorted(p.name for p in (run_dir / "step_4").iterdir()) == ["shard_0.json", "shard_1.json"]


@pytest.mark.slurm
def test_usr1_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    """USR1 to the batch shell (what --signal=B:USR1@120 sends before the time limit): the trainer
    checkpoints and exits, the script requeues the job, and the requeued run resumes."""
    trainer = _fake()
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, tmp_path, trainer, run_dir, steps=40, OVERRIDES="step_time=0.1")
    wait_for(lambda: (run_dir / "latest").exists(), JOB_TIMEOUT_S, f"first checkpoint of job {job}")
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", str(job))
    info = wait_for(lambda: requeued(slurm_cluster, job), 60, f"requeue of job {job}")
    log = job_log(info)
    m = re.search(r"stop requested: saved step (\d+)", log)
    assert m and "USR1" in log and "requeueing job" in log, log
    saved = int(m.group(1))
    assert 0 < saved < 40 and latest_step(run_dir) == saved
    # Slurm holds a requeued job for ~120 s (BeginTime); release it early, but only once slurmd is
    # done with the first run and a new second has begun: slurmd refuses ("Job credential revoked")
    # a credential of this job id that is not newer, in whole seconds, than the requeue's kill.
    wait_for(lambda: slurm_cluster.run("sinfo", "-h", "-N", "-o", "%T").stdout.split() == ["idle"], 30, "idle node")
    time.sleep(2)
    slurm_cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
    info, log = finish(slurm_cluster, job, JOB_TIMEOUT_S)
    assert info["Restarts"] == "1"
    assert f"job {job} restart 1:" in log
    assert f"resumed from step {saved}" in log, log
    second = log.split(f"job {job} restart 1:")[1]
    assert [int(s) for s in re.findall(r"\] step (\d+) ", second)] == list(range(saved + 1, 41))
    assert latest_step(run_dir) == 40
    assert not Path(f"{tmp_path}/logs/r1mega-stop.{job}").exists()


@pytest.mark.slurm
def test_usr1_sigterm_fallback_for_a_trainer_ignoring_the_stop_file(slurm_cluster, tmp_path):
    """A trainer that never looks at the stop file is sent SIGTERM STOP_GRACE s after USR1 and the
    job is requeued all the same (it resumes from its last periodic checkpoint)."""
    trainer = _fake()
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, tmp_path, trainer, run_dir, steps=400, OVERRIDES="step_time=0.1 ignore_stop=1",
                 STOP_GRACE="2")
    wait_for(lambda: (run_dir / "latest").exists(), JOB_TIMEOUT_S, f"first checkpoint of job {job}")
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", str(job))
    info = wait_for(lambda: requeued(slurm_cluster, job), 60, f"requeue of job {job}")
    log = job_log(info)
    slurm_cluster.run("scancel", str(job))
    assert "still running 2 s after the stop request: SIGTERM" in log and "requeueing job" in log, log
    assert "stop requested" not in log and "done:" not in log, log
    assert latest_step(run_dir) >= 2


@pytest.mark.slurm
def test_pipeline_chains_stages_with_afterok(slurm_cluster, tmp_path):
    trainer = _fake()
    run_dir = tmp_path / "run"
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"run_dir: {run_dir}\nsteps: 2\nsave_interval: 1\n")
    sbatch_args = " ".join(CPU_SBATCH + [f"--chdir={tmp_path}"])
    r = subprocess.run(["bash", str(SUBMIT_PIPELINE), "--sbatch-args", sbatch_args, str(config), "first", "second:1"],
                       cwd=tmp_path, env=slurm_cluster.env(job_env(trainer)), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    jobs = dict(line.split() for line in r.stdout.strip().splitlines())
    first, second = int(jobs["first"]), int(jobs["second"])
    pending = slurm_cluster.job(second)
    assert pending["Dependency"].startswith(f"afterok:{first}"), pending
    info1, log1 = finish(slurm_cluster, first, JOB_TIMEOUT_S)
    info2, log2 = finish(slurm_cluster, second, JOB_TIMEOUT_S)
    assert info1["JobName"] == "r1mega-first" and info2["JobName"] == "r1mega-second"
    assert info2["StartTime"] >= info1["EndTime"]  # ISO timestamps: string order is time order
    assert "stage=first" in log1 and "stage=second" in log2
    assert latest_step(run_dir / "first") == 2 and latest_step(run_dir / "second") == 2


@pytest.mark.slurm
def test_pipeline_cancels_stages_after_a_failure(slurm_cluster, tmp_path):
    (tmp_path / "logs").mkdir()
    failed = slurm_cluster.sbatch(["--chdir", str(tmp_path), "-o", "logs/fail.out", "--wrap", "exit 3"])
    r = subprocess.run(["bash", str(SUBMIT_PIPELINE), "--after", str(failed), "--sbatch-args", " ".join(CPU_SBATCH),
                        "cfg.yaml", "a", "b"], cwd=tmp_path, env=slurm_cluster.env(clean_env()), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    jobs = [int(line.split()[1]) for line in r.stdout.strip().splitlines()]
    assert slurm_cluster.wait_job(failed, timeout=30)["JobState"] == "FAILED"
    for job in jobs:
        assert slurm_cluster.wait_job(job, timeout=30)["JobState"] == "CANCELLED"


# ---- helpers -------------------------------------------------------------------------------------
def requeued(cluster, job: int):
    info = cluster.job(job)
    return info if info.get("Restarts") == "1" and info.get("JobState") == "PENDING" else None


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
