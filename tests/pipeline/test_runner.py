"""`r1mega run`: stages chained with manifests; reruns skip finished stages; a changed config of a
finished stage is refused; an interrupted stage resumes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "pipe",
    "model": {"preset": "tiny", "num_layers": 2},
    "optimizer": {"lr": 1.0e-3, "warmup_steps": 1, "micro_batch_size": 4, "global_batch_size": 4},
    "data": {"tasks": ["arith"], "difficulties": [1], "seq_length": 64},
    "rollout": {"engine": "megatron", "max_new_tokens": 8},
    "grpo": {"group_size": 2, "prompts_per_step": 2, "kl_coef": 0.001},
    "logging": {"tensorboard": False},
    "checkpoint": {"save_interval": 2},
    "pipeline": {"stages": [
        {"name": "pretrain", "kind": "pretrain", "steps": 2},
        {"name": "r1_zero", "kind": "grpo", "init_from": "pretrain", "steps": 2,
         "overrides": {"data": {"seq_length": 128}}},
    ]},
}


def _run(cfg_path: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "r1mega.cli", "run", str(cfg_path), *extra], capture_output=True,
                          text=True, timeout=600, env={"PYTHONWARNINGS": "ignore", **__import__("os").environ})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_pipeline_manifests_skip_and_refuse_changed(tmp_path):
    cfg = {**CONFIG, "pipeline": {**CONFIG["pipeline"], "run_dir": str(tmp_path / "run")}}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = _run(path)
    assert "stage pretrain (pretrain): starting" in first.stdout and "stage r1_zero (grpo): starting" in first.stdout
    for name in ("pretrain", "r1_zero"):
        m = json.loads((tmp_path / "run" / name / "manifest.json").read_text())
        assert m["status"] == "complete" and m["kind"] in ("pretrain", "grpo") and len(m["config_hash"]) == 16
        assert "checkpoints" in m["outputs"]
    grpo = json.loads((tmp_path / "run" / "r1_zero" / "manifest.json").read_text())
    assert "reward/total" in grpo["metrics"] and grpo["init_from"] == "pretrain"
    rows = [json.loads(l) for l in (tmp_path / "run" / "r1_zero" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("rollout_mismatch/mean_abs" in r for r in rows)
    assert max(r["rollout_mismatch/mean_abs"] for r in rows) < 1e-4  # Megatron engine: same numbers as the trainer

    second = _run(path)
    assert "stage pretrain: complete, skipped" in second.stdout and "stage r1_zero: complete, skipped" in second.stdout

    changed = _run(path, "pipeline.stages.pretrain.steps=3", check=False)
    assert changed.returncode == 2
    assert "pipeline.stages[pretrain]: stage is complete" in changed.stderr and "config changed" in changed.stderr

    # an interrupted stage (manifest 'running', checkpoint at step 2 of 4) resumes rather than restarts
    m = tmp_path / "run" / "r1_zero" / "manifest.json"
    data = json.loads(m.read_text())
    data["status"] = "running"
    m.write_text(json.dumps(data))
    cfg["pipeline"]["stages"][1]["steps"] = 4
    path.write_text(yaml.safe_dump(cfg))
    third = _run(path, "--only", "r1_zero")
    assert "stage r1_zero (grpo): resuming" in third.stdout
    rows = [json.loads(l) for l in (tmp_path / "run" / "r1_zero" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
