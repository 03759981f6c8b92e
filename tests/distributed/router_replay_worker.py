"""Router replay (R2) at a parallel layout, for test_router_replay_layouts.py (run under torchrun).

    router_replay_worker.py --layout tp=2,sp=1 --out OUT.json
    router_replay_worker.py --make-init DIR --out OUT.json      (world of 1: weights, recording and log-probs)
    router_replay_worker.py --layout pp=2 --init DIR --out OUT.json

The tiny MoE (3 MoE layers) with unit-scale weights, a batch of 8 rows of different lengths (sharded over the
data-parallel ranks), 2 microbatches: record the routing in a log-prob pass, move the expert bias, then pass
again without and with replay. Under sequence parallelism each TP rank routes its share of the sequence: the
recording gathers the shares and the replay hands each rank its own, so the replayed log-probs equal the
recorded pass's. With ``--init`` the weights come from a world-of-1 checkpoint and the replayed routing is
the one recorded there (as R3 replays an engine's): the pipeline stages replay their own layers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "rollout"))
from rollout_support import randomize  # noqa: E402
from worker import parse_layout  # noqa: E402

from r1mega.model.presets import get_preset  # noqa: E402
from r1mega.train import router_replay as rr  # noqa: E402
from r1mega.train.batching import dp_shard, lm_batch  # noqa: E402
from r1mega.train.checkpoint import CheckpointManager  # noqa: E402
from r1mega.train.engine import TrainEngine  # noqa: E402


@torch.no_grad()
def shift_bias(engine) -> None:
    """Move each router's expert bias by draws seeded by its layer: the same at every layout."""
    for c in engine.chunks:
        for m in c.modules():
            if getattr(m, "expert_bias", None) is not None:
                g = torch.Generator().manual_seed(5 + m.layer_number)
                m.expert_bias.add_(0.3 * torch.randn(m.expert_bias.shape, generator=g))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", default="")
    ap.add_argument("--make-init")
    ap.add_argument("--init")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    layout = parse_layout(a.layout)
    engine = TrainEngine(get_preset("tiny"), layout, None, mtp=False, forward_micro_batch_size=2, router_replay=True)
    g = torch.Generator().manual_seed(0)
    lengths = (30, 12, 25, 17, 9, 28, 20, 14)
    full = lm_batch([torch.randint(1, 512, (n,), generator=g).tolist() for n in lengths], loss_from=[4] * 8)
    r, n = engine.dp_rank_size()
    b = dp_shard(full, r, n)
    mask = b["loss_mask"].bool()
    real = torch.arange(b["tokens"].size(1))[None] < b["lengths"][:, None]
    if a.init:  # replay a recording made at another layout (world of 1)
        CheckpointManager(Path(a.init) / "ckpt").load(engine, load_optimizer=False)
        rec = torch.load(Path(a.init) / "recording.pt")
        lp, routed = dp_shard(rec, r, n)["lp"], dp_shard(rec, r, n)["routed"]
        shift_bias(engine)
        free = engine.logprobs(b)
        now = None
    else:
        randomize(engine, 1)  # the same draws on every rank: replicated weights (router, bias, norms) agree
        lp, routed = engine.logprobs(b, record_routing=True)
        if a.make_init:
            CheckpointManager(Path(a.make_init) / "ckpt").save(engine, 0)
            torch.save({"tokens": b["tokens"], "lp": lp, "routed": routed}, Path(a.make_init) / "recording.pt")
        shift_bias(engine)
        free, now = engine.logprobs(b, record_routing=True)
    replay = engine.logprobs({**b, "routed_experts": routed})
    routings = [None] * dist.get_world_size() if dist.is_initialized() else [None]
    if dist.is_initialized():
        dist.all_gather_object(routings, routed.tolist())
    else:
        routings = [routed.tolist()]
    out = {"free_err": float((free - lp)[mask].abs().mean()), "replay_err": float((replay - lp)[mask].abs().max()),
           "flipped": None if now is None else 1 - rr.agreement(routed, now, real),
           "recorded_nonzero": int((routed[real] != 0).any(-1).sum()), "routings": routings}
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(a.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
