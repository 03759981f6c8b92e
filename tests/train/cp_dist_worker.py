"""Context parallelism with a real CP group: 2 gloo processes as Megatron's CP=2 (torchrun).

Each rank computes its share of the GRPO (GSPO, sequence MIS/TIS, every aggregation mode), SFT and
Bradley-Terry losses from its chunks, with the all-reduce of r1mega.train.context_parallel over Megatron's CP
group; the shares' sum, the gathered gradients and the metrics reduced by the engine's reduce_metric_sums (DP x
CP) are compared with the unsplit computation, on every rank. Also: the log-prob gather and the broadcast of CP
rank 0's rows (of another shape on rank 1), and the engine's loss scale through Megatron's schedule and DDP
(a toy per-position model, 2 microbatches). Writes the largest differences to --out (rank 0).

    torchrun --nproc-per-node 2 cp_dist_worker.py --out OUT.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from test_context_parallel import GRPO_CASES, random_batch  # noqa: E402

from r1mega.algorithms import BradleyTerryLoss, GRPOLoss, SFTLoss, accumulate_metrics, finalize_metrics  # noqa: E402
from r1mega.config.grpo import GRPOConfig  # noqa: E402
from r1mega.train import context_parallel as cp  # noqa: E402


def compare(loss_fn, logp, batch, group, rank) -> dict:
    from r1mega.train.metrics import reduce_metric_sums

    x = logp.clone().requires_grad_(True)
    loss, metrics = loss_fn(x, batch)
    loss.backward()
    ref_metrics = finalize_metrics(accumulate_metrics({}, metrics))

    mb = cp.split_microbatch(batch, 2, rank, cp.seq_sum_fn(group))
    xr = logp.index_select(1, cp.chunk_positions(logp.size(1), 2, rank)).clone().requires_grad_(True)
    share, m = loss_fn(xr, mb)
    share.backward()
    total = share.detach().clone()
    dist.all_reduce(total, group=group)
    grad = cp.gather(xr.grad, group, 2, dim=1)
    got = finalize_metrics(reduce_metric_sums([m], src_last_stage=False))
    assert got.keys() == ref_metrics.keys(), (sorted(got), sorted(ref_metrics))
    metric_err = max((abs(got[k] - v) / max(1.0, abs(v)) for k, v in ref_metrics.items() if v == v), default=0.0)
    nan_same = all((got[k] != got[k]) == (v != v) for k, v in ref_metrics.items())
    return {"loss": abs(float(total) - float(loss.detach())), "grad": float((grad - x.grad).abs().max()),
            "metrics": metric_err, "nan_same": nan_same, "share": float(share.detach())}


class _PerPosition(torch.nn.Module):
    """A toy "model" without attention: a log-prob per position from its features, ``-softplus(x . w)``."""

    def __init__(self, config, d):
        from megatron.core.enums import ModelType

        super().__init__()
        self.config, self.model_type = config, ModelType.encoder_or_decoder
        self.w = torch.nn.Parameter(torch.linspace(-0.5, 0.5, d))

    def set_input_tensor(self, tensor):  # (the schedule's pipeline hook; no pipeline here)
        pass

    def forward(self, x):
        return -torch.nn.functional.softplus(x @ self.w)


def megatron_gradient(group, rank) -> dict:
    """The engine's loss scale through Megatron's own schedule and DDP at CP=2 (2 microbatches): the all-reduced
    gradient must be that of the unsplit GSPO loss (it is half of it with a scale divided by CP)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer import TransformerConfig

    from r1mega.algorithms.aggregation import local_normalisers
    from r1mega.train.batching import microbatches

    config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1, use_cpu_initialization=True)
    config.finalize_model_grads_func = finalize_model_grads
    d = 5
    model = DistributedDataParallel(config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), _PerPosition(config, d))
    g = torch.Generator().manual_seed(11)
    _, batch = random_batch(4)
    batch = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
    batch["x"] = torch.randn(6, 16, d, generator=g)
    loss_fn = GRPOLoss(GRPOConfig(importance_level="sequence", kl_coef=0.05, clip_eps_low=0.1, clip_eps_high=0.15))

    ref = _PerPosition(config, d)
    ref.load_state_dict(model.module.state_dict())
    loss_fn(ref(batch["x"]), batch)[0].backward()

    n_micro = 2
    mbs = [cp.split_microbatch(mb, 2, rank, cp.seq_sum_fn(group)) for mb in microbatches(batch, 3)]

    def forward_step(data_iterator, m):
        mb = next(data_iterator)
        return m(mb["x"]), lambda out: (loss_fn(out, mb)[0] * cp.loss_scale(n_micro, 1), {})

    model.zero_grad_buffer()
    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(mbs), model=model,
                                num_microbatches=n_micro, seq_length=16, micro_batch_size=3, forward_only=False)
    got = model.module.w.main_grad
    return {"ddp_grad_err": float((got - ref.w.grad).abs().max()), "ddp_grad_norm": float(ref.w.grad.norm())}


