"""A `distill` stage with logit distillation end to end (`r1mega run`): a tiny MoE teacher pretrained
for 3 steps teaches a tiny-dense student; the KD term falls over 20 steps; ce/kd/loss are logged;
and a distill stage with alpha=0 reproduces a plain SFT stage's losses exactly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROWS = [{"prompt": f"What is {a}+{b}? ", "response": f"<think>{a}+{b}={a + b}</think><answer>{a + b}</answer>"}
        for a in range(1, 5) for b in range(1, 5)]


def _config(tmp_path: Path) -> dict:
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    student = {"model": {"preset": "tiny-dense", "num_layers": 2}, "data": {"train_paths": [str(data)]},
               "optimizer": {"lr": 2.0e-3, "min_lr": 2.0e-3, "warmup_steps": 0, "decay_style": "constant"}}
    return {
        "name": "distill",
        "model": {"preset": "tiny", "num_layers": 2},
        "optimizer": {"lr": 1.0e-3, "warmup_steps": 1, "micro_batch_size": 4, "global_batch_size": 8},
        "data": {"seq_length": 64},
        "logging": {"tensorboard": False},
        "checkpoint": {"save_interval": 0},
        "pipeline": {"run_dir": str(tmp_path / "run"), "stages": [
            # 3 pretraining steps at a high LR: a peaked (unigram-like) teacher the random student must learn
            {"name": "teacher", "kind": "pretrain", "steps": 3, "overrides": {"optimizer": {
                "lr": 1.0e-2, "min_lr": 1.0e-2, "warmup_steps": 0, "decay_style": "constant"}}},
            {"name": "kd", "kind": "distill", "steps": 20,
             "overrides": {**student, "distill": {"teacher": "stage:teacher", "alpha": 0.5, "temperature": 2.0}}},
            {"name": "sft", "kind": "sft", "steps": 3, "overrides": student},
            {"name": "kd0", "kind": "distill", "steps": 3,
             "overrides": {**student, "distill": {"teacher": "stage:teacher", "alpha": 0.0}}},
        ]},
    }


def _rows(run: Path, stage: str) -> list[dict]:
    return [r for r in map(json.loads, (run / stage / "metrics.jsonl").read_text().splitlines()) if "grad_norm" in r]


def test_distill_stage_with_teacher(tmp_path):
    cfg = _config(tmp_path)
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "r1mega.cli", "run", str(path)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "logit distillation from stage:teacher" in proc.stdout
    run = tmp_path / "run"
    kd = _rows(run, "kd")
    assert len(kd) == 20 and all({"ce", "kd", "loss"} <= set(r) for r in kd)
    for r in kd:  # loss = (1 - alpha) * ce + alpha * kd (token means)
        assert r["loss"] == pytest.approx(0.5 * r["ce"] + 0.5 * r["kd"], rel=1e-5)
    first = sum(r["kd"] for r in kd[:3]) / 3
    last = sum(r["kd"] for r in kd[-3:]) / 3
    assert last < 0.5 * first, (first, last)  # measured: 1.52 -> 0.41
    m = json.loads((run / "kd" / "manifest.json").read_text())
    assert m["status"] == "complete" and "kd" in m["metrics"] and "ce" in m["metrics"]
    # alpha = 0: exactly the SFT stage (no teacher is loaded)
    sft, kd0 = _rows(run, "sft"), _rows(run, "kd0")
    assert [r["loss"] for r in sft] == [r["loss"] for r in kd0]
    assert [r["grad_norm"] for r in sft] == [r["grad_norm"] for r in kd0]
    times = {name: sorted(r["step_time"] for r in rows)[len(rows) // 2] for name, rows in (("kd", kd), ("sft", sft))}
    print(f"median step time: with teacher {times['kd']:.3f}s, without {times['sft']:.3f}s")
