"""Per-token KL estimators between the current policy and a reference policy.

With ``log_r = ref_logprobs - logprobs`` (so ``r = pi_ref / pi``) on tokens sampled from pi:

* ``k1 = log pi - log pi_ref = -log_r``        unbiased, high variance, can be negative
* ``k2 = 0.5 * (log pi - log pi_ref)^2``       biased, low variance, >= 0
* ``k3 = r - log r - 1``                        unbiased, low variance, >= 0 (DeepSeekMath / R1)

All three estimate KL(pi || pi_ref) (see J. Schulman, "Approximating KL Divergence"). The
gradients flow through ``logprobs`` only; ``ref_logprobs`` is treated as a constant.

``log_r`` is clamped to ``[-clamp, clamp]`` (default 20) before ``exp`` so a garbage token cannot
overflow to inf/NaN; inside the clamp range the formulas are exact (the gradient is 0 outside).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3",
               clamp: Optional[float] = 20.0) -> Tensor:
    """Per-token KL estimate, same shape as the inputs (no masking: callers mask)."""
    log_r = ref_logprobs.detach() - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r * log_r
    if estimator == "k3":
        if clamp is not None:
            log_r = log_r.clamp(-clamp, clamp)
        return torch.exp(log_r) - log_r - 1.0
    raise ValueError(f"estimator={estimator!r}, expected one of {KL_ESTIMATORS}")
