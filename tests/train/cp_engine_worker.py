"""The training engine's context-parallel path end to end on CPU, with a stand-in for Transformer Engine's CP
attention (torchrun --nproc-per-node 2, gloo).

r1mega refuses CP without TE, because Megatron's local attention attends within a rank's own chunks only. This
worker (test code, not r1mega) lifts that refusal and gives the local attention what TE's ring attention
computes: each rank's queries against the keys and values of the whole sequence (all-gathered over the CP
group, differentiable), causally masked by the global positions of its chunks. With it the engine runs at
CP=2 and at DP=2 (the same global batch, the same weights): frozen log-probs of the whole batch, then two GRPO
steps (GSPO, clipped, with a sequence mismatch mask that drops some rows): loss metrics and gradient norms. A MoE
model also records its routing in the frozen pass (R2) and replays it in the steps. Rank 0 writes both layouts' numbers to --out.

    torchrun --nproc-per-node 2 cp_engine_worker.py --preset tiny-dense --out OUT.json
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json

import torch
import torch.distributed as dist


CALLS = {"split_attention": 0}  # forwards of the stand-in with a split sequence (0 would mean no CP at all)


def stand_in_cp_attention() -> None:
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from r1mega.train import context_parallel as cp

    class _GatherSeq(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, group, size, rank):
            parts = [torch.empty_like(x) for _ in range(size)]
            dist.all_gather(parts, x.contiguous(), group=group)
            ctx.group, ctx.pos = group, cp.chunk_positions(x.size(0) * size, size, rank)
            return cp.unsplit(parts, [cp.chunk_positions(x.size(0) * size, size, r) for r in range(size)], dim=0)

        @staticmethod
        def backward(ctx, grad):  # every rank's loss reads every rank's keys: sum the gradients, keep mine
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, group=ctx.group)
            return grad.index_select(0, ctx.pos), None, None, None

    init, forward = DotProductAttention.__init__, DotProductAttention.forward

    def patched_init(self, config, *args, **kw):
        local = copy.copy(config)
        local.context_parallel_size = 1  # (the local attention asserts CP == 1)
        init(self, local, *args, **kw)

    def patched_forward(self, query, key, value, attention_mask, *args, **kw):
        size = ps.get_context_parallel_world_size()
        if size == 1:
            return forward(self, query, key, value, attention_mask, *args, **kw)
        CALLS["split_attention"] += 1
        group, rank = ps.get_context_parallel_group(), ps.get_context_parallel_rank()
        key, value = (_GatherSeq.apply(t, group, size, rank) for t in (key, value))
        q_pos = cp.chunk_positions(key.size(0), size, rank)
        masked = torch.arange(key.size(0))[None, :] > q_pos[:, None]  # True: a later position, not attended
        return forward(self, query, key, value, masked[None, None], *args, **kw)

    DotProductAttention.__init__, DotProductAttention.forward = patched_init, patched_forward


def grpo_batch(B=8, S=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([40, 9, 23, 3, 31, 17, 12, 40])[:B]
    prompt = torch.tensor([6, 4, 5, 2, 8, 3, 4, 7])[:B]
    pos = torch.arange(S)[None]
    tokens = torch.randint(1, 500, (B, S), generator=g) * (pos < lengths[:, None])
    labels = torch.roll(tokens, -1, 1) * (pos < (lengths[:, None] - 1))
    mask = ((pos >= prompt[:, None] - 1) & (pos < lengths[:, None] - 1)).float()
    return {"tokens": tokens, "labels": labels, "loss_mask": mask, "lengths": lengths,
            "advantages": torch.randn(B, generator=g)}


def run(preset: str, layout: dict, weights, batch) -> dict:
    from r1mega.algorithms import GRPOLoss
    from r1mega.config.grpo import GRPOConfig
    from r1mega.config.optimizer import OptimizerConfig
    from r1mega.config.parallel import ParallelConfig
    from r1mega.model.presets import get_preset
    from r1mega.train.batching import dp_shard
    from r1mega.train.engine import TrainEngine

    oc = OptimizerConfig(lr=1e-4, warmup_steps=0, decay_style="constant", micro_batch_size=2, global_batch_size=8,
                         clip_grad=100.0)
    model = get_preset(preset)
    engine = TrainEngine(model, ParallelConfig(distributed_optimizer=False, **layout), oc, seed=1234,
                         total_steps=10, mtp=False, router_replay=model.is_moe)
    module = engine.chunks[0].module
    if weights is None:
        weights = {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}
    else:
        module.load_state_dict(weights, strict=False)
    CALLS["split_attention"] = 0
    if model.is_moe:  # R2: the frozen pass records each token's experts (gathered back to whole rows under CP)
        old, routing = engine.logprobs(batch, record_routing=True)
        batch = {**batch, "routed_experts": routing}  # the steps below replay it (split with the rows under CP)
        out = {"logprobs": old.tolist(), "routing": routing.tolist()}
    else:
        out = {"logprobs": engine.logprobs(batch).tolist()}
    old = torch.tensor(out["logprobs"])
    g = torch.Generator().manual_seed(3)
    behaviour = old + 0.2 * torch.randn(old.shape, generator=g)
    full = {**batch, "old_logprobs": behaviour, "rollout_logprobs": behaviour + 0.05 * torch.randn(old.shape, generator=g)}
    r, n = engine.dp_rank_size()
    cfg = GRPOConfig(importance_level="sequence", kl_coef=0.0, clip_eps_low=0.05, clip_eps_high=0.05,
                     mismatch_seq_low=0.99, mismatch_seq_high=1.01)
    loss = GRPOLoss(cfg)
    steps = [engine.train_step(dp_shard(full, r, n), loss) for _ in range(2)]
    out["metrics"] = [s.metrics for s in steps]
    out["grad_norms"] = [s.grad_norm for s in steps]
    out["split_attention_calls"] = CALLS["split_attention"]
    return out, weights


def run_sft_mtp(preset: str, layout: dict, weights, batch):
    """One SFT step of the model with its MTP layers (Megatron's GPTModel computes the per-token CE with the
    labels and adds the MTP loss, rolling the labels across the CP ranks itself)."""
    from r1mega.algorithms import SFTLoss
    from r1mega.config.optimizer import OptimizerConfig
    from r1mega.config.parallel import ParallelConfig
    from r1mega.model.presets import get_preset
    from r1mega.train.batching import dp_shard
    from r1mega.train.engine import TrainEngine

    oc = OptimizerConfig(lr=1e-4, warmup_steps=0, decay_style="constant", micro_batch_size=2, global_batch_size=8,
                         clip_grad=100.0)
    engine = TrainEngine(get_preset(preset), ParallelConfig(distributed_optimizer=False, **layout), oc, seed=1234,
                         total_steps=10)
    assert engine.mtp
    module = engine.chunks[0].module
    if weights is None:
        weights = {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}
    else:
        module.load_state_dict(weights, strict=False)
    r, n = engine.dp_rank_size()
    st = engine.train_step(dp_shard(batch, r, n), SFTLoss("token-mean"))
    return {"metrics": [st.metrics], "grad_norms": [st.grad_norm]}, weights


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny-dense")
    ap.add_argument("--tp", type=int, default=1, help="tensor parallel (with sequence parallelism) under both layouts")
    ap.add_argument("--pp", type=int, default=1, help="pipeline parallel under both layouts")
    ap.add_argument("--sft-mtp", action="store_true", help="an SFT step with the MTP layers instead")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    device = importlib.import_module("r1mega.platform.device")
    device.check_context_parallel = lambda *args, **kw: None  # (test only: the stand-in attention below)
    import r1mega.platform as platform

    platform.init()
    stand_in_cp_attention()
    batch = grpo_batch()
    tp = {"tensor_parallel": a.tp, "sequence_parallel": True} if a.tp > 1 else {}
    tp.update({"pipeline_parallel": a.pp} if a.pp > 1 else {})
    fn = run_sft_mtp if a.sft_mtp else run
    cp_run, weights = fn(a.preset, {"context_parallel": 2, **tp}, None, batch)
    dp_run, _ = fn(a.preset, tp, weights, batch)
    if dist.get_rank() == 0:
        with open(a.out, "w") as f:
            json.dump({"cp2": cp_run, "dp2": dp_run}, f)


if __name__ == "__main__":
    main()
    from r1mega.platform.distributed import destroy

    destroy(barrier=True)
