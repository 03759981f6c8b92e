"""Colocated vLLM under torchrun with 2 CPU processes (gloo): trainer and engine in every rank.

* a wider DeepSeek-V3 MoE (every layer MoE, 16 routed experts top-4 in 4 groups pick 2, 2 shared
  experts), rollout TP=2: one vLLM replica whose TP group spans both ranks (each rank holds its
  shard; the MoE intermediate dim 96 splits into 48 and is padded by the CPU kernel, which the
  refit must redo), trainer TP=1 x DP=2;
* ``tiny-dense``, rollout TP=1: two independent vLLM replicas, each generating its share of the
  prompts, results all-gathered.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_support import child_env

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("dist_worker.py")
TORCHRUN = Path(sys.executable).parent / "torchrun"


WIDE_MOE = ["model.first_k_dense_replace=0", "model.n_routed_experts=16", "model.num_experts_per_tok=4",
            "model.n_group=4", "model.topk_group=2", "model.n_shared_experts=2"]


def _run(tmp_path: Path, preset: str, rollout_tp: int, extra=()) -> list:
    out = tmp_path / f"{preset}-tp{rollout_tp}"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(WORKER), "--preset", preset,
           "--set", f"rollout.tensor_parallel={rollout_tp}", *extra, "--out", str(out)]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    for d in ranks:
        print(f"[parity] {preset} {' '.join(extra)} rollout TP={rollout_tp} rank {d['rank']}: first refit "
              f"{d['parity1']:.3g}, after update {d['parity2']:.3g}, sampled mismatch {d['mismatch']['mean_abs']:.3g}, "
              f"refit {d['refit2']['seconds']:.3f}s")
    return ranks


def _common_checks(ranks: list) -> None:
    for d in ranks:
        assert d["parity1"] < 1e-3, d  # first refit from dummy weights
        assert d["stale"] > 0.05  # the trainer moved on
        assert d["parity2"] < 1e-3  # and the second refit followed it
        assert d["mismatch"]["mean_abs"] < 1e-4 and d["mismatch"]["tokens"] > 0
        assert d["refit1"]["tensors"] == d["refit2"]["tensors"] > 0
    # every rank returns every completion (5 prompts x 2 samples), in prompt-major order, identical
    assert ranks[0]["completions"] == ranks[1]["completions"]
    assert [c[:2] for c in ranks[0]["completions"]] == [[i, j] for i in range(5) for j in range(2)]


def test_rollout_tp2_one_replica(tmp_path):
    ranks = _run(tmp_path, "tiny", 2, WIDE_MOE)
    _common_checks(ranks)
    # one replica spanning both ranks: each rank ran every prompt (as a TP shard)
    assert all(len(d["local"]) == 10 for d in ranks)
    assert ranks[0]["local"] == ranks[1]["local"] == ranks[0]["completions"]


def test_rollout_tp1_two_replicas_shard_prompts(tmp_path):
    ranks = _run(tmp_path, "tiny-dense", 1)
    _common_checks(ranks)
    # two replicas: rank 0 generated prompts 0-2, rank 1 prompts 3-4 (uneven split), nothing twice
    assert sorted({c[0] for c in ranks[0]["local"]}) == [0, 1, 2]
    assert sorted({c[0] for c in ranks[1]["local"]}) == [3, 4]
    assert ranks[0]["local"] + ranks[1]["local"] == ranks[0]["completions"]
