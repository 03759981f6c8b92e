"""Context parallelism (CP): each sequence split over the CP ranks the way Megatron's TE attention expects.

Causal attention makes the end of a sequence costlier than its start, so a sequence padded to a multiple of
``2 * CP`` positions is cut into ``2 * CP`` equal chunks and rank ``r`` holds chunks ``r`` and ``2*CP-1-r``
(rank 0 the first and the last): every rank then does the same attention work. Megatron-Core assumes exactly
this layout (``get_batch_on_this_cp_rank``; its rotary embedding picks the positions of these chunks) for a
padded ``[b, s]`` batch; for packed sequences (THD) each sequence is padded to ``2 * CP`` on its own and split
the same way (Transformer Engine's ``thd_get_partitioned_indices``).

Every CP rank of a data-parallel rank holds the same rows. What the losses need of the whole rows is put in
each microbatch by :func:`split_microbatch` (see :mod:`r1mega.algorithms.rows`): the rows' loss-token counts
taken before the split, a differentiable all-reduce of per-row values over the CP group, and the one rank
(CP rank 0) that reports per-row metrics. Each rank's loss is then its share of the whole loss: the sum over
the CP ranks of their losses is the loss of the unsplit rows. The engine scales it by microbatches x DP only
(Megatron multiplies a 2-output loss by CP and divides the gradients by DP x CP when it all-reduces them over
the data-and-context-parallel group), and reduces metrics over DP x CP.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor


# ------------------------------------------------------------------ positions
def chunk_positions(seq_len: int, cp_size: int, cp_rank: int) -> Tensor:
    """The positions of a ``seq_len`` sequence that CP rank ``cp_rank`` holds, in its local order: chunk
    ``cp_rank`` then chunk ``2*cp_size-1-cp_rank`` of ``2*cp_size`` equal chunks."""
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank={cp_rank} is not a rank of a context-parallel group of {cp_size}")
    if seq_len % (2 * cp_size):
        raise ValueError(f"a sequence of {seq_len} positions does not split into 2 x CP = {2 * cp_size} equal "
                         "chunks: pad it to a multiple first")
    c = seq_len // (2 * cp_size)
    first, second = cp_rank * c, (2 * cp_size - 1 - cp_rank) * c
    return torch.cat([torch.arange(first, first + c), torch.arange(second, second + c)])


def padded_lengths(lengths: Tensor, cp_size: int) -> Tensor:
    """Packed sequences: each length rounded up to a multiple of ``2 * cp_size`` (``cu_seqlens_padded``'s steps)."""
    m = 2 * cp_size
    return (lengths.long() + m - 1) // m * m


def packed_positions(lengths_padded: Tensor, cp_size: int, cp_rank: int) -> Tensor:
    """Packed sequences (lengths already padded, :func:`padded_lengths`, laid end to end): the positions of the
    stream that CP rank ``cp_rank`` holds, sequence after sequence, each split as :func:`chunk_positions`."""
    starts = torch.cumsum(lengths_padded.long(), 0) - lengths_padded.long()
    parts = [int(s) + chunk_positions(int(n), cp_size, cp_rank) for s, n in zip(starts, lengths_padded)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def unsplit(parts: list[Tensor], positions: list[Tensor], dim: int = 1) -> Tensor:
    """The inverse of a split: ``parts[r]`` holds the positions ``positions[r]`` along ``dim``; returns the
    tensor in the unsplit order."""
    total = sum(int(p.numel()) for p in positions)
    shape = list(parts[0].shape)
    shape[dim] = total
    out = parts[0].new_zeros(shape)
    for part, pos in zip(parts, positions):
        out.index_copy_(dim, pos.to(out.device), part)
    return out


# ------------------------------------------------------------------ batches
def _per_token(v, rows: int, seq_len: int) -> bool:
    return torch.is_tensor(v) and v.dim() >= 2 and v.size(0) == rows and v.size(1) == seq_len


def split_batch(batch: dict, cp_size: int, cp_rank: int) -> dict:
    """This CP rank's share of a padded batch: every per-token tensor (``[B, S, ...]``, as
    :mod:`r1mega.train.batching` tells them) cut to :func:`chunk_positions` along dim 1; the rest as it is."""
    B, S = batch["tokens"].shape
    pos = chunk_positions(S, cp_size, cp_rank)
    return {k: (v.index_select(1, pos.to(v.device)) if _per_token(v, B, S) else v) for k, v in batch.items()}


def split_microbatch(mb: dict, cp_size: int, cp_rank: int, seq_sum: Callable[[Tensor], Tensor]) -> dict:
    """:func:`split_batch` plus what a loss needs of the whole rows (:mod:`r1mega.algorithms.rows`):
    ``seq_num_tokens`` (loss tokens per row, counted before the split), ``seq_sum`` (sums a per-row value over
    the CP group) and ``seq_owner`` (CP rank 0 reports the per-row metrics); and ``position_ids`` ``[b, s]``,
    the positions this rank holds (for the MoE padding mask)."""
    B, S = mb["tokens"].shape
    out = split_batch(mb, cp_size, cp_rank)
    if "loss_mask" in mb:
        out["seq_num_tokens"] = mb["loss_mask"].bool().sum(-1)
    out["position_ids"] = chunk_positions(S, cp_size, cp_rank).to(mb["tokens"].device)[None].expand(B, -1)
    out["seq_sum"] = seq_sum
    out["seq_owner"] = cp_rank == 0
    return out


def loss_scale(num_microbatches: int, dp_size: int) -> float:
    """The factor of each microbatch's loss share in the engine: microbatches x DP, not / CP. Megatron's schedule
    divides a ``(loss, metrics)`` return by the microbatches and multiplies it by CP; its DDP scales gradients by
    ``1 / (DP x CP)`` as it all-reduces them over the data-and-context-parallel group. The gradient is then that
    of the sum of the shares over every microbatch, DP and CP rank: the global loss."""
    return float(num_microbatches * dp_size)


# ------------------------------------------------------------------ collectives
class _RowSum(torch.autograd.Function):
    """Sum over the ranks holding slices of the same rows. The ranks' losses are added, so the gradient of the
    sum with respect to one rank's input is the sum of every rank's output gradient: an all-reduce again."""

    @staticmethod
    def forward(ctx, x: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.reduce = reduce
        return reduce(x.detach().clone())

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.reduce(grad.contiguous().clone()), None


def _all_reduce(x: Tensor, group) -> Tensor:
    dist.all_reduce(x, group=group)
    return x


def seq_sum_fn(group=None, reduce: Optional[Callable[[Tensor], Tensor]] = None) -> Callable[[Tensor], Tensor]:
    """A differentiable ``[B] -> [B]`` sum over the CP ``group`` (or over any in-place sum ``reduce``, tests)."""
    reduce = reduce or functools.partial(_all_reduce, group=group)
    return lambda x: _RowSum.apply(x, reduce)


def gather(local: Tensor, group, cp_size: int, dim: int = 1) -> Tensor:
    """Every CP rank's share of a padded batch's per-token tensor (positions along ``dim``) back in the unsplit
    order, on every rank (no gradient)."""
    local = local.contiguous()
    parts = [torch.empty_like(local) for _ in range(cp_size)]
    dist.all_gather(parts, local, group=group)
    seq_len = local.size(dim) * cp_size
    return unsplit(parts, [chunk_positions(seq_len, cp_size, r) for r in range(cp_size)], dim)


def broadcast_rows(batch: dict, group, src: int) -> dict:
    """``batch`` as the CP group's rank ``src`` (a global rank) holds it, on every rank of ``group``. The CP ranks
    of a data-parallel rank must train on the same rows; a rollout sampled on each of them normally agrees
    (seeded per prompt), and this makes it so by construction. Shapes are sent first: they may differ."""
    tensors = sorted(k for k, v in batch.items() if torch.is_tensor(v))
    box = [{k: (tuple(batch[k].shape), batch[k].dtype) for k in tensors}]
    dist.broadcast_object_list(box, src=src, group=group)
    out = {k: v for k, v in batch.items() if not torch.is_tensor(v)}  # the tensors: exactly rank src's
    for k, (shape, dtype) in box[0].items():
        v = batch.get(k)
        if dist.get_rank() != src:
            like = v if torch.is_tensor(v) else batch["tokens"]
            v = torch.empty(shape, dtype=dtype, device=like.device)
        v = v.contiguous()
        dist.broadcast(v, src=src, group=group)
        out[k] = v
    return out
