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
                                  required when ``cfg.tis`` or ``cfg.mismatch_mask``)
  ``entropy``          optional   per-token entropy, metrics only
  ``global_num_seqs``  0-d        sequences with >= 1 loss token in the WHOLE global batch
  ``global_num_tokens`` 0-d       loss tokens in the WHOLE global batch
  ``seq_num_tokens``   optional   ``[B]`` full per-sequence token counts (context parallel)
  ==================== ========== ==========================================================

``GRPOLoss(cfg, old_from_current=True)`` is for a step that makes exactly one optimizer update: the weights
being trained are the behaviour policy, so a batch without ``old_logprobs`` takes them from ``logprobs``
itself, detached (ratio exactly 1; the gradient is the on-policy policy gradient), and the trainer saves
the separate forward pass.

Per token: ``l = w * (pg + kl_coef * kl)`` with ``pg`` the clipped surrogate
(:mod:`.policy_loss`), ``kl`` the chosen estimator against the reference (:mod:`.kl`), and
``w`` the detached weight ``min(exp(old - rollout), tis_cap)`` when ``cfg.tis`` (times 0 for
tokens over ``mismatch_token_threshold`` when ``cfg.mismatch_mask``), else 1. The loss is
``aggregate_loss(l, ...)`` with the global counts (:mod:`.aggregation`): summed over all
microbatches and DP ranks it equals the global-batch loss. NaN/inf at masked positions of any
input never reaches the loss or the gradient.

Metrics follow :mod:`.metrics` (``(sum, count)`` pairs, ``/max`` and ``/min`` singletons):
``loss/pg``, ``loss/kl`` (token means of the unweighted terms), ``kl/k3`` (approx KL to the
reference, k3, whatever the estimator), ``clip/low_frac``, ``clip/high_frac``, ``clip/dual_frac``,
``ratio/mean``, ``ratio/max``, ``ratio/min``, ``adv/mean`` + ``adv/sq_mean`` (per sequence for
``[B]`` advantages, per token for ``[B, T]``), ``entropy/mean``, ``response/length``, and with
rollout log-probs ``mismatch/*`` (:func:`.metrics.mismatch_metrics`) plus
``mismatch/tis_weight_mean`` and ``mismatch/tis_truncated_frac`` when TIS is on.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .aggregation import aggregate_loss
from .kl import kl_penalty
from .metrics import masked_max_metric, masked_mean_metric, masked_min_metric, mismatch_metrics, sum_count
from .policy_loss import clipped_surrogate, truncated_is_weight


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

        sur = clipped_surrogate(logp, old, adv_tok, cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip_c)
        per_token = sur.loss
        kl = None
        if cfg.kl_coef > 0:
            ref = clean(_require(batch, "ref_logprobs", f"kl_coef={cfg.kl_coef} > 0").detach())
            kl = kl_penalty(logp, ref, cfg.kl_estimator)
            per_token = per_token + cfg.kl_coef * kl
        elif batch.get("ref_logprobs") is not None:
            ref = clean(batch["ref_logprobs"].detach())
        else:
            ref = None

        rollout = batch.get("rollout_logprobs")
        if (cfg.tis or cfg.mismatch_mask) and rollout is None:
            raise KeyError("GRPOLoss: batch['rollout_logprobs'] is required (tis or mismatch_mask is on)")
        weight = None
        if rollout is not None:
            rollout = clean(rollout.detach())
            if cfg.tis:
                weight = truncated_is_weight(old, rollout, cfg.tis_cap)
            if cfg.mismatch_mask:
                keep = ((old - rollout).abs() <= cfg.mismatch_token_threshold).to(logprobs.dtype)
                weight = keep if weight is None else weight * keep
        if weight is not None:
            per_token = per_token * weight

        loss = aggregate_loss(per_token, mask, cfg.loss_agg_mode, global_num_seqs=batch.get("global_num_seqs"),
                              global_num_tokens=batch.get("global_num_tokens"), norm_constant=self.norm_constant,
                              seq_num_tokens=batch.get("seq_num_tokens"))

        with torch.no_grad():
            metrics = self._metrics(mask, sur, kl, logp, ref, adv, seq_level, old, rollout, batch.get("entropy"))
        return loss, metrics

    def _metrics(self, mask, sur, kl, logp, ref, adv, seq_level, old, rollout, entropy) -> dict[str, Tensor]:
        cfg = self.cfg
        lengths = mask.sum(-1)
        has_tokens = lengths > 0
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
        if rollout is not None:
            m.update(mismatch_metrics(old, rollout, mask, cfg.mismatch_token_threshold))
            if cfg.tis:
                raw = torch.exp((old - rollout).clamp(max=20.0))
                m["mismatch/tis_weight_mean"] = masked_mean_metric(raw.clamp(max=cfg.tis_cap), mask)
                m["mismatch/tis_truncated_frac"] = masked_mean_metric((raw > cfg.tis_cap).float(), mask)
        return m
