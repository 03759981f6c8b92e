"""Trainer offload at DP=2 with the distributed optimizer (2 gloo processes, torchrun): each rank parks its own
shard of Adam's state; three steps with offload/reload between them equal three steps without, bit for bit, on every
rank. Writes each rank's figures to --out (rank 0 gathers them).

    R1MEGA_FORCE_TRAINER_OFFLOAD=1 torchrun --nproc-per-node 2 offload_dp_worker.py --out OUT.json
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from r1mega.algorithms import SFTLoss
from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.train import offload as off
from r1mega.train.batching import dp_shard, lm_batch
from r1mega.train.engine import TrainEngine


def batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return lm_batch([torch.randint(1, 500, (int(n),), generator=g).tolist() for n in (20, 17, 24, 11)])


def run(offload: bool) -> tuple:
    torch.manual_seed(0)
    e = TrainEngine(get_preset("tiny", num_layers=2), ParallelConfig(distributed_optimizer=True),
                    OptimizerConfig(lr=1e-3, warmup_steps=0, decay_style="constant", micro_batch_size=1,
                                    global_batch_size=4), seed=7, mtp=False, total_steps=8)
    r, n = e.dp_rank_size()
    o, stats, parts = off.Offloader(e), [], {}
    for i in range(3):
        if offload and i:
            o.offload(("grads", "optimizer"))
            o.offload()
            assert off.resident_state(e, min_bytes=off.AUDIT_MIN_BYTES) == {}
            parts = {k: int(v) for k, v in o.reload().by_part.items()}
        s = e.train_step(dp_shard(batch(10 + i), r, n), SFTLoss("token-mean"))
        stats.append([float(s.metrics["loss/sft"]) if "loss/sft" in s.metrics else 0.0, s.grad_norm])
    state = {f"{p}:{k}": t.detach().clone() for p in ("weights", "optimizer") for k, t in off.targets(e, p)}
    params = sum(p.numel() for c in e.chunks for p in c.parameters())
    adam = sum(t.numel() for k, t in off.targets(e, "optimizer") if k.endswith(("exp_avg", "exp_avg_sq")))
    return stats, state, parts, params, adam, dict(s.metrics)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    s0, w0, _, params, adam, m0 = run(False)
    s1, w1, parts, _, _, m1 = run(True)
    mine = {"rank": dist.get_rank(), "same_stats": s0 == s1 and m0 == m1, "grad_norms": [x[1] for x in s0],
            "same_state": w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0),
            "parts": parts, "params": params, "adam_elements": adam}
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    if dist.get_rank() == 0:
        with open(a.out, "w") as f:
            json.dump(ranks, f)


if __name__ == "__main__":
    main()
