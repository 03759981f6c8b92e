"""The pure parts of r1mega.launch.nemo_run (no nemo_run needed: these run in the main venv)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from r1mega.launch import nemo_run as nr

REPO = Path(__file__).resolve().parents[2]
DSV2 = REPO / "examples" / "dsv2-lite-1x8h100" / "r1.yaml"
R1_STAGES = ["cold_start_sft", "reasoning_rl", "rejection_sampling", "sft", "all_scenario_rl", "eval"]


def test_importable_without_nemo_run():
    """Importing the module never imports nemo_run (the main venv cannot have it)."""
    code = ("import sys; import r1mega.launch.nemo_run as m; "
            "assert 'nemo_run' not in sys.modules, 'nemo_run imported eagerly'; "
            "j = m.R1Job('c.yaml', stage='sft'); print(j.shell())")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "python -m r1mega.cli train c.yaml --stage sft"


def test_require_nemo_run_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "nemo_run", None)  # as if not installed
    with pytest.raises(ImportError, match="make launch-env"):
        nr.require_nemo_run()
    with pytest.raises(ImportError, match="make launch-env"):
        nr.build_task(nr.R1Job("c.yaml"))


def test_job_arguments():
    assert nr.R1Job("c.yaml", stage="grpo", overrides=["a=1"]).args() == ["train", "c.yaml", "--stage", "grpo", "a=1"]
    assert nr.R1Job("c.yaml", command="run", stage="sft").args() == ["run", "c.yaml", "--only", "sft"]
    assert nr.R1Job("c.yaml", command="check").args() == ["config", "check", "c.yaml"]
    assert nr.R1Job("c.yaml", command="show", stage="x").args() == ["config", "show", "c.yaml", "--stage", "x"]
    assert nr.R1Job("c.yaml", stage="grpo").task_name == "grpo"
    assert nr.R1Job("c.yaml", command="run").task_name == "run"
    assert nr.R1Job("c.yaml").argv() == ["python", "-m", "r1mega.cli", "train", "c.yaml"]
    for bad in (dict(command="nope"), dict(overrides=["--stage"]), dict(command="check", stage="sft")):
        with pytest.raises(nr.LaunchError):
            nr.R1Job("c.yaml", **bad)


def test_job_config_path(tmp_path):
    assert nr.job_config_path(str(DSV2), REPO) == "examples/dsv2-lite-1x8h100/r1.yaml"
    outside = tmp_path / "x.yaml"
    assert nr.job_config_path(str(outside), REPO) == str(outside)
    assert nr.job_config_path("rel/c.yaml", None) == "rel/c.yaml"


def test_stage_jobs_follow_the_pipeline_order():
    jobs = nr.stage_jobs(str(DSV2), ["data.seed=3"], job_config="examples/dsv2-lite-1x8h100/r1.yaml")
    assert [j.stage for j in jobs] == R1_STAGES
    assert jobs[1].args() == ["run", "examples/dsv2-lite-1x8h100/r1.yaml", "--only", "reasoning_rl", "data.seed=3"]
    picked = nr.stage_jobs(str(DSV2), only=["eval", "cold_start_sft"], stage_nodes={"eval": 2}, command="train")
    assert [(j.stage, j.nodes, j.args()[0]) for j in picked] == [("cold_start_sft", None, "train"), ("eval", 2, "train")]
    with pytest.raises(nr.LaunchError, match="no stage named nope"):
        nr.stage_jobs(str(DSV2), only=["nope"])
    with pytest.raises(nr.LaunchError, match="one of train, run, show"):
        nr.stage_jobs(str(DSV2), command="check")


def test_stage_jobs_need_stages(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: tiny}\n")
    with pytest.raises(nr.LaunchError, match="pipeline.stages is empty"):
        nr.stage_jobs(str(cfg))


def test_key_values():
    assert nr.parse_key_values(["a=1", "b=x=y"], "--env") == {"a": "1", "b": "x=y"}
    assert nr.parse_key_values(["sft=4,grpo=16", "eval=1"], "--stage-nodes", int) == {"sft": 4, "grpo": 16, "eval": 1}
    for bad in (["novalue"], ["=1"]):
        with pytest.raises(nr.LaunchError):
            nr.parse_key_values(bad, "--env")
    with pytest.raises(nr.LaunchError, match="bad value"):
        nr.parse_key_values(["sft=four"], "--stage-nodes", int)


def test_job_env():
    env = nr.job_env({"X": "1"}, venv="/opt/venv", environ={"NCCL_IB_HCA": "mlx5_0", "UNRELATED": "1"})
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["NCCL_IB_HCA"] == "mlx5_0" and "UNRELATED" not in env and env["X"] == "1"
    assert env["PATH"] == "/opt/venv/bin:$PATH" and env["VIRTUAL_ENV"] == "/opt/venv"
    assert nr.local_path_env(env, {"PATH": "/usr/bin"})["PATH"] == "/opt/venv/bin:/usr/bin"


def test_specs():
    s = nr.SlurmSpec(nodes=32, gpus_per_node=8)
    s.validate()
    assert s.ranks_per_node() == 8
    assert nr.SlurmSpec(gpus_per_node=0).ranks_per_node() == 1
    assert nr.SlurmSpec(gpus_per_node=0, nproc_per_node=2).ranks_per_node() == 2
    img = nr.SlurmSpec(container_image="img", container_mounts=["/d:/d"], repo="/src/r1mega")
    assert img.all_mounts() == ["/d:/d", "/src/r1mega:/src/r1mega"]  # the inplace code dir must resolve
    assert nr.SlurmSpec(container_image="img", code="snapshot").all_mounts() == []
    for bad in (dict(nodes=0), dict(gpus_per_node=-1), dict(code="copy"), dict(time="4h"),
                dict(ssh_host="login"), dict(nproc_per_node=0)):
        with pytest.raises(nr.LaunchError):
            nr.SlurmSpec(**bad).validate()
    for ok in ("04:00:00", "1-00:00:00", "30", "10:00"):
        nr.SlurmSpec(time=ok).validate()
    with pytest.raises(nr.LaunchError):
        nr.LocalSpec(nproc_per_node=0).validate()
    assert nr.LocalSpec(venv="").resolved_venv() is None
