"""Logit distillation (Hinton et al.): temperature-softened forward KL, scaled by T^2.

Note: DeepSeek-R1's distilled models were made by plain SFT on R1 samples (use
:class:`r1mega.algorithms.sft_loss.SFTLoss`); this loss is for teacher-logit distillation.

Per token (student s, teacher t, vocabulary axis last)::

    p = softmax(t / T),   q = softmax(s / T)
    kl = T^2 * sum_v p_v * (log p_v - log q_v)        # KL(teacher || student)

The T^2 factor keeps the gradient magnitude independent of T. The scalar loss is the masked sum
of ``kl`` divided by ``num_tokens`` (default: the mask's token count; pass the GLOBAL token
count to make microbatch losses add up to the global-batch token mean, as in
:mod:`r1mega.algorithms.aggregation`). Gradients flow into the student logits only. Memory is
``O(B*T*V)``: the caller chunks over tokens for large vocabularies.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def distill_kl_per_token(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` per position, shape ``[..., ]``."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}, expected > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ in shape")
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1) * (temperature ** 2)


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0,
               num_tokens: Optional[Tensor] = None) -> Tensor:
    """Scalar distillation loss: masked token sum of :func:`distill_kl_per_token` / ``num_tokens``."""
    per_tok = distill_kl_per_token(student_logits, teacher_logits, temperature)
    m = mask.bool()
    total = torch.where(m, per_tok, torch.zeros_like(per_tok)).sum()
    denom = m.sum() if num_tokens is None else num_tokens
    return total / torch.as_tensor(denom, dtype=total.dtype, device=total.device).clamp(min=1.0)
