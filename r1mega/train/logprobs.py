"""Per-token log-probs and entropy from vocab-parallel logits, never gathering the vocabulary.

Under tensor parallelism each rank holds logits for a contiguous slice of the (padded)
vocabulary. The log-softmax normaliser needs a max and a sum of exponentials over the whole
vocabulary: two all-reduces over the TP group of ``[b, s]`` tensors, not ``[b, s, V]`` ones.
Columns beyond the tokenizer's real vocabulary (TP padding) are masked out, so the numbers equal
those of an unpadded Hugging Face / vLLM model.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def _tp_group():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        # d(sum_r x_r)/d x_local = 1: each rank's local contribution gets the full gradient.
        return grad, None


def _sum_tp(x: torch.Tensor, group) -> torch.Tensor:
    return x if group is None else _AllReduceSum.apply(x, group)


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    target: torch.Tensor,
    vocab_size: Optional[int] = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log p(target) and optionally the entropy, from logits ``[..., V_local]`` sharded over TP.

    ``target`` holds global token ids ``[...]``; ``vocab_size`` (the real, unpadded size) masks
    padding columns; ``temperature`` divides the logits first (the sampling distribution).
    Differentiable w.r.t. the logits on every TP rank.
    """
    group = _tp_group()
    rank = dist.get_rank(group) if group is not None else 0
    v_local = logits.size(-1)
    start = rank * v_local
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    if vocab_size is not None and start + v_local > vocab_size:
        cols = torch.arange(start, start + v_local, device=x.device)
        x = x.masked_fill(cols >= vocab_size, float("-inf"))
    with torch.no_grad():
        m = x.max(dim=-1).values
        if group is not None:
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    shifted = x - m.unsqueeze(-1)
    exp = shifted.exp()
    sum_exp = _sum_tp(exp.sum(-1), group)
    log_z = sum_exp.log()
    local = (target >= start) & (target < start + v_local)
    idx = (target - start).clamp(0, v_local - 1)
    # where, not a product: on a rank holding only padding columns every entry is -inf, and -inf * 0 is NaN
    picked = torch.where(local, shifted.gather(-1, idx.unsqueeze(-1)).squeeze(-1), torch.zeros((), dtype=x.dtype))
    logp = _sum_tp(picked, group) - log_z
    entropy = None
    if with_entropy:
        p_logit = (exp * shifted.masked_fill(torch.isinf(shifted), 0.0)).sum(-1)
        entropy = log_z - _sum_tp(p_logit, group) / sum_exp
    return logp, entropy
