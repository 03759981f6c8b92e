"""The NeMo-Run launcher with SlurmExecutor: rendered sbatch scripts (dry runs, no cluster) and a
real submission of a chained two-stage Experiment to a one-node Slurm on this machine.
"""
from __future__ import annotations

import fcntl
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pytest

from r1mega.launch.slurm_cluster import LocalSlurmCluster, SlurmUnavailable, check_usable, ensure_installed

REPO = Path(__file__).resolve().parents[2]
DSV3 = "examples/dsv3-671b-32x8h100/r1.yaml"
STAGES = ["cold_start_sft", "reasoning_rl", "rejection_sampling", "sft", "all_scenario_rl", "eval"]
IMAGE = "nvcr.io#nvidia/pytorch:25.09-py3"


def sbatch_scripts(out: str) -> dict:
    """{task: script text} from the launcher's dry-run lines `NAME: DRYRUN sbatch script PATH`."""
    found = {m.group(1): Path(m.group(2)).read_text()
             for m in re.finditer(r"^\[r1mega-launch\] (\S+): DRYRUN sbatch script (\S+)$", out, re.M)}
    assert found, out[-4000:]
    return found


def directives(script: str) -> list:
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def srun_line(script: str) -> list:
    lines = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(lines) == 1, script
    return shlex.split(lines[0])


def option(argv: list, name: str) -> str:
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a[len(name) + 1:]
    raise AssertionError(f"{name} not in {argv}")


# ---- dry runs (no cluster) -----------------------------------------------------------------------
def test_dryrun_32_nodes_container_experiment(launcher):
    """The DeepSeek-V3 pipeline as a 6-task experiment on 32 nodes x 8 GPUs in a container."""
    r = launcher("--executor", "slurm", "--nodes", 32, "--gpus-per-node", 8, "-A", "r1acct", "-p", "batch",
                 "--time", "04:00:00", "--container-image", IMAGE, "--container-mounts", "/lustre:/lustre",
                 "--stage-nodes", "eval=4", "--experiment", "--dryrun", DSV3, "grpo.group_size=16")
    assert r.returncode == 0, r.stdout[-6000:]
    # one task per stage, in pipeline order, each after the previous one
    tasks = re.findall(r"^\[r1mega-launch\] task (\S+)(?: \(after (\S+)\))?:", r.stdout, re.M)
    assert tasks == [(s, STAGES[i - 1] if i else "") for i, s in enumerate(STAGES)], tasks
    scripts = sbatch_scripts(r.stdout)
    assert list(scripts) == STAGES
    for stage, script in scripts.items():
        d = directives(script)
        nodes = 4 if stage == "eval" else 32
        for want in (f"--nodes={nodes}", "--ntasks-per-node=1", "--gpus-per-node=8", "--account=r1acct",
                     "--partition=batch", "--time=04:00:00", "--exclusive", "--mem=0", f"--job-name=r1mega-{stage}",
                     "--kill-on-invalid-dep=yes"):
            assert want in d, (stage, want, d)
        argv = srun_line(script)
        assert "--kill-on-bad-exit=1" in argv
        assert option(argv, "--container-image") == IMAGE
        mounts = option(argv, "--container-mounts").split(",")
        assert "/lustre:/lustre" in mounts and f"{REPO}:{REPO}" in mounts  # the code dir links into the checkout
        assert option(argv, "--container-workdir") == "/nemo_run/code"
        t = argv.index("torchrun")
        torchrun = argv[t:]
        assert option(torchrun, "--nnodes") == str(nodes) and option(torchrun, "--nproc-per-node") == "8"
        assert "--no-python" not in torchrun  # `-m r1mega.cli`: the Python torchrun runs with
        assert option(torchrun, "--rdzv-backend") == "c10d"
        assert option(torchrun, "--rdzv-endpoint") == "$head_node_ip:29500"
        assert option(torchrun, "--node-rank") == "$SLURM_NODEID"
        assert torchrun[-7:] == ["-m", "r1mega.cli", "run", DSV3, "--only", stage, "grpo.group_size=16"]
        for knob in ("CUDA_DEVICE_MAX_CONNECTIONS=1", "TORCH_NCCL_ASYNC_ERROR_HANDLING=1", "NCCL_DEBUG=WARN"):
            assert f"export {knob}\n" in script, knob


