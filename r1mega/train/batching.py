"""Batches as dicts of tensors: padding, microbatch slicing (and trimming) and data-parallel sharding.

A tensor whose first dimension is the batch size is per-sequence; with a second dimension equal
to the sequence length it is per-token. Anything else (0-d normalisers) is shared by every
microbatch. Padding adds zeros, so padded rows and positions carry ``loss_mask == 0``.

``lengths [B]`` (long, optional): each row's real tokens, ``tokens[i, :lengths[i]]``; the positions
after them are padding (0 for a row that is all padding, as :func:`pad_batch` adds). The training
engine masks padding out of the MoE router statistics with it and cuts microbatches to their rows'
lengths (:func:`trim_positions`); a batch without it is run as it is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _rows(batch: dict) -> int:
    return batch["tokens"].size(0)


def pad_batch(batch: dict, rows_multiple: int = 1, seq_multiple: int = 1) -> dict:
    """Right-pad the sequence dimension to a multiple of ``seq_multiple`` and add zero rows (``lengths``
    0: all padding) up to a multiple of ``rows_multiple``."""
    B, S = batch["tokens"].shape
    pad_s = (-S) % seq_multiple
    pad_b = (-B) % rows_multiple
    if not pad_s and not pad_b:
        return batch
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() >= 1 and v.size(0) == B:
            if v.dim() >= 2 and v.size(1) == S and pad_s:
                v = F.pad(v, [0, 0] * (v.dim() - 2) + [0, pad_s])
            if pad_b:
                v = torch.cat([v, v.new_zeros((pad_b,) + tuple(v.shape[1:]))])
        out[k] = v
    return out


def microbatches(batch: dict, size: int) -> list[dict]:
    B = _rows(batch)
    return [{k: (v[i:i + size] if torch.is_tensor(v) and v.dim() >= 1 and v.size(0) == B else v)
             for k, v in batch.items()} for i in range(0, B, size)]


def take_rows(batch: dict, index: torch.Tensor) -> dict:
    """The rows ``index`` of every per-sequence tensor, in that order."""
    B = _rows(batch)
    return {k: (v.index_select(0, index.to(v.device)) if torch.is_tensor(v) and v.dim() >= 1 and v.size(0) == B else v)
            for k, v in batch.items()}


def trim_positions(batch: dict, seq_multiple: int = 1) -> dict:
    """Cut every per-token tensor after the longest row's ``lengths`` (rounded up to a multiple of
    ``seq_multiple``, at least one multiple): only padding goes, and with causal attention no kept
    position's output changes. A microbatch of short rows then costs what its rows need, not what
    the batch's longest row does."""
    S = batch["tokens"].size(1)
    keep = -(-int(batch["lengths"].max()) // seq_multiple) * seq_multiple
    keep = min(S, max(seq_multiple, keep))
    if keep == S:
        return batch
    B = _rows(batch)
    return {k: (v[:, :keep] if torch.is_tensor(v) and v.dim() >= 2 and v.size(0) == B and v.size(1) == S else v)
            for k, v in batch.items()}


def dp_shard(batch: dict, dp_rank: int, dp_size: int) -> dict:
    """This data-parallel rank's contiguous share of a global batch (rows must divide evenly)."""
    B = _rows(batch)
    if B % dp_size:
        raise ValueError(f"global batch of {B} sequences does not split over {dp_size} data-parallel ranks")
    n = B // dp_size
    return {k: (v[dp_rank * n:(dp_rank + 1) * n] if torch.is_tensor(v) and v.dim() >= 1 and v.size(0) == B else v)
            for k, v in batch.items()}


def lm_batch(sequences: list[list[int]], pad_id: int = 0, loss_from: list[int] | None = None) -> dict:
    """Next-token batch from token-id lists: ``labels[t] = tokens[t+1]``; ``loss_mask`` is 1 where a
    real next token exists and (if given) the predicted token's index is >= ``loss_from[i]``
    (e.g. the prompt length, for response-only SFT); ``lengths [B]`` the sequences' lengths."""
    S = max(len(s) for s in sequences)
    B = len(sequences)
    tokens = torch.full((B, S), pad_id, dtype=torch.long)
    labels = torch.full((B, S), pad_id, dtype=torch.long)
    mask = torch.zeros(B, S)
    for i, s in enumerate(sequences):
        t = torch.as_tensor(s, dtype=torch.long)
        tokens[i, :len(s)] = t
        labels[i, :len(s) - 1] = t[1:]
        start = max(0, (loss_from[i] if loss_from else 1) - 1)
        mask[i, start:len(s) - 1] = 1.0
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return {"tokens": tokens, "labels": labels, "loss_mask": mask, "lengths": lengths}
