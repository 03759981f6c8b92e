"""Per-token PPO/GRPO policy-gradient terms: importance ratio, clipped surrogate, dual-clip,
truncated importance sampling against the rollout engine.

Everything here is per token and unmasked; masking and aggregation are done by
:mod:`r1mega.algorithms.aggregation` and :class:`r1mega.algorithms.grpo_loss.GRPOLoss`.

Surrogate (a LOSS, to be minimised), with ``ratio = exp(logp - old_logp)`` and advantage A::

    pg = max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high))
    dual-clip (c > 1, only where A < 0):  pg = min(pg, c * |A|)

Clip flags (the tokens whose gradient the clip zeroes):

* ``clip_high``: A > 0 and ratio > 1 + eps_high
* ``clip_low``:  A < 0 and ratio < 1 - eps_low
* ``clip_dual``: A < 0 and ratio > c
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

LOG_RATIO_CLAMP = 20.0


class SurrogateOut(NamedTuple):
    loss: Tensor        # per-token pg loss [B, T]
    ratio: Tensor       # exp(logp - old_logp) [B, T] (attached to the graph)
    clip_low: Tensor    # bool [B, T]
    clip_high: Tensor   # bool [B, T]
    clip_dual: Tensor   # bool [B, T]


def importance_ratio(logprobs: Tensor, old_logprobs: Tensor, clamp: Optional[float] = LOG_RATIO_CLAMP) -> Tensor:
    """``exp(logp - old_logp)`` against the behaviour policy; ``old_logprobs`` is a constant.
    The log-ratio is clamped to ``[-clamp, clamp]`` (default 20) against overflow."""
    log_ratio = logprobs - old_logprobs.detach()
    if clamp is not None:
        log_ratio = log_ratio.clamp(-clamp, clamp)
    return torch.exp(log_ratio)


def clipped_surrogate(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, eps_low: float = 0.2,
                      eps_high: float = 0.2, dual_clip_c: Optional[float] = None) -> SurrogateOut:
    """Per-token clipped surrogate loss (see the module doc). ``advantages`` broadcasts against
    ``logprobs`` (pass ``[B, 1]`` for sequence-level advantages, ``[B, T]`` for token-level)."""
    return surrogate_from_ratio(importance_ratio(logprobs, old_logprobs), advantages, eps_low, eps_high, dual_clip_c)


def surrogate_from_ratio(ratio: Tensor, advantages: Tensor, eps_low: float = 0.2, eps_high: float = 0.2,
                         dual_clip_c: Optional[float] = None) -> SurrogateOut:
    """The clipped surrogate of any importance ratio ``[B, T]`` (per token, or GSPO's sequence ratio written
    on every token of its sequence, :mod:`.gspo`); the gradient flows through ``ratio``."""
    adv = advantages.detach().to(ratio.dtype)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    r = ratio.detach()
    clip_high = (adv > 0) & (r > 1.0 + eps_high)
    clip_low = (adv < 0) & (r < 1.0 - eps_low)
    if dual_clip_c is not None:
        if dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c={dual_clip_c}, expected > 1")
        cap = -adv * dual_clip_c  # = c * |A| where A < 0
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
        clip_dual = (adv < 0) & (r > dual_clip_c)
    else:
        clip_dual = torch.zeros_like(clip_high)
    return SurrogateOut(loss, ratio, clip_low, clip_high, clip_dual)


def truncated_is_weight(old_logprobs: Tensor, rollout_logprobs: Tensor, cap: float = 2.0) -> Tensor:
    """Truncated importance weight for trainer/rollout mismatch, detached:
    ``min(exp(old_logp_trainer - rollout_logp), cap)`` (log-difference clamped at 20)."""
    log_w = (old_logprobs.detach() - rollout_logprobs.detach()).clamp(max=LOG_RATIO_CLAMP)
    return torch.exp(log_w).clamp(max=cap)
