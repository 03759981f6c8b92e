"""Rollout/trainer mismatch corrections: importance weights and masks from the trainer's behaviour
log-probs (``old``: the trainer under the rollout weights) and the rollout engine's (``rollout``).

With ``d_t = old_t - rollout_t`` on the loss tokens of a sequence ``i`` (``n_i`` of them) and its
geometric-mean ratio ``g_i = exp((1/n_i) sum_t d_t)``:

================================= ====================================================================
token TIS (``tis_level token``)    ``w_t = min(exp(d_t), tis_cap)``
sequence TIS (``tis_level seq``)   ``w_i = min(g_i, tis_cap)`` on every token of ``i``
token mask (IcePop)                token dropped where ``|d_t| > mismatch_token_threshold``
sequence mask (MIS, geometric)     sequence dropped where ``g_i < mismatch_seq_low`` or ``> mismatch_seq_high``
================================= ====================================================================

:func:`mismatch_correction` returns the detached ``is_weight`` (multiplies the policy-gradient term, and the
KL term too with ``tis_on_kl``) and ``keep`` (0/1, multiplies the whole per-token loss: a dropped token or
sequence is out of the loss; the global normalisers are unchanged), and the metrics (:mod:`.metrics`):
``mismatch/*`` of :func:`.metrics.mismatch_metrics`, the geometric-mean ratio ``mismatch/seq_ratio_mean|max|min``
(per sequence), ``mismatch/tis_weight_mean`` + ``mismatch/tis_truncated_frac`` (per token) or
``mismatch/seq_tis_weight_mean`` + ``mismatch/seq_tis_truncated_frac`` (per sequence) with TIS, and with any
mask ``mismatch/masked_token_frac`` (loss tokens dropped) and ``mismatch/masked_seq_frac`` (sequences with
every loss token dropped). Sequence quantities are those of whole rows (see :mod:`.gspo` and :mod:`.rows`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .gspo import sequence_mean_log_ratio
from .metrics import masked_max_metric, masked_mean_metric, masked_min_metric, mismatch_metrics, sum_count
from .policy_loss import LOG_RATIO_CLAMP, truncated_is_weight
from .rows import Rows, row_view


class MismatchCorrection(NamedTuple):
    is_weight: Optional[Tensor]  # [B, T] detached, None without TIS
    keep: Optional[Tensor]       # [B, T] 0/1 detached, None without a mask
    metrics: dict


def mismatch_correction(cfg, old_logprobs: Tensor, rollout_logprobs: Tensor, loss_mask: Tensor,
                        rows: Optional[Rows] = None) -> MismatchCorrection:
    """Weights, masks and metrics for a ``GRPOConfig`` ``cfg`` (inputs ``[B, T]``, 0 at masked positions).
    ``rows``: the whole rows of a microbatch holding slices of them (context parallelism, :mod:`.rows`); the
    sequence quantities are then those of the whole rows, and each row is counted once in the metrics."""
    old, rollout = old_logprobs.detach(), rollout_logprobs.detach()
    mask = loss_mask.bool()
    rows = rows if rows is not None else row_view(mask)
    has_tokens, reported = rows.has_tokens, rows.reported
    seq_ratio = torch.exp(sequence_mean_log_ratio(old, rollout, mask, rows).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    m = mismatch_metrics(old, rollout, mask, cfg.mismatch_token_threshold)
    m["mismatch/seq_ratio_mean"] = masked_mean_metric(seq_ratio, reported)
    m["mismatch/seq_ratio_max"] = masked_max_metric(seq_ratio, has_tokens)
    m["mismatch/seq_ratio_min"] = masked_min_metric(seq_ratio, has_tokens)

    weight = None
    if cfg.tis and cfg.tis_level == "token":
        weight = truncated_is_weight(old, rollout, cfg.tis_cap)
        raw = torch.exp((old - rollout).clamp(max=LOG_RATIO_CLAMP))
        m["mismatch/tis_weight_mean"] = masked_mean_metric(weight, mask)
        m["mismatch/tis_truncated_frac"] = masked_mean_metric((raw > cfg.tis_cap).float(), mask)
    elif cfg.tis:
        w = seq_ratio.clamp(max=cfg.tis_cap)
        weight = w[:, None].expand_as(old)
        m["mismatch/seq_tis_weight_mean"] = masked_mean_metric(w, reported)
        m["mismatch/seq_tis_truncated_frac"] = masked_mean_metric((seq_ratio > cfg.tis_cap).float(), reported)

    keep = None
    if cfg.mismatch_mask:
        keep = (old - rollout).abs() <= cfg.mismatch_token_threshold
    if cfg.mismatch_seq_low is not None or cfg.mismatch_seq_high is not None:
        lo = cfg.mismatch_seq_low if cfg.mismatch_seq_low is not None else 0.0
        hi = cfg.mismatch_seq_high if cfg.mismatch_seq_high is not None else float("inf")
        seq_keep = ((seq_ratio >= lo) & (seq_ratio <= hi))[:, None].expand_as(mask)
        keep = seq_keep if keep is None else keep & seq_keep
    if keep is not None:
        dropped = mask & ~keep
        m["mismatch/masked_token_frac"] = masked_mean_metric(dropped.float(), mask)
        kept_tokens = rows.sum((mask & keep).sum(-1).to(old.dtype))  # a row is dropped when no slice keeps a token
        m["mismatch/masked_seq_frac"] = sum_count((reported & (kept_tokens == 0)).sum(), reported.sum())
        keep = keep.to(old.dtype)
    return MismatchCorrection(weight, keep, m)
