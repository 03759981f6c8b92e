"""One training run at a given parallel layout, for the parity tests (run under torchrun or python).

    worker.py --layout tp=2,sp=1 --init DIR --out OUT.json [--save CKPT]
    worker.py --make-init DIR --out OUT.json              (world of 1: writes the step-0 weights)
    worker.py --load-eval CKPT --out OUT.json             (world of 1: eval loss of a checkpoint)

``--logprobs-from CKPT`` also builds a frozen engine (optim None, MTP off) at the same layout, loads
CKPT into it and records its per-token log-probs (and, at temperature 0.7, entropies) of the train batch
and of a 3-sequence batch (a row count that splits unevenly into microbatches).
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
from r1mega.train.batching import dp_shard, lm_batch
from r1mega.train.checkpoint import CheckpointManager
from r1mega.train.engine import TrainEngine

KEYS = {"tp": "tensor_parallel", "pp": "pipeline_parallel", "vpp": "virtual_pipeline", "ep": "expert_parallel",
        "etp": "expert_tensor_parallel", "first": "num_layers_in_first_pipeline_stage",
        "last": "num_layers_in_last_pipeline_stage",
        "sp": "sequence_parallel", "dispatcher": "moe_token_dispatcher", "dist_opt": "distributed_optimizer"}


def parse_layout(s: str) -> ParallelConfig:
    kw = {}
    for item in filter(None, s.split(",")):
        k, v = item.split("=")
        kw[KEYS[k]] = v if k == "dispatcher" else (bool(int(v)) if k in ("sp", "dist_opt") else int(v))
    return ParallelConfig(**kw)


def batches():
    g = torch.Generator().manual_seed(0)
    train = lm_batch([torch.randint(1, 512, (32,), generator=g).tolist() for _ in range(8)])
    evalb = lm_batch([torch.randint(1, 512, (32,), generator=g).tolist() for _ in range(4)])
    return train, evalb


def frozen_logprobs(model, layout: ParallelConfig, ckpt: str, train: dict) -> dict:
    """Log-probs of a frozen engine (the reference-policy / old-log-prob path), on every rank."""
    frozen = TrainEngine(model, layout, None, seed=1234, mtp=False)
    CheckpointManager(ckpt).load(frozen, load_optimizer=False)
    odd = {k: v[:3] for k, v in train.items()}
    lp_t, ent_t = frozen.logprobs(train, temperature=0.7, with_entropy=True)
    return {"train": frozen.logprobs(train).tolist(), "train_t07": lp_t.tolist(), "entropy_t07": ent_t.tolist(),
            "odd": frozen.logprobs(odd).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", default="")
    ap.add_argument("--init")
    ap.add_argument("--make-init")
    ap.add_argument("--save")
    ap.add_argument("--load-eval")
    ap.add_argument("--logprobs-from")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", default="", help="comma-separated preset overrides, e.g. num_nextn_predict_layers=0")
    a = ap.parse_args()
    torch.set_num_threads(1)
    oc = OptimizerConfig(lr=3e-3, warmup_steps=0, decay_style="constant", micro_batch_size=2, global_batch_size=8)
    overrides = {k: float(v) if "." in v or "e-" in v else int(v) for k, v in (i.split("=") for i in filter(None, a.model.split(",")))}
    engine = TrainEngine(get_preset("tiny", **overrides), parse_layout(a.layout), oc, seed=1234, total_steps=10)
    train, evalb = batches()
    dp_rank, dp_size = engine.dp_rank_size()
    result = {}
    if a.load_eval:
        CheckpointManager(a.load_eval).load(engine, load_optimizer=False)
        result["eval"] = engine.evaluate(dp_shard(evalb, dp_rank, dp_size), SFTLoss())["sft/nll"]
    else:
        if a.make_init:
            CheckpointManager(a.make_init).save(engine, 0)
        if a.init:
            CheckpointManager(a.init).load(engine, load_optimizer=False)
        losses, norms = [], []
        for _ in range(a.steps):
            st = engine.train_step(dp_shard(train, dp_rank, dp_size), SFTLoss())
            losses.append(st.metrics["sft/nll"])
            norms.append(st.grad_norm)
        result = {"losses": losses, "grad_norms": norms,
                  "eval": engine.evaluate(dp_shard(evalb, dp_rank, dp_size), SFTLoss())["sft/nll"]}
        if a.save:
            CheckpointManager(a.save).save(engine, a.steps)
    if a.logprobs_from:
        result["logprobs"] = frozen_logprobs(get_preset("tiny", **overrides), parse_layout(a.layout), a.logprobs_from, train)
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(a.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
    from r1mega.platform.distributed import destroy

    destroy(barrier=True)  # exiting with live gloo groups can abort
