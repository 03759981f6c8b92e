"""Router replay (R2) at a parallel layout, for test_router_replay_layouts.py (run under torchrun).

    router_replay_worker.py --layout tp=2,sp=1 --out OUT.json

The tiny MoE (3 MoE layers) with unit-scale weights, a batch of 8 rows of different lengths (sharded over the
data-parallel ranks), 2 microbatches: record the routing in a log-prob pass, move the expert bias, then pass
again without and with replay. Under sequence parallelism each TP rank routes its share of the sequence: the
recording gathers the shares and the replay hands each rank its own, so the replayed log-probs equal the
recorded pass's.
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
from r1mega.train.engine import TrainEngine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    layout = parse_layout(a.layout)
    engine = TrainEngine(get_preset("tiny"), layout, None, mtp=False, forward_micro_batch_size=2, router_replay=True)
    randomize(engine, 1)  # the same draws on every rank: replicated weights (router, bias, norms) agree
    g = torch.Generator().manual_seed(0)
    lengths = (30, 12, 25, 17, 9, 28, 20, 14)
    full = lm_batch([torch.randint(1, 512, (n,), generator=g).tolist() for n in lengths], loss_from=[4] * 8)
    r, n = engine.dp_rank_size()
    b = dp_shard(full, r, n)
    lp, routed = engine.logprobs(b, record_routing=True)
    with torch.no_grad():
        for m in engine.chunks[0].modules():
            if getattr(m, "expert_bias", None) is not None:
                m.expert_bias.add_(0.3 * torch.randn(m.expert_bias.shape, generator=torch.Generator().manual_seed(5)))
    free, now = engine.logprobs(b, record_routing=True)
    replay = engine.logprobs({**b, "routed_experts": routed})
    mask = b["loss_mask"].bool()
    real = torch.arange(b["tokens"].size(1))[None] < b["lengths"][:, None]
    routings = [None] * dist.get_world_size()
    dist.all_gather_object(routings, routed.tolist())
    out = {"free_err": float((free - lp)[mask].abs().mean()), "replay_err": float((replay - lp)[mask].abs().max()),
           "flipped": 1 - rr.agreement(routed, now, real), "recorded_nonzero": int((routed[real] != 0).any(-1).sum()),
           "routings": routings}
    if dist.get_rank() == 0:
        Path(a.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
