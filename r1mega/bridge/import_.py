"""Hugging Face -> Megatron: fill this rank's shards from a safetensors checkpoint.

Not collective: each rank reads exactly the HF tensors its own shards need (its layers, its
experts), one table entry at a time, shard file by shard file, and copies its TP slice into the
live parameter. The whole directory is validated against the table first (no weight is read
before the names, shard files and shapes are known to fit the model config).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from r1mega.config.model import ModelConfig
from r1mega.config.parallel import ParallelConfig

from .hf_io import HFCheckpoint
from .local import local_params
from .table import from_hf, full_to_shard, mapping_table


def model_has_mtp(engine_or_chunks) -> bool:
    from .local import modules_of

    return any(getattr(m, "mtp", None) is not None for m in modules_of(engine_or_chunks))


def open_checkpoint(hf_dir: str | os.PathLike, model_cfg: ModelConfig, include_mtp: bool,
                    quantization_config: Optional[dict] = None) -> HFCheckpoint:
    """Open and validate an HF directory for ``model_cfg`` (cheap: headers only)."""
    ckpt = HFCheckpoint(hf_dir, quantization_config)
    ckpt.validate(mapping_table(model_cfg, include_mtp=include_mtp), skip_mtp=not include_mtp)
    return ckpt


@torch.no_grad()
def load_hf_weights(engine_or_chunks, model_cfg: ModelConfig, parallel_cfg: Optional[ParallelConfig],
                    hf_dir: str | os.PathLike | HFCheckpoint, include_mtp: Optional[bool] = None,
                    quantization_config: Optional[dict] = None) -> dict:
    """Copy the HF checkpoint's weights into this rank's Megatron shards.

    ``include_mtp=None``: load the MTP layers when the model has them. FP8 weights (with
    ``quantization_config`` from config.json) are dequantised in fp32 and cast to the parameter
    dtype. Returns ``{"tensors": n_read, "params": n_filled}``. If the engine has an optimizer,
    its fp32 master copies are refreshed from the new weights.
    """
    del parallel_cfg  # the live layout is read from Megatron's parallel_state
    if include_mtp is None:
        include_mtp = model_has_mtp(engine_or_chunks)
    table = mapping_table(model_cfg, include_mtp=include_mtp)
    ckpt = hf_dir if isinstance(hf_dir, HFCheckpoint) else open_checkpoint(hf_dir, model_cfg, include_mtp, quantization_config)
    locals_ = local_params(engine_or_chunks, table)
    # shard file by shard file: the order of the first HF piece's file
    locals_.sort(key=lambda lp: ckpt.file_of[lp.entry.hf[0]])
    n_read = 0
    for lp in locals_:
        parts = [ckpt.get(n, dtype=torch.float32 if _is_fp8(ckpt, n) else ckpt_dtype(ckpt, n)) for n in lp.entry.hf]
        n_read += len(parts)
        full = from_hf(lp.entry, parts, model_cfg)
        shard = full_to_shard(lp.entry, full, lp.dim, lp.group_rank, lp.group_size) if lp.dim is not None else full
        lp.tensor.data.copy_(shard.to(lp.tensor.dtype))
        del parts, full, shard
    ckpt.close()
    optimizer = getattr(engine_or_chunks, "optimizer", None)
    if optimizer is not None and hasattr(optimizer, "reload_model_params"):
        optimizer.reload_model_params()
    return {"tensors": n_read, "params": len(locals_)}


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def ckpt_dtype(ckpt: HFCheckpoint, name: str) -> torch.dtype:
    return _ST_DTYPES.get(ckpt.meta[name][1], torch.float32)


def _is_fp8(ckpt: HFCheckpoint, name: str) -> bool:
    return ckpt.meta[name][1].startswith("F8")
