"""benchmarks/moe_drift_study.py is a study run by hand (docs/rollout.md, "Drift study"); this checks the two
things its figures rest on without running it: the drift gives the engine another copy and hands the trainer
back its exact weights (even when generation fails), and the summary's figures are the right reductions of
the per-step rows. No rollout engine is started."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("moe_drift_study", ROOT / "benchmarks" / "moe_drift_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_drift_is_undone_exactly(megatron_world):
    from r1mega.config import load_config
    from r1mega.model.presets import get_preset
    from r1mega.train.engine import TrainEngine

    s = _study()
    torch.manual_seed(0)
    engine = TrainEngine(get_preset("tiny", num_layers=2), load_config(None, []).parallel, None, mtp=False)
    tensors = s._drifting_tensors(engine)
    biases = [m.expert_bias for c in engine.chunks for m in c.modules() if getattr(m, "expert_bias", None) is not None]
    assert len(biases) == 1 and any(b is biases[0] for b in tensors)  # (layer 0 is dense)
    before = [t.detach().clone() for t in tensors]
    with s.drifted(engine, 0.3, True, seed=5):
        during = [t.detach().clone() for t in tensors]
    assert all(torch.equal(a, b) for a, b in zip(before, tensors))
    # inside: bf16 weights, and the bias moved by about 0.3 a expert (beyond bf16 rounding)
    w = next(i for i, t in enumerate(tensors) if t.dim() == 2)
    assert torch.equal(during[w], before[w].to(torch.bfloat16).float()) and not torch.equal(during[w], before[w])
    b = next(i for i, t in enumerate(tensors) if t is biases[0])
    assert (during[b] - before[b]).abs().mean() > 0.05
    with pytest.raises(RuntimeError):
        with s.drifted(engine, 0.3, True, seed=6):
            raise RuntimeError("generation failed")
    assert all(torch.equal(a, b) for a, b in zip(before, tensors))


def test_summary_reduces_the_steps(tmp_path):
    s = _study()
    steps = [{"arm": "token_mask", "seed": 1, "iteration": i + 1, "reward/total": 1.0 + 0.1 * i, "accuracy": 0.1 * i,
              "rollout_mismatch/mean_abs": 0.1 * (i + 1), "rollout_mismatch/max_abs": [2.0, 7.0, 3.0, 1.0][i],
              "rollout_mismatch/kl_k3": 0.01, "train/mismatch/masked_token_frac": [0.0, 0.1, 0.2, 0.1][i],
              "train/mismatch/masked_seq_frac": 0.0, "train/kl/k3": 0.5} for i in range(4)]
    final = {"arm": "token_mask", "seed": 1, "final": True, "train_seconds": 12.0,
             "heldout": {"pass@1": 0.25, "pass@4": 0.5, "format_rate": 1.0, "mean_tokens": 20.0}}
    (tmp_path / "token_mask-s1.jsonl").write_text("\n".join(json.dumps(r) for r in [*steps, final]) + "\n")
    assert s._done(tmp_path / "token_mask-s1.jsonl") and not s._done(tmp_path / "none-s1.jsonl")
    (r,) = s.summarize(tmp_path, [("token_mask", 1)])
    assert r["mismatch_mean"] == pytest.approx(0.25) and r["mismatch_max"] == 7.0  # mean of means, max of maxima
    assert r["masked_token_frac"] == pytest.approx(0.1) and r["tis_weight_mean"] is None
    assert r["acc_quarters"] == pytest.approx([0.0, 0.1, 0.2, 0.3]) and r["reward_first"] == pytest.approx(1.0)
    assert r["heldout_pass1"] == 0.25 and r["steps"] == 4
    assert "| token_mask | 1 | 2.50e-01 | 7.00 | 1.0e-02 | 0.100 | 0.000 |" in s.table([r])
    assert "| token_mask | 25.0 (1) | 25.0 |" in s.by_arm([r])
