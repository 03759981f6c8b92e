"""Bradley-Terry reward-model loss with the same engine interface as :class:`GRPOLoss`.

``BradleyTerryLoss(center_coef)(scores, batch) -> (loss, metrics)``.

* ``scores`` ``[B, S]``: the reward model's scalar score at every position (the engine's per-token
  quantity; for the reward model it is ``logit_good - logit_bad``, see
  :class:`r1mega.rewards.model_reward.RewardModelEngine`).
* ``batch['loss_mask']`` ``[B, S]``: exactly one 1 per real row, at the position whose score is the
  sequence's reward (the EOS after the response); padded rows are all 0.
* Rows come in pairs: row ``2i`` is the chosen response, row ``2i+1`` the rejected one, for the
  same prompt (a microbatch never splits a pair: micro-batch sizes are even; ``pairs_rows`` tells
  the training engine to keep the rows in their order).
* ``global_num_seqs`` (0-d, injected by the engine): the rows of the whole global batch, so
  ``global_num_seqs / 2`` pairs normalise the loss and microbatch losses sum to the global mean.

Under context parallelism (:mod:`.rows`) a row's score position is on one of the ranks holding its slices:
the rewards are summed over the ranks (differentiably), and the per-pair loss and metrics count on one rank.

Per pair, with ``d = r_chosen - r_rejected``::

    loss_pair = -log sigmoid(d) + center_coef * (r_chosen + r_rejected)^2

(``-log sigmoid(d) = softplus(-d)``, computed stably). The centring term (as TRL's
``center_rewards_coefficient``) pins the otherwise free offset of Bradley-Terry rewards near 0, so
``sigmoid(r)`` reads as "probability of beating an average response".

Metrics: ``rm/loss`` (the BT term), ``rm/accuracy`` (fraction of pairs with ``d > 0``; ties count
as wrong), ``rm/margin`` (mean ``d``), ``rm/chosen``, ``rm/rejected`` (mean rewards).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import sum_count
from .rows import Rows, row_view


def pair_rewards(scores: Tensor, mask: Tensor, rows: Optional[Rows] = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(r_chosen [P], r_rejected [P], valid [P])`` from per-position scores and the one-hot mask (``rows``: the
    whole rows when the microbatch holds slices of them)."""
    if scores.shape != mask.shape:
        raise ValueError(f"BradleyTerryLoss: scores {tuple(scores.shape)} and loss_mask {tuple(mask.shape)} differ")
    if scores.size(0) % 2:
        raise ValueError(f"BradleyTerryLoss: {scores.size(0)} rows; chosen/rejected pairs need an even number")
    m = mask.bool()
    rows = rows if rows is not None else row_view(m)
    r = rows.sum(torch.where(m, scores.float(), torch.zeros((), dtype=torch.float32, device=scores.device)).sum(-1))
    has = rows.has_tokens
    return r[0::2], r[1::2], has[0::2] & has[1::2]


def bradley_terry(r_chosen: Tensor, r_rejected: Tensor, center_coef: float = 0.0) -> Tensor:
    """Per-pair loss ``softplus(-(rc - rr)) + center_coef * (rc + rr)^2``."""
    loss = F.softplus(-(r_chosen - r_rejected))
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss


class BradleyTerryLoss:
    pairs_rows = True  # see r1mega.train.engine: rows 2i and 2i+1 must stay together, in order

    def __init__(self, center_coef: float = 0.0):
        if center_coef < 0:
            raise ValueError(f"center_coef={center_coef}, expected >= 0")
        self.center_coef = float(center_coef)

    def __call__(self, scores: Tensor, batch: dict) -> tuple[Tensor, dict]:
        rows = row_view(batch["loss_mask"], batch)
        rc, rr, valid = pair_rewards(scores, batch["loss_mask"], rows)
        per_pair = bradley_terry(rc, rr, self.center_coef)
        per_pair = torch.where(valid, per_pair, torch.zeros_like(per_pair))
        n = batch.get("global_num_seqs")
        denom = (torch.as_tensor(n, dtype=per_pair.dtype, device=per_pair.device) / 2) if n is not None else valid.sum()
        loss = per_pair.sum() / denom.clamp(min=1.0) * rows.share  # every rank of a row computes it: count it once
        with torch.no_grad():
            d = (rc - rr).detach()
            valid = valid & rows.reported[0::2]
            v = valid.float()
            k = valid.sum()
            metrics = {
                "rm/loss": sum_count((F.softplus(-d) * v).sum(), k),
                "rm/accuracy": sum_count(((d > 0).float() * v).sum(), k),
                "rm/margin": sum_count((d * v).sum(), k),
                "rm/chosen": sum_count((rc.detach() * v).sum(), k),
                "rm/rejected": sum_count((rr.detach() * v).sum(), k),
            }
        return loss, metrics


__all__ = ["BradleyTerryLoss", "bradley_terry", "pair_rewards"]