def engine_wiring(rank, full, local, mine, rows0) -> bool:
    """The engine's CP helpers on Megatron's groups: its split of a microbatch is this rank's, with the whole rows'
    counts and a working all-reduce; its gather and its same_rows are the module's."""
    from r1mega.config.parallel import ParallelConfig
    from r1mega.train.engine import TrainEngine

    engine = object.__new__(TrainEngine)  # (no model: the helpers read the layout and Megatron's groups only)
    engine.parallel = ParallelConfig(context_parallel=2)
    _, batch = random_batch(1)
    mb = engine._cp_split(batch)
    ok = torch.equal(mb["old_logprobs"].nan_to_num(), cp.split_batch(batch, 2, rank)["old_logprobs"].nan_to_num())
    ok &= torch.equal(mb["seq_num_tokens"], batch["loss_mask"].bool().sum(-1)) and mb["seq_owner"] == (rank == 0)
    ok &= torch.equal(mb["seq_sum"](torch.tensor([1.0, float(rank)])), torch.tensor([2.0, 1.0]))
    ok &= torch.equal(engine._cp_gather(local, 2), full)
    got = engine.same_rows(mine)
    return bool(ok and all(torch.equal(got[k], rows0[k]) for k in ("tokens", "loss_mask", "advantages")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from megatron.core import parallel_state as ps

    import r1mega.platform as platform

    platform.init()
    dist.init_process_group("gloo")
    ps.initialize_model_parallel(context_parallel_size=2, create_gloo_process_groups=True)
    rank = ps.get_context_parallel_rank()
    group = ps.get_context_parallel_group()
    assert ps.get_context_parallel_world_size() == 2 and ps.get_data_parallel_world_size() == 1
    out = {"cases": {}}
    for mode in ("seq-mean-token-mean", "token-mean", "seq-sum-token-norm"):
        for i, case in enumerate(GRPO_CASES):
            kw = {"kl_coef": 0.0, "clip_eps_low": 0.1, "clip_eps_high": 0.15, **case}
            logp, batch = random_batch(i)
            out["cases"][f"grpo/{mode}/{i}"] = compare(GRPOLoss(GRPOConfig(loss_agg_mode=mode, **kw), max_new_tokens=12),
                                                       logp, batch, group, rank)
    logp, batch = random_batch(3)
    out["cases"]["sft"] = compare(SFTLoss("seq-mean-token-mean"), logp, batch, group, rank)
    scores = torch.randn(4, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mask = torch.zeros(4, 8)
    for row, p in enumerate([7, 2, 4, 0]):
        mask[row, p] = 1
    out["cases"]["bt"] = compare(BradleyTerryLoss(0.01), scores, {"tokens": torch.zeros(4, 8, dtype=torch.long),
                                 "loss_mask": mask, "global_num_seqs": torch.tensor(4.0)}, group, rank)

    # the engine's log-prob gather ([2, b, s] outputs, positions on dim 2) and broadcast of rank 0's rows
    full = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(1))
    local = full.index_select(2, cp.chunk_positions(12, 2, rank))
    out["gather_exact"] = bool(torch.equal(cp.gather(local, group, 2, dim=2), full))
    rows0 = {"tokens": torch.arange(12).reshape(2, 6), "loss_mask": torch.ones(2, 6, dtype=torch.bool),
             "advantages": torch.tensor([0.5, -0.5]), "note": "kept"}
    mine = rows0 if rank == 0 else {"tokens": torch.zeros(2, 9, dtype=torch.long),
                                    "loss_mask": torch.zeros(2, 9, dtype=torch.bool),
                                    "advantages": torch.zeros(2), "ref_logprobs": torch.zeros(2, 9), "note": "kept"}
    got = cp.broadcast_rows(mine, group, dist.get_global_rank(group, 0))
    out["broadcast_exact"] = (all(torch.equal(got[k], rows0[k]) for k in ("tokens", "loss_mask", "advantages"))
                              and sorted(got) == sorted(rows0))  # (rank 1's own extra tensor is gone)
    out.update(megatron_gradient(group, rank))
    out["engine_wiring"] = engine_wiring(rank, full, local, mine, rows0)
    out["rank"] = rank
    results = [None, None]
    dist.all_gather_object(results, out)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results))
    ps.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
