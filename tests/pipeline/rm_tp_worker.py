"""Reward-model parity worker (run under python or torchrun): scores and Bradley-Terry steps at a layout.

    rm_tp_worker.py --make-init DIR --out OUT.json               (world of 1: writes the step-0 weights)
    rm_tp_worker.py --layout tp=2,sp=1 --init DIR --out OUT.json (any world: loads them, same batch)
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from r1mega.algorithms import BradleyTerryLoss
from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.rewards.model_reward import RewardModelEngine, score_batch, score_sequences
from r1mega.train.batching import dp_shard
from r1mega.train.checkpoint import CheckpointManager


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", default="")
    ap.add_argument("--init")
    ap.add_argument("--make-init")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    kw = {}
    for item in filter(None, a.layout.split(",")):
        k, v = item.split("=")
        kw[{"tp": "tensor_parallel", "sp": "sequence_parallel"}[k]] = bool(int(v)) if k == "sp" else int(v)
    oc = OptimizerConfig(lr=3e-3, warmup_steps=0, decay_style="constant", micro_batch_size=4, global_batch_size=8)
    engine = RewardModelEngine(get_preset("tiny", num_nextn_predict_layers=0), ParallelConfig(**kw), oc,
                               score_token_ids=(13, 15), seed=1234, total_steps=10)
    if a.make_init:
        CheckpointManager(a.make_init).save(engine, 0)
    if a.init:
        CheckpointManager(a.init).load(engine, load_optimizer=False)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 512, (int(n),), generator=g).tolist() + [2]
            for n in torch.randint(8, 30, (8,), generator=g)]  # 4 pairs of uneven lengths, ending in EOS
    dp_rank, dp = engine.dp_rank_size()
    res = {"scores0": score_sequences(engine, seqs, batch_size=3)}
    losses, norms = [], []
    for _ in range(2):
        st = engine.train_step(dp_shard(score_batch(seqs), dp_rank, dp), BradleyTerryLoss(0.01))
        losses.append(st.metrics["rm/loss"])
        norms.append(st.grad_norm)
    res.update(losses=losses, grad_norms=norms, scores2=score_sequences(engine, seqs))
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(a.out, "w") as f:
            json.dump(res, f)


if __name__ == "__main__":
    main()
    from r1mega.platform.distributed import destroy

    destroy(barrier=True)  # exiting with live gloo groups can abort
