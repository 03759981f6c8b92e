"""The GRPO loss the training engine calls once per microbatch.

Contract::

    loss_fn = GRPOLoss(cfg)                       # cfg: r1mega.config.grpo.GRPOConfig
    loss_fn = GRPOLoss(cfg, max_new_tokens=cfg_run.rollout.max_new_tokens)   # Dr.GRPO divisor default
    loss, metrics = loss_fn(logprobs, batch)

* ``logprobs`` ``[B, T]``: current policy log-prob of each token, aligned with the response
  tokens (float32, requires grad).
* ``batch`` (all ``[B, T]`` unless said otherwise; only ``logprobs`` carries gradient):

  ==================== ========== ==========================================================
  ``loss_mask``        required   1 on response tokens, 0 on prompt / padding
  ``old_logprobs``     required   behaviour-policy log-probs (trainer, before this update);
                                  optional with ``old_from_current=True`` (see below)
  ``advantages``       required   ``[B]`` (outcome) or ``[B, T]`` (process supervision)
  ``ref_logprobs``     if kl>0    reference-policy log-probs
  ``rollout_logprobs`` optional   the rollout engine's log-probs (TIS, mismatch metrics;
                                  required with TIS or a mismatch mask)
  ``entropy``          optional   per-token entropy, metrics only
  ``global_num_seqs``  0-d        sequences with >= 1 loss token in the WHOLE global batch
  ``global_num_tokens`` 0-d       loss tokens in the WHOLE global batch
  ``seq_num_tokens``   optional   ``[B]`` whole-row loss-token counts (context parallel; with
                                  ``seq_sum`` and ``seq_owner``, see :mod:`.rows`)
  ==================== ========== ==========================================================

``GRPOLoss(cfg, old_from_current=True)`` is for a step that makes exactly one optimizer update: the weights
being trained are the behaviour policy, so a batch without ``old_logprobs`` takes them from ``logprobs``
itself, detached (ratio exactly 1; the gradient is the on-policy policy gradient), and the trainer saves
the separate forward pass.

Per token: ``l = keep * (w * pg + kl_coef * kl)`` (``keep * w * (pg + kl_coef * kl)`` with ``cfg.tis_on_kl``),
with ``pg`` the clipped surrogate (:mod:`.policy_loss`) of the importance ratio of ``cfg.importance_level``
(token, or GSPO's sequence ratio: :mod:`.gspo`), ``kl`` the chosen estimator against the reference
(:mod:`.kl`), ``w`` the detached truncated importance weight against the rollout engine (token or sequence,
``cfg.tis``; else 1) and ``keep`` the token and sequence mismatch masks (:mod:`.mismatch`; else 1). The loss is
``aggregate_loss(l, ...)`` with the global counts (:mod:`.aggregation`): summed over all
microbatches and DP ranks it equals the global-batch loss. NaN/inf at masked positions of any
input never reaches the loss or the gradient.

Metrics follow :mod:`.metrics` (``(sum, count)`` pairs, ``/max`` and ``/min`` singletons):
``loss/pg``, ``loss/kl`` (token means of the unweighted terms), ``kl/k3`` (approx KL to the
reference, k3, whatever the estimator), ``clip/low_frac``, ``clip/high_frac``, ``clip/dual_frac``,
``ratio/mean``, ``ratio/max``, ``ratio/min``, ``adv/mean`` + ``adv/sq_mean`` (per sequence for
``[B]`` advantages, per token for ``[B, T]``), ``entropy/mean``, ``response/length``, and with
rollout log-probs ``mismatch/*`` (:func:`.mismatch.mismatch_correction`: mismatch sizes, TIS weights, masked
fractions). With a sequence-level ratio the ``ratio/*`` and ``clip/*`` metrics count every token of a sequence
with its sequence's value.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .aggregation import aggregate_loss
from .gspo import importance_ratios
from .kl import kl_penalty
from .metrics import masked_max_metric, masked_mean_metric, masked_min_metric, sum_count
from .mismatch import mismatch_correction
from .policy_loss import surrogate_from_ratio
from .rows import row_view


def _require(batch: dict, key: str, why: str) -> Tensor:
    if batch.get(key) is None:
        raise KeyError(f"GRPOLoss: batch[{key!r}] is required ({why})")
    return batch[key]


class GRPOLoss:
    """Clipped-surrogate GRPO loss with KL to the reference; see the module doc for the contract."""

    def __init__(self, cfg, max_new_tokens: Optional[int] = None, old_from_current: bool = False):
        """``max_new_tokens``: the rollout's response-length limit, the default Dr.GRPO divisor
        ('seq-sum-token-norm') when ``cfg.loss_norm_constant`` is None. ``old_from_current``: a batch
        without ``old_logprobs`` uses the current log-probs, detached (one update per rollout batch)."""
        cfg.validate()
        self.cfg = cfg
        self.old_from_current = old_from_current
        self.norm_constant = cfg.loss_norm_constant if cfg.loss_norm_constant is not None else max_new_tokens
        if cfg.loss_agg_mode == "seq-sum-token-norm" and not (self.norm_constant and self.norm_constant > 0):
            raise ValueError("GRPOLoss: 'seq-sum-token-norm' needs grpo.loss_norm_constant or max_new_tokens "
                             f"(got {max_new_tokens!r})")

    def __call__(self, logprobs: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        mask = _require(batch, "loss_mask", "1 on response tokens").bool()
        if mask.shape != logprobs.shape:
            raise ValueError(f"GRPOLoss: loss_mask {tuple(mask.shape)} and logprobs {tuple(logprobs.shape)} differ")
        zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)

        def clean(x: Tensor) -> Tensor:  # masked positions -> 0, before any arithmetic
            return torch.where(mask, x.to(logprobs.dtype), zero)

        logp = clean(logprobs)
        if self.old_from_current and batch.get("old_logprobs") is None:
            old = logp.detach()
        else:
            old = clean(_require(batch, "old_logprobs", "behaviour-policy log-probs").detach())
        adv = _require(batch, "advantages", "[B] or [B, T]").detach()
        seq_level = adv.dim() == 1
        if seq_level and adv.shape[0] != mask.shape[0]:
            raise ValueError(f"GRPOLoss: advantages {tuple(adv.shape)} do not match batch size {mask.shape[0]}")
        adv_tok = clean(adv[:, None].expand_as(mask) if seq_level else adv)
        if cfg.importance_level == "sequence" and not seq_level:
            raise ValueError("GRPOLoss: importance_level 'sequence' needs one advantage per sequence ([B]); "
                             "token-level advantages work with 'sequence_token'")
        rows = row_view(mask, batch)  # whole rows, when the microbatch holds slices of them (context parallelism)

        ratio = importance_ratios(logp, old, mask, cfg.importance_level, rows)
        sur = surrogate_from_ratio(ratio, adv_tok, cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip_c)
        pg = sur.loss
        kl = None
        if cfg.kl_coef > 0:
            ref = clean(_require(batch, "ref_logprobs", f"kl_coef={cfg.kl_coef} > 0").detach())
            kl = kl_penalty(logp, ref, cfg.kl_estimator)
        elif batch.get("ref_logprobs") is not None:
            ref = clean(batch["ref_logprobs"].detach())
        else:
            ref = None

        rollout = batch.get("rollout_logprobs")
        if (cfg.tis or cfg.mismatch_mask or cfg.mismatch_seq_mask) and rollout is None:
            raise KeyError("GRPOLoss: batch['rollout_logprobs'] is required (tis, mismatch_mask or a sequence "
                           "mismatch bound is on)")
        corr = mismatch_correction(cfg, old, clean(rollout.detach()), mask, rows) if rollout is not None else None
        w = corr.is_weight if corr is not None else None
        kl_term = None if kl is None else cfg.kl_coef * (kl * w if (w is not None and cfg.tis_on_kl) else kl)
        per_token = pg * w if w is not None else pg
        if kl_term is not None:
            per_token = per_token + kl_term
        if corr is not None and corr.keep is not None:
            per_token = per_token * corr.keep

        loss = aggregate_loss(per_token, mask, cfg.loss_agg_mode, global_num_seqs=batch.get("global_num_seqs"),
                              global_num_tokens=batch.get("global_num_tokens"), norm_constant=self.norm_constant,
                              seq_num_tokens=rows.tokens)

        with torch.no_grad():
            metrics = self._metrics(mask, sur, kl, logp, ref, adv, seq_level, batch.get("entropy"), rows)
            if corr is not None:
                metrics.update(corr.metrics)
        return loss, metrics

    def _metrics(self, mask, sur, kl, logp, ref, adv, seq_level, entropy, rows) -> dict[str, Tensor]:
        cfg = self.cfg
        lengths = mask.sum(-1)
        has_tokens = rows.reported  # per-row metrics: each row counted once over the ranks holding its slices
        m = {
            "loss/pg": masked_mean_metric(sur.loss, mask),
            "clip/low_frac": masked_mean_metric(sur.clip_low.float(), mask),
            "clip/high_frac": masked_mean_metric(sur.clip_high.float(), mask),
            "ratio/mean": masked_mean_metric(sur.ratio, mask),
            "ratio/max": masked_max_metric(sur.ratio, mask),
            "ratio/min": masked_min_metric(sur.ratio, mask),
            "response/length": sum_count(lengths.sum(), has_tokens.sum()),
        }
        if cfg.dual_clip_c is not None:
            m["clip/dual_frac"] = masked_mean_metric(sur.clip_dual.float(), mask)
        if kl is not None:
            m["loss/kl"] = masked_mean_metric(kl, mask)
        if ref is not None:
            m["kl/k3"] = masked_mean_metric(kl_penalty(logp.detach(), ref, "k3"), mask)
        a = adv.float()
        if seq_level:
            m["adv/mean"] = masked_mean_metric(a, has_tokens)
            m["adv/sq_mean"] = masked_mean_metric(a * a, has_tokens)
        else:
            m["adv/mean"] = masked_mean_metric(a, mask)
            m["adv/sq_mean"] = masked_mean_metric(a * a, mask)
        if entropy is not None:
            m["entropy/mean"] = masked_mean_metric(entropy, mask)
        return m
