"""Rows that may be split over ranks (context parallelism): what a loss needs to know of the WHOLE row.

Under context parallelism each rank holds a slice of every row's positions (the training engine's
:mod:`r1mega.train.context_parallel`); a loss still sums its per-token terms over the positions it holds (the
engine adds the ranks' losses), but anything per sequence must be computed over the whole row. The engine
injects three entries into such a microbatch; a batch without them holds whole rows:

* ``seq_num_tokens`` ``[B]``: each row's loss tokens over all its slices (the ``n_i`` of the normalisers);
* ``seq_sum``: a callable ``[B] -> [B]`` summing a per-row value over the ranks holding the row's slices (an
  all-reduce, differentiable: its backward all-reduces the gradients, because the ranks' losses are added);
* ``seq_owner`` (bool): whether this rank reports the per-row metrics (one rank of the row's ranks does, so
  that a row is counted once when the metrics are summed over the ranks).

:func:`row_view` bundles them for a microbatch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor


class Rows(NamedTuple):
    sum: Callable[[Tensor], Tensor]  # [B] per-slice values -> [B] whole-row totals
    tokens: Tensor                   # [B] loss tokens of the whole row
    has_tokens: Tensor               # [B] bool: the row has a loss token (on any rank)
    reported: Tensor                 # [B] bool: has_tokens, on the rank that reports per-row metrics (else False)
    share: float                     # 1.0 on the reporting rank, 0.0 elsewhere: weight of a per-row loss term


def _identity(x: Tensor) -> Tensor:
    return x


def row_view(loss_mask: Tensor, batch: Optional[dict] = None) -> Rows:
    """The whole-row view of a microbatch with ``loss_mask`` ``[B, T]`` (see the module doc)."""
    batch = batch or {}
    mask = loss_mask.bool()
    n = batch.get("seq_num_tokens")
    tokens = mask.sum(-1) if n is None else torch.as_tensor(n, device=mask.device).reshape(-1)
    if tokens.numel() != mask.size(0):
        raise ValueError(f"seq_num_tokens has {tokens.numel()} rows, the loss mask {mask.size(0)}")
    has = tokens > 0
    owner = bool(batch.get("seq_owner", True))
    reported = has if owner else torch.zeros_like(has)
    return Rows(batch.get("seq_sum") or _identity, tokens, has, reported, 1.0 if owner else 0.0)
