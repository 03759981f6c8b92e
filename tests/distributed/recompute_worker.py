"""Full activation recompute under router replay at a pipeline layout, for test_recompute_layouts.py (torchrun).

    recompute_worker.py --layout pp=2[,vpp=2] --out OUT.json

The tiny MoE (3 MoE layers) with unit-scale weights, 8 rows in 8 microbatches (1F1B keeps several forwards in
flight before their backwards; the interleaved schedule runs each rank's two model chunks in turn), every token
replaying given top-k experts (random ids, not what the routers would choose): one train step without recompute
and one with full recompute. The recompute in the backward must replay each microbatch's own ids, in the order
the schedule runs the backwards, on the chunk that holds the layer: then the gradients are equal.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "rollout"))
from rollout_support import randomize  # noqa: E402
from worker import parse_layout  # noqa: E402

from r1mega.algorithms import SFTLoss  # noqa: E402
from r1mega.config.optimizer import OptimizerConfig  # noqa: E402
from r1mega.model.presets import get_preset  # noqa: E402
from r1mega.train import router_replay as rr  # noqa: E402
from r1mega.train.batching import lm_batch  # noqa: E402
from r1mega.train.engine import TrainEngine  # noqa: E402


def step(layout, mode: str, batch: dict) -> tuple:
    torch.manual_seed(0)
    model = get_preset("tiny")
    e = TrainEngine(model, dataclasses.replace(layout, recompute=mode),
                    OptimizerConfig(lr=1e-3, warmup_steps=0, decay_style="constant", micro_batch_size=1,
                                    global_batch_size=8), seed=7, mtp=False, total_steps=2, router_replay=True)
    randomize(e, 1)
    grads, calls = {}, []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for c in e.chunks for m in c.modules()
             if type(m).__name__ == "TopKRouter"]

    def keep(_metrics):
        for i, c in enumerate(e.chunks):
            grads.update({f"{i}.{n}": p.main_grad.detach().clone() for n, p in c.named_parameters()})

    st = e.train_step(batch, SFTLoss("seq-mean-token-mean"), before_update=keep)
    for h in hooks:
        h.remove()
    queued = sum(len(r.replay_backward_list) for _, r in e.replay_routers)
    return st, grads, len(calls), queued


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    layout = parse_layout(a.layout)
    g = torch.Generator().manual_seed(0)
    batch = lm_batch([torch.randint(1, 512, (24,), generator=g).tolist() for _ in range(8)])
    m = get_preset("tiny")
    ids = torch.rand(8, 24, rr.moe_layer_count(m), m.n_routed_experts, generator=g).argsort(-1)[..., :m.num_experts_per_tok]
    batch["routed_experts"] = ids.to(rr.routing_dtype(m.n_routed_experts))
    (s0, g0, c0, _), (s1, g1, c1, q1) = step(layout, "none", batch), step(layout, "full", batch)
    diff = max(float((g0[k] - g1[k]).abs().max()) for k in g0)
    out = {"grad_diff": diff, "router_calls": [c0, c1], "queued_after": q1, "grad_norm": [s0.grad_norm, s1.grad_norm]}
    outs = [None] * dist.get_world_size()
    dist.all_gather_object(outs, out)
    if dist.get_rank() == 0:
        Path(a.out).write_text(json.dumps(outs))


if __name__ == "__main__":
    main()
