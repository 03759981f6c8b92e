"""GSPO: sequence-level importance ratios (Group Sequence Policy Optimization, Zheng et al. 2025).

For sequence ``i`` with ``n_i`` loss tokens, the length-normalised ratio against the behaviour policy is the
geometric mean of its token ratios::

    s_i = exp( (1/n_i) * sum_t (logp_t - old_logp_t) )

:func:`importance_ratios` returns a ``[B, T]`` ratio for each ``grpo.importance_level``; the clipped surrogate
(:func:`.policy_loss.surrogate_from_ratio`) then works on it unchanged:

* ``'token'``: ``exp(logp_t - old_logp_t)`` (PPO/GRPO).
* ``'sequence'`` (GSPO): ``s_i`` written on every token of sequence ``i``; the clip therefore acts on the
  sequence (all its tokens are clipped or none). Under ``seq-mean-token-mean`` the loss is GSPO's
  ``(1/N_seqs) * sum_i max(-A_i s_i, -A_i clip(s_i))`` and ``d loss / d logp_t = -A_i s_i / (n_i N_seqs)`` where
  unclipped. Needs one advantage per sequence.
* ``'sequence_token'`` (GSPO-token): ``s_it = sg[s_i] * exp(logp_t - sg[logp_t])``: the value is ``s_i``, the
  gradient of token ``t`` flows through its own log-prob only, so token-level advantages ``A_it`` are possible.
  With ``A_it = A_i`` it equals ``'sequence'`` in value and gradient.

The sequence mean needs the whole sequence. The engine never splits a row over microbatches; under context
parallelism it splits rows over the CP ranks, and ``rows`` (:mod:`.rows`) then sums each row's log-ratios over
its slices (an all-reduce) and divides by the whole row's token count before the ``exp``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .policy_loss import LOG_RATIO_CLAMP, importance_ratio
from .rows import Rows, row_view

IMPORTANCE_LEVELS = ("token", "sequence", "sequence_token")


def sequence_mean_log_ratio(logprobs: Tensor, other_logprobs: Tensor, loss_mask: Tensor,
                            rows: Optional[Rows] = None) -> Tensor:
    """``[B]``: ``(1/n_i) sum_t m (logp - other)`` over each row's loss tokens (0 for a row without any); the
    gradient flows through ``logprobs`` where it requires one. NaN/inf at masked positions never leak in.
    ``rows``: the whole rows of a microbatch that holds slices of them (default: the rows are whole)."""
    m = loss_mask.bool()
    rows = rows if rows is not None else row_view(m)
    diff = torch.where(m, logprobs - other_logprobs, torch.zeros((), dtype=logprobs.dtype, device=logprobs.device))
    return rows.sum(diff.sum(-1)) / rows.tokens.clamp(min=1).to(logprobs.dtype)


def importance_ratios(logprobs: Tensor, old_logprobs: Tensor, loss_mask: Tensor, level: str = "token",
                      rows: Optional[Rows] = None) -> Tensor:
    """``[B, T]`` importance ratio of ``level`` (see the module doc); ``old_logprobs`` is a constant. Log-ratios
    are clamped to ``[-20, 20]`` against overflow, as at the token level. ``rows``: see
    :func:`sequence_mean_log_ratio`."""
    if level == "token":
        return importance_ratio(logprobs, old_logprobs)
    if level not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance level {level!r}, expected one of {IMPORTANCE_LEVELS}")
    log_s = sequence_mean_log_ratio(logprobs, old_logprobs.detach(), loss_mask, rows).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if level == "sequence":
        return torch.exp(log_s)[:, None].expand_as(logprobs)
    return torch.exp(log_s.detach()[:, None] + logprobs - logprobs.detach())
