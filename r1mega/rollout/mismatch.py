"""Rollout-vs-trainer log-prob mismatch: a GRPO run must never silently sample from a different
policy than it trains.

After each rollout the trainer recomputes the log-probs of the sampled tokens (the "old" policy of
the GRPO ratio). If the engine's weights are stale or wrongly mapped (a broken refit, a missing MoE
re-pack, a kernel bug) its log-probs drift from the trainer's. :func:`mismatch_stats` measures,
over the sampled (``loss_mask``) tokens:

* ``mean_abs`` / ``max_abs``: mean and max of ``|logp_rollout - logp_trainer|``;
* ``kl_k3``: the K3 estimator of KL(rollout || trainer) from samples of the rollout policy,
  ``mean(r - 1 - log r)`` with ``r = p_trainer / p_rollout`` (non-negative, unbiased);

and :func:`check_mismatch` raises :class:`PolicyMismatchError` when ``mean_abs`` exceeds
``rollout.mismatch_threshold``. Healthy fp32 engines sit near 1e-6..1e-4; bf16 near 1e-3..1e-2; a
stale or corrupted refit gives 0.1 and more. The comparison needs the trainer's log-probs at the
sampling temperature and no top-k/top-p filtering (those renormalise the rollout distribution):
with filtering the check is skipped unless forced.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


class PolicyMismatchError(RuntimeError):
    """The rollout engine samples from a different policy than the trainer trains."""


def mismatch_stats(rollout_logprobs: torch.Tensor, trainer_logprobs: torch.Tensor, mask: torch.Tensor,
                   group=None) -> dict:
    """Mismatch metrics over the tokens where ``mask`` is 1 (all tensors ``[B,S]``). With ``group``
    (or an initialised default group when ``group`` is "world") the sums are all-reduced, so every
    rank gets the global figures of a data-parallel-sharded batch."""
    m = mask.float()
    d = (rollout_logprobs.float() - trainer_logprobs.float()) * m
    log_r = (trainer_logprobs.float() - rollout_logprobs.float()) * m
    k3 = (torch.exp(log_r) - 1.0 - log_r) * m
    sums = torch.stack([d.abs().sum(), k3.sum(), m.sum()]).double()
    mx = (d.abs().max() if d.numel() else torch.zeros(())).double().reshape(1)
    if group == "world":
        group = dist.group.WORLD if dist.is_initialized() and dist.get_world_size() > 1 else None
    if group is not None:
        dist.all_reduce(sums, group=group)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=group)
    n = max(float(sums[2]), 1.0)
    return {"mean_abs": float(sums[0]) / n, "max_abs": float(mx[0]), "kl_k3": float(sums[1]) / n,
            "tokens": int(sums[2])}


def check_mismatch(stats: dict, threshold: Optional[float], where: str = "rollout") -> dict:
    """Raise :class:`PolicyMismatchError` when ``stats['mean_abs'] > threshold`` (None = no check)."""
    if threshold is not None and stats["tokens"] > 0 and not stats["mean_abs"] <= threshold:
        raise PolicyMismatchError(
            f"{where}: the rollout engine's log-probs differ from the trainer's by {stats['mean_abs']:.4g} nats "
            f"per sampled token on average (max {stats['max_abs']:.4g}, K3 KL {stats['kl_k3']:.4g}, "
            f"{stats['tokens']} tokens), above rollout.mismatch_threshold={threshold}: the engine is not sampling "
            "from the policy being trained (stale or broken weight refit?). Refusing to continue.")
    return stats


def check_rollouts(rollouts, trainer_engine, threshold: Optional[float], temperature: Optional[float] = None,
                   force: bool = False, pad_id: int = 0) -> Optional[dict]:
    """Recompute the sampled tokens' log-probs with ``trainer_engine`` (at the sampling temperature
    unless given; 1 for greedy) and check them against the engine's. Every rank passes the same
    (gathered) rollouts. Returns the stats (None when skipped because top-k/top-p filtering makes
    the two distributions incomparable, unless ``force``)."""
    sampling = rollouts.sampling
    if sampling is not None and sampling.filtered and not force:
        return None
    if temperature is None:
        temperature = 1.0 if sampling is None or sampling.greedy else sampling.temperature
    batch = rollouts.to_batch(pad_id=pad_id)
    trainer_lp = trainer_engine.logprobs(batch, temperature=temperature)
    stats = mismatch_stats(batch["rollout_logprobs"], trainer_lp, batch["loss_mask"])
    return check_mismatch(stats, threshold)
