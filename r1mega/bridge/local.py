"""This rank's share of the model, in table terms: each local tensor with its table entry, the
tensor-parallel dim it is split on, and the process group that holds its shards.

Used by both directions of the bridge (export gathers these shards, import fills them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .table import BridgeError, BridgeTable, Entry, canonical_name


@dataclass
class LocalParam:
    name: str                 # chunk-local Megatron name
    entry: Entry              # the table entry (canonical, global indices)
    tensor: torch.Tensor      # the live parameter / buffer
    dim: Optional[int]        # TP dim this rank holds a slice of (None: full tensor here)
    group: object             # TP group (expert-TP group for routed experts); None when dim is None
    group_rank: int
    group_size: int


def modules_of(engine_or_chunks) -> list:
    """GPTModel chunks of a TrainEngine, a list of chunks or one chunk (DDP wrappers removed)."""
    chunks = getattr(engine_or_chunks, "chunks", engine_or_chunks)
    if not isinstance(chunks, (list, tuple)):
        chunks = [chunks]
    out = []
    for c in chunks:
        while hasattr(c, "module"):  # DDP, Float16Module, ...
            c = c.module
        out.append(c)
    return out


def _groups(expert: bool):
    from megatron.core import parallel_state as ps

    if not dist.is_initialized():
        return None, 0, 1
    if expert:
        return (ps.get_expert_tensor_parallel_group(), ps.get_expert_tensor_parallel_rank(),
                ps.get_expert_tensor_parallel_world_size())
    return ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()


def ep_rank_size() -> tuple:
    from megatron.core import parallel_state as ps

    if not dist.is_initialized():
        return 0, 1
    return ps.get_expert_model_parallel_rank(), ps.get_expert_model_parallel_world_size()


def local_params(engine_or_chunks, table: BridgeTable) -> list:
    """Every weight this rank holds, in a deterministic order (the chunks' state_dict order), which is
    the same on all ranks of a pipeline stage. Raises :class:`BridgeError` for a parameter the table
    does not know or whose shape does not fit it."""
    m = table.cfg
    ep_rank, ep_size = ep_rank_size()
    n_local = m.n_routed_experts // ep_size if m.is_moe else 0
    out = []
    for module in modules_of(engine_or_chunks):
        layers = getattr(getattr(module, "decoder", None), "layers", [])
        layer_map = {i: layer.layer_number - 1 for i, layer in enumerate(layers)}
        for name, t in module.state_dict(keep_vars=True).items():
            if not torch.is_tensor(t) or name.endswith("_extra_state"):
                continue
            if name.startswith("mtp.") and not table.mtp_layers:
                continue
            if name == "output_layer.weight" and m.tie_word_embeddings:
                continue
            entry = table.megatron(canonical_name(name, layer_map, ep_rank, n_local))
            out.append(_local(name, entry, t))
    return out


def _local(name: str, entry: Entry, t: torch.Tensor) -> LocalParam:
    group, rank, size = _groups(entry.expert is not None)
    dim = None
    if entry.tp is not None and size > 1 and getattr(t, "tensor_model_parallel", False):
        pdim = getattr(t, "partition_dim", entry.tp)
        if pdim != entry.tp:
            raise BridgeError(f"{name}: Megatron splits it on dim {pdim}, the bridge table expects dim {entry.tp}")
        dim = pdim
    expected = list(entry.shape)
    if dim is not None:
        expected[dim] //= size
    if list(t.shape) != expected:
        raise BridgeError(f"{name} ({entry.megatron}): shape {tuple(t.shape)} on this rank, the table expects "
                          f"{tuple(expected)} (full {entry.shape}, TP dim {dim}, group size {size})")
    return LocalParam(name, entry, t, dim, group if dim is not None else None, rank, size)