def test_dryrun_one_stage_without_container(launcher, tmp_path):
    """Bare-metal nodes: the job runs in <job dir>/code (the checkout), with a venv and setup lines."""
    job_dir = tmp_path / "nrhome"  # the launcher fixture's --base-dir
    r = launcher("--executor", "slurm", "--nodes", 32, "--gpus-per-node", 4, "--nproc-per-node", 4, "--time", "30",
                 "--venv", "/opt/r1/venv", "--setup", "module load cuda/12.8", "--env", "NCCL_IB_HCA=mlx5_0",
                 "--sbatch", "reservation=r1", "--no-exclusive", "--mem", "", "--retries", 2,
                 "--dryrun", DSV3, "--stage", "cold_start_sft")
    assert r.returncode == 0, r.stdout[-6000:]
    script = sbatch_scripts(r.stdout)["cold_start_sft"]
    d = directives(script)
    assert "--nodes=32" in d and "--gpus-per-node=4" in d and "--time=30" in d and "--reservation=r1" in d
    assert not any(x.startswith(("--account", "--partition", "--exclusive", "--mem")) for x in d), d
    argv = srun_line(script)
    assert not any(a.startswith("--container") for a in argv)
    assert option(argv, "--chdir").startswith(str(job_dir)) and option(argv, "--chdir").endswith("/code")
    assert option(argv, "--nproc-per-node") == "4" and option(argv, "--nnodes") == "32"
    assert argv[-6:] == ["-m", "r1mega.cli", "train", DSV3, "--stage", "cold_start_sft"]
    assert "export PATH=/opt/r1/venv/bin:$PATH\n" in script and "export NCCL_IB_HCA=mlx5_0\n" in script
    assert "module load cuda/12.8" in script.split("# Command 1")[0]
    assert "export TORCHX_MAX_RETRIES=2" in script


# ---- a real one-node Slurm -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_cluster():
    """A one-node Slurm for this module (own state directory; stopped at the end of the module, so
    it never overlaps the tests/slurm cluster started later in the same session)."""
    try:
        check_usable()
        ensure_installed(lambda m: sys.stderr.write(f"[slurm] {m}\n"))
    except SlurmUnavailable as e:
        pytest.skip(f"no Slurm test cluster: {e}")
    base = Path(tempfile.gettempdir()) / f"r1mega-launch-slurm-test-{os.getuid()}"
    base.mkdir(parents=True, exist_ok=True)
    with open(base.with_suffix(".lock"), "w") as lock:
        deadline = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another session holds {lock.name} for more than 300 s")
                time.sleep(1)
        cluster = LocalSlurmCluster(base, log=lambda m: sys.stderr.write(f"[slurm] {m}\n"))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
            fcntl.flock(lock, fcntl.LOCK_UN)


CHAIN = """
name: chain
model: {{preset: tiny}}
optimizer: {{micro_batch_size: 4, global_batch_size: 16}}
data: {{seq_length: 128}}
pipeline:
  run_dir: {run_dir}
  stages:
    - {{name: first, kind: pretrain, steps: 2}}
    - {{name: second, kind: sft, init_from: first, steps: 2, overrides: {{optimizer: {{lr: 1.234e-4}}}}}}
"""


@pytest.mark.slurm
def test_real_submission_chained_experiment(slurm_cluster, launcher, rank_venv, tmp_path):
    """Two stages submitted at once as an Experiment; the second waits (afterok) for the first; both
    run `torchrun -m r1mega.cli config show --stage NAME` with 2 processes on the CPU node."""
    config = tmp_path / "chain.yaml"
    config.write_text(CHAIN.format(run_dir=tmp_path / "run"))
    job_dir = tmp_path / "nrhome"  # the launcher fixture's --base-dir: scripts and logs go there
    r = launcher("--executor", "slurm", "--gpus-per-node", 0, "--nproc-per-node", 2, "--no-exclusive", "--mem", "",
                 "--time", "00:10:00", "--venv", rank_venv, "--detach", "--experiment",
                 "--command", "show", config, env=slurm_cluster.env())
    assert r.returncode == 0, r.stdout[-6000:]
    ids = dict(re.findall(r"^\[r1mega-launch\] (\S+): SUBMITTED slurm job (\d+)", r.stdout, re.M))
    assert set(ids) == {"first", "second"}, r.stdout[-4000:]
    second = slurm_cluster.job(int(ids["second"]))
    assert second.get("Dependency", "").startswith(f"afterok:{ids['first']}") or \
        second.get("JobState") in ("RUNNING", "COMPLETED"), second
    infos = {}
    for name in ("first", "second"):
        info = slurm_cluster.wait_job(int(ids[name]), timeout=120)
        log = "\n".join(p.read_text(errors="replace") for p in sorted(job_dir.rglob(f"*r1mega-{name}_{ids[name]}*")))
        assert info["JobState"] == "COMPLETED", f"{name}: {info.get('JobState')} {info.get('Reason')}\n{log[-4000:]}"
        assert info["JobName"] == f"r1mega-{name}"
        infos[name] = (info, log)
    assert infos["second"][0]["StartTime"] >= infos["first"][0]["EndTime"]  # ISO times: string order is time order
    first_log, second_log = infos["first"][1], infos["second"][1]
    for rank in (0, 1):
        assert f"[default{rank}]:name: chain" in first_log, first_log[-3000:]
    # each task shows its own stage's view: the second stage's optimizer override only there
    assert "[default0]:  lr: 0.0001234\n" in second_log, second_log[-3000:]
    assert "[default0]:  lr: 0.0003\n" in first_log and "[default0]:  lr: 0.0001234\n" not in first_log
    assert "--nproc-per-node 2" in first_log and "-m r1mega.cli config show" in first_log
