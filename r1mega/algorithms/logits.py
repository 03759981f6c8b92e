"""Pure functions on vocabulary logits: entropy and token log-probs.

Both work on any leading shape (``[..., V]``) and compute in float32 at least; apply the
sampling temperature first (``logits / temperature``) when comparing with rollout log-probs.
"""
from __future__ import annotations

import torch
from torch import Tensor


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last axis, shape ``logits.shape[:-1]``:
    ``H = logsumexp(l) - sum_v softmax(l)_v * l_v``. Entries with ``-inf`` logits (masked
    vocabulary) contribute 0."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    lse = torch.logsumexp(x, dim=-1)
    p = torch.softmax(x, dim=-1)
    pl = torch.where(p > 0, p * x, torch.zeros_like(x))
    return lse - pl.sum(dim=-1)


def logprobs_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """``log softmax(logits)[..., target]``, shape ``targets.shape`` (``logits`` is ``[..., V]``)."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return torch.log_softmax(x, dim=-1).gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
