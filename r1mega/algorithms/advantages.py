"""Advantages from grouped rewards (GRPO and its variants) and DeepSeekMath process supervision.

Layout: rewards come either as ``[num_groups, G]`` or flat ``[num_groups * G]`` with the G
completions of one prompt contiguous (pass ``group_size`` for the flat form). The result has the
shape of the input.

Modes (``mode=``):

* ``'group-norm'`` (GRPO / R1):  ``A_i = (r_i - mean_g) / (std_g + eps)``
* ``'group-mean'`` (Dr.GRPO):    ``A_i = r_i - mean_g``  (no std scaling)
* ``'rloo'``:                    ``A_i = r_i - mean_{j != i} r_j = G/(G-1) * (r_i - mean_g)``
* ``'batch-norm'``:              ``A_i = (r_i - mean_g) / (std_batch + eps)``, std over ALL rewards
  of the batch (every group of every prompt), not per group.

Standard deviations are Bessel-corrected (``unbiased=True``, the ``torch.std`` default) unless
``unbiased=False``. A group whose rewards are all exactly equal (this includes a group of one)
has advantage exactly 0 in every mode: no NaN, no ``tiny/eps`` noise. In 'batch-norm' a batch
with fewer than two rewards, or with zero std, gives all zeros.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .metrics import sum_count

ADVANTAGE_MODES = ("group-norm", "group-mean", "rloo", "batch-norm")


def _as_groups(rewards: Tensor, group_size: Optional[int]) -> Tensor:
    if rewards.dim() == 2:
        if group_size is not None and rewards.shape[1] != group_size:
            raise ValueError(f"rewards have groups of {rewards.shape[1]}, but group_size={group_size}")
        return rewards
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [num_groups*G] or [num_groups, G], got shape {tuple(rewards.shape)}")
    if group_size is None:
        raise ValueError("flat rewards need group_size")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    return rewards.view(-1, group_size)


def _std(x: Tensor, dim, unbiased: bool) -> Tensor:
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:  # std of one value: define as 0 (the caller zeroes such groups anyway)
        return torch.zeros_like(x.sum() if dim is None else x.sum(dim, keepdim=True))
    if dim is None:
        return x.std(unbiased=unbiased)
    return x.std(dim=dim, keepdim=True, unbiased=unbiased)


def degenerate_groups(rewards: Tensor, group_size: Optional[int] = None) -> Tensor:
    """Bool ``[num_groups]``: True where all rewards of the group are equal (zero std, no signal)."""
    g = _as_groups(rewards, group_size)
    return g.amax(dim=1) == g.amin(dim=1)


def group_advantages(rewards: Tensor, group_size: Optional[int] = None, mode: str = "group-norm",
                     eps: float = 1e-6, unbiased: bool = True) -> Tensor:
    """Outcome advantages, one per completion, in the shape of ``rewards`` (see module doc)."""
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"mode={mode!r}, expected one of {ADVANTAGE_MODES}")
    g = _as_groups(rewards, group_size)
    g = g if g.is_floating_point() else g.float()
    G = g.shape[1]
    centred = g - g.mean(dim=1, keepdim=True)
    if mode == "group-norm":
        adv = centred / (_std(g, 1, unbiased) + eps)
    elif mode == "group-mean":
        adv = centred
    elif mode == "rloo":
        adv = centred * (G / (G - 1)) if G > 1 else torch.zeros_like(centred)
    else:  # batch-norm
        std = _std(g.reshape(-1), None, unbiased)
        adv = centred / (std + eps) if (g.numel() >= 2 and float(std) > 0) else torch.zeros_like(centred)
    adv = torch.where(degenerate_groups(g)[:, None], torch.zeros_like(adv), adv)
    return adv.reshape(rewards.shape)


def dynamic_sampling_keep(rewards: Tensor, group_size: Optional[int] = None) -> Tensor:
    """DAPO dynamic sampling filter: bool ``[num_groups]``, True for groups worth training on
    (rewards not all equal). The rollout loop drops the others and samples more prompts."""
    return ~degenerate_groups(rewards, group_size)


def process_advantages(step_rewards: Tensor, step_ends: Tensor, step_mask: Tensor, group_size: int,
                       seq_len: int, eps: float = 1e-6, unbiased: bool = True) -> Tensor:
    """DeepSeekMath process supervision: per-step rewards -> token advantages ``[B, seq_len]``.

    Args:
        step_rewards: ``[B, S]`` reward of step s of completion b (padded to S steps).
        step_ends: ``[B, S]`` long, index (in the same token axis as the loss tensors, ``0..seq_len-1``)
            of the last token of each step.
        step_mask: ``[B, S]`` bool/0-1, True for real steps (padding steps are ignored).
        group_size: G; rows ``[k*G, (k+1)*G)`` are the completions of prompt k.

    Within each group, all valid steps of all G completions are normalised together:
    ``r~ = (r - mean) / (std + eps)`` (a group whose step rewards are all equal, e.g. a single
    step, gets r~ = 0). The advantage of token t of completion b is the sum of r~ over the steps
    of b that end at or after t: ``A[b, t] = sum_{s: end[b,s] >= t} r~[b, s]``. Tokens after the
    last step end get 0 (the loss mask should exclude them anyway).
    """
    B, S = step_rewards.shape
    if step_ends.shape != (B, S) or step_mask.shape != (B, S):
        raise ValueError(f"step_rewards {tuple(step_rewards.shape)}, step_ends {tuple(step_ends.shape)} and "
                         f"step_mask {tuple(step_mask.shape)} must have the same shape")
    if group_size < 1 or B % group_size != 0:
        raise ValueError(f"{B} completions cannot be split into groups of {group_size}")
    valid = step_mask.bool()
    ends = step_ends.long()
    if valid.any() and (ends[valid].min() < 0 or ends[valid].max() >= seq_len):
        raise ValueError(f"step end indices must lie in [0, {seq_len}), got {ends[valid].min()}..{ends[valid].max()}")
    r = step_rewards.float() if not step_rewards.is_floating_point() else step_rewards
    rg, vg = r.reshape(-1, group_size * S), valid.reshape(-1, group_size * S)
    rg = torch.where(vg, rg, torch.zeros_like(rg))  # padding steps may hold anything
    n = vg.sum(1, keepdim=True).to(r.dtype)
    mean = rg.sum(1, keepdim=True) / n.clamp(min=1)
    dof = (n - 1 if unbiased else n).clamp(min=1)
    std = (torch.where(vg, (rg - mean) ** 2, torch.zeros_like(rg)).sum(1, keepdim=True) / dof).sqrt()
    big = torch.finfo(r.dtype).max
    degenerate = (torch.where(vg, rg, torch.full_like(rg, -big)).amax(1, keepdim=True)
                  == torch.where(vg, rg, torch.full_like(rg, big)).amin(1, keepdim=True)) | (n <= 1)
    normed = torch.where(vg & ~degenerate, (rg - mean) / (std + eps), torch.zeros_like(rg)).view(B, S)
    scattered = torch.zeros(B, seq_len, dtype=r.dtype, device=r.device)
    scattered.scatter_add_(1, torch.where(valid, ends, 0), normed)
    # reverse cumulative sum: A[t] = sum over positions u >= t
    return scattered.flip(1).cumsum(1).flip(1)


def advantage_metrics(rewards: Tensor, advantages: Tensor, group_size: Optional[int] = None) -> dict[str, Tensor]:
    """Rollout-batch metrics in the (sum, count) convention of :mod:`r1mega.algorithms.metrics`:
    reward mean/std (std derived from ``reward/sq_mean``), advantage mean/std, and the fraction
    of groups with zero reward std (``reward/zero_std_group_frac``: no learning signal)."""
    g = _as_groups(rewards, group_size).float()
    a = advantages.reshape(-1).float()
    deg = degenerate_groups(g)
    return {
        "reward/mean": sum_count(g.sum(), g.numel()),
        "reward/sq_mean": sum_count((g * g).sum(), g.numel()),
        "adv/mean": sum_count(a.sum(), a.numel()),
        "adv/sq_mean": sum_count((a * a).sum(), a.numel()),
        "reward/zero_std_group_frac": sum_count(deg.float().sum(), deg.numel()),
    }
