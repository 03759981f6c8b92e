"""Step metrics across microbatches, data-parallel ranks and pipeline stages.

The per-microbatch convention (suffix decides SUM of (sum, count) pairs, MAX or MIN) is the one of
:mod:`r1mega.algorithms.metrics`; this module adds the distributed plumbing: combine on the last
pipeline stage over the DP group (with the CP ranks: each holds its chunks of the same rows), then broadcast
the finished numbers to every stage.
"""
from __future__ import annotations

import torch.distributed as dist

from r1mega.algorithms.metrics import accumulate_metrics, all_reduce_metrics, finalize_metrics


def reduce_metric_sums(stores: list[dict], src_last_stage: bool = True) -> dict:
    """The step's metrics before :func:`finalize_metrics` (``(sum, count)`` pairs, max, min: tensors), combined
    over this rank's microbatches and the DP x CP group; further steps fold in exactly with ``accumulate_metrics``.
    ``stores``: the metric dicts of this rank's microbatches (empty off the last stage)."""
    from megatron.core import parallel_state as ps

    acc: dict = {}
    if stores:
        for m in stores:
            accumulate_metrics(acc, {k: v.detach().float().reshape(-1) for k, v in m.items() if not k.startswith("_")})
        if ps.get_data_parallel_world_size(with_context_parallel=True) > 1:  # (group=None would mean the whole world)
            acc = all_reduce_metrics(acc, ps.get_data_parallel_group(with_context_parallel=True))
    if src_last_stage and ps.get_pipeline_model_parallel_world_size() > 1:
        box = [acc]
        dist.broadcast_object_list(box, src=ps.get_pipeline_model_parallel_last_rank(),
                                   group=ps.get_pipeline_model_parallel_group())
        acc = box[0]
    return acc


def reduce_metrics(stores: list[dict], src_last_stage: bool = True) -> dict[str, float]:
    """``stores``: the metric dicts of this rank's microbatches (empty off the last stage)."""
    return finalize_metrics(reduce_metric_sums(stores, src_last_stage))
