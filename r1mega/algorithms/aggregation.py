"""Loss aggregation normalised by GLOBAL counts, so microbatch losses add up to the batch loss.

The training engine splits one global batch (one optimizer step) into microbatches and
data-parallel ranks. Each microbatch returns ``aggregate_loss(...)`` computed with the counts of
the WHOLE global batch (``global_num_seqs``, ``global_num_tokens``); the sum of these over every
microbatch and DP rank is exactly the loss of the chosen mode on the global batch, and so are the
gradients. (The engine must therefore undo Megatron's own division by the number of microbatches
and the DP average, e.g. by multiplying by ``num_microbatches * dp_size``.)

Modes, with per-token loss ``l[b, t]``, mask ``m[b, t]``, ``n_b = sum_t m[b, t]``:

* ``'seq-mean-token-mean'`` (GRPO / R1): ``(1/N_seqs) * sum_b (sum_t m l) / n_b``
* ``'token-mean'`` (DAPO):              ``(1/N_tokens) * sum_{b,t} m l``
* ``'seq-sum-token-norm'`` (Dr.GRPO):   ``(1/N_seqs) * sum_b (sum_t m l) / norm_constant``

``N_seqs`` should count the sequences that have at least one loss token (rows that are pure
padding contribute 0 and must not be counted); :func:`local_normalisers` returns the local
counts that the engine sums (all-reduce) to get the global ones.

Context parallelism: when a sequence is split over CP ranks, ``n_b`` must be the token count of
the WHOLE sequence; pass it as ``seq_num_tokens`` ([B]); the default is the local ``m.sum(-1)``. Each CP
rank's loss is then its share, and the shares add up to the loss of the whole rows (:mod:`.rows`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-sum-token-norm")


def local_normalisers(loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(num_seqs, num_tokens)`` of one microbatch as 0-d float tensors: rows with any loss token,
    and loss tokens. Sum them over all microbatches and DP ranks to get the global normalisers."""
    m = loss_mask.bool()
    return m.any(dim=-1).sum().float(), m.sum().float()


def masked_token_sum(values: Tensor, loss_mask: Tensor) -> Tensor:
    """``sum_t m * v`` per sequence ([B]); NaN/inf at masked positions never leaks in."""
    m = loss_mask.bool()
    return torch.where(m, values, torch.zeros_like(values)).sum(dim=-1)


def aggregate_loss(per_token: Tensor, loss_mask: Tensor, mode: str, global_num_seqs: Optional[Tensor] = None,
                   global_num_tokens: Optional[Tensor] = None, norm_constant: Optional[float] = None,
                   seq_num_tokens: Optional[Tensor] = None) -> Tensor:
    """This microbatch's share of the global-batch loss (see the module doc)."""
    seq_sums = masked_token_sum(per_token, loss_mask)
    if mode == "token-mean":
        if global_num_tokens is None:
            raise ValueError("loss_agg_mode 'token-mean' needs global_num_tokens")
        return seq_sums.sum() / _as_scalar(global_num_tokens, per_token)
    if global_num_seqs is None:
        raise ValueError(f"loss_agg_mode {mode!r} needs global_num_seqs")
    if mode == "seq-mean-token-mean":
        n = seq_num_tokens if seq_num_tokens is not None else loss_mask.bool().sum(dim=-1)
        per_seq = seq_sums / n.to(per_token.dtype).clamp(min=1.0)
    elif mode == "seq-sum-token-norm":
        if norm_constant is None or norm_constant <= 0:
            raise ValueError(f"loss_agg_mode 'seq-sum-token-norm' needs a positive norm_constant, got {norm_constant!r}")
        per_seq = seq_sums / float(norm_constant)
    else:
        raise ValueError(f"loss_agg_mode={mode!r}, expected one of {LOSS_AGG_MODES}")
    return per_seq.sum() / _as_scalar(global_num_seqs, per_token)


def _as_scalar(x, like: Tensor) -> Tensor:
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device).reshape(())
    return t.clamp(min=1.0)  # an empty global batch gives loss 0, not NaN
