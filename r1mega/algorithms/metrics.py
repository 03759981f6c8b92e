"""Metric convention: exactly combinable across microbatches and data-parallel ranks.

Every metric is ``name -> 1-D float32 tensor``; the name's suffix says how it combines:

* name ending in ``/max`` or ``_max``: shape ``[1]`` = ``(max,)``, combined with MAX; ``-inf``
  when the microbatch had no valid element.
* name ending in ``/min`` or ``_min``: shape ``[1]`` = ``(min,)``, combined with MIN; ``+inf`` when empty.
* anything else: shape ``[2]`` = ``(sum, count)``, combined with SUM; the value is ``sum/count``.
  Fractions are ``(number of hits, number of candidates)``. A standard deviation is carried as a
  pair ``X/mean`` and ``X/sq_mean`` (mean of squares); :func:`finalize_metrics` emits ``X/std``
  (population std) from them. A SUM metric of shape ``[1]`` is a bare total (e.g. the engine's
  summed ``loss``), reported as is.

Engine recipe: ``acc = {}``; per microbatch ``accumulate_metrics(acc, metrics)``; at the end of
the step ``all_reduce_metrics(acc, group)`` (DP group) and log ``finalize_metrics(acc)``.
Metrics are computed without gradient and are detached.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def reduce_op(name: str) -> str:
    """'max', 'min' or 'sum', from the metric name's suffix."""
    if name.endswith(("/max", "_max")):
        return "max"
    if name.endswith(("/min", "_min")):
        return "min"
    return "sum"


def sum_count(total, count) -> Tensor:
    """A SUM metric ``(sum, count)`` as a float32 tensor on the device of ``total``."""
    device = total.device if isinstance(total, Tensor) else None
    return torch.stack([torch.as_tensor(total, dtype=torch.float32, device=device).detach().reshape(()),
                        torch.as_tensor(count, dtype=torch.float32, device=device).detach().reshape(())])


def masked_mean_metric(values: Tensor, mask: Tensor) -> Tensor:
    """``(sum of values where mask, number of such elements)``; NaN at masked-out places is ignored."""
    m = mask.bool()
    v = values.detach().float()
    return sum_count(torch.where(m, v, torch.zeros_like(v)).sum(), m.sum())


def masked_max_metric(values: Tensor, mask: Tensor) -> Tensor:
    """``(max of values where mask,)``; ``-inf`` when nothing is selected."""
    v = values.detach().float().reshape(-1)
    sel = torch.where(mask.bool().reshape(-1), v, torch.full_like(v, -float("inf")))
    return torch.cat([sel, sel.new_full((1,), -float("inf"))]).amax().reshape(1)


def masked_min_metric(values: Tensor, mask: Tensor) -> Tensor:
    """``(min of values where mask,)``; ``+inf`` when nothing is selected."""
    v = values.detach().float().reshape(-1)
    sel = torch.where(mask.bool().reshape(-1), v, torch.full_like(v, float("inf")))
    return torch.cat([sel, sel.new_full((1,), float("inf"))]).amin().reshape(1)


def mismatch_metrics(trainer_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor,
                     threshold: Optional[float] = None) -> dict[str, Tensor]:
    """Trainer-vs-rollout log-prob mismatch on the loss tokens (inputs: the trainer's log-probs
    under the rollout weights, i.e. ``old_logprobs``, and the rollout engine's log-probs).

    * ``mismatch/abs_diff_mean``, ``mismatch/abs_diff_max``: ``|logp_trainer - logp_rollout|``
    * ``mismatch/k3``: per-token ``w - log w - 1`` with ``w = p_trainer / p_rollout`` (an estimate
      of KL(rollout || trainer) on the rollout's samples; 0 when the engines agree)
    * ``mismatch/over_threshold_frac`` (with ``threshold``): share of tokens with ``|diff| > threshold``
    """
    m = mask.bool()
    log_w = torch.where(m, trainer_logprobs.detach().float() - rollout_logprobs.detach().float(),
                        torch.zeros((), device=mask.device))
    diff = log_w.abs()
    lw = log_w.clamp(-20.0, 20.0)
    out = {
        "mismatch/abs_diff_mean": masked_mean_metric(diff, m),
        "mismatch/abs_diff_max": masked_max_metric(diff, m),
        "mismatch/k3": masked_mean_metric(torch.exp(lw) - lw - 1.0, m),
    }
    if threshold is not None:
        out["mismatch/over_threshold_frac"] = masked_mean_metric((diff > threshold).float(), m)
    return out


def accumulate_metrics(acc: dict[str, Tensor], new: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold one microbatch's metrics into ``acc`` (in place; also returned)."""
    for k, v in new.items():
        v = v.detach()
        if k not in acc:
            acc[k] = v.clone()
            continue
        op = reduce_op(k)
        acc[k] = acc[k] + v if op == "sum" else (torch.maximum(acc[k], v) if op == "max" else torch.minimum(acc[k], v))
    return acc


def all_reduce_metrics(metrics: dict[str, Tensor], group=None) -> dict[str, Tensor]:
    """All-reduce every metric across ``group`` with its op (three collectives, sorted names so
    every rank packs the same layout). All ranks must hold the same metric names."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return metrics
    by_op: dict[str, list[str]] = {"sum": [], "max": [], "min": []}
    for k in sorted(metrics):
        by_op[reduce_op(k)].append(k)
    dist_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    out = dict(metrics)
    for op, names in by_op.items():
        if not names:
            continue
        flat = torch.cat([metrics[k].reshape(-1) for k in names])
        dist.all_reduce(flat, op=dist_op[op], group=group)
        i = 0
        for k in names:
            n = metrics[k].numel()
            out[k] = flat[i:i + n].view_as(metrics[k])
            i += n
    return out


def finalize_metrics(metrics: dict[str, Tensor]) -> dict[str, float]:
    """Plain numbers for logging: ``sum/count`` (NaN when count is 0), max/min values (NaN when
    empty), and ``X/std`` for every ``X/mean`` + ``X/sq_mean`` pair (the sq_mean is not emitted)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        op = reduce_op(k)
        if op == "sum" and v.numel() == 1:  # a bare total (e.g. the engine's summed loss)
            out[k] = float(v.reshape(-1)[0])
        elif op == "sum":
            s, c = float(v[0]), float(v[1])
            out[k] = s / c if c > 0 else float("nan")
        else:
            x = float(v.reshape(-1)[0])
            out[k] = x if abs(x) != float("inf") else float("nan")
    for k in [k for k in out if k.endswith("/sq_mean")]:
        base = k[: -len("/sq_mean")]
        sq = out.pop(k)
        if f"{base}/mean" in out:
            mean = out[f"{base}/mean"]
            out[f"{base}/std"] = max(sq - mean * mean, 0.0) ** 0.5
    return out
