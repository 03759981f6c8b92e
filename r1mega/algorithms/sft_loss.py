"""Supervised fine-tuning loss with the same engine interface as :class:`GRPOLoss`.

``SFTLoss(mode)(logprobs, batch) -> (loss, metrics)``: per-token loss ``-logprobs`` on the
``loss_mask`` tokens, aggregated with the GLOBAL normalisers of ``batch``
(``global_num_tokens`` for 'token-mean', ``global_num_seqs`` for 'seq-mean-token-mean'), so the
microbatch losses sum to the global-batch loss (see :mod:`r1mega.algorithms.aggregation`).
Used for R1 cold start, stage-3 SFT and the distilled students (plain SFT).

Metrics: ``sft/nll`` (token mean), ``response/length`` (tokens per sequence).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .aggregation import aggregate_loss
from .metrics import masked_mean_metric, sum_count
from .rows import row_view

SFT_AGG_MODES = ("token-mean", "seq-mean-token-mean")


class SFTLoss:
    def __init__(self, loss_agg_mode: str = "token-mean"):
        if loss_agg_mode not in SFT_AGG_MODES:
            raise ValueError(f"loss_agg_mode={loss_agg_mode!r}, expected one of {SFT_AGG_MODES}")
        self.loss_agg_mode = loss_agg_mode

    def __call__(self, logprobs: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        mask = batch["loss_mask"].bool()
        rows = row_view(mask, batch)  # whole rows under context parallelism (see .rows)
        nll = -logprobs
        loss = aggregate_loss(nll, mask, self.loss_agg_mode, global_num_seqs=batch.get("global_num_seqs"),
                              global_num_tokens=batch.get("global_num_tokens"), seq_num_tokens=rows.tokens)
        with torch.no_grad():
            metrics = {
                "sft/nll": masked_mean_metric(nll, mask),
                "response/length": sum_count(mask.sum(), rows.reported.sum()),
            }
        return loss, metrics
