"""DeepSeek-V3's published FP8 weights: float8_e4m3fn tensors with 128x128 block scales.

The release stores each quantised linear weight ``W`` (shape ``[out, in]``) as ``W_q``
(float8_e4m3fn) plus ``<name>_scale_inv`` (float32, shape ``[ceil(out/128), ceil(in/128)]``),
and ``config.json`` has ``quantization_config = {"quant_method": "fp8", "fmt": "e4m3",
"activation_scheme": "dynamic", "weight_block_size": [128, 128]}``. Dequantisation multiplies
every element by the scale of its block (``scale_inv`` is the inverse of the quantisation scale):

    W[i, j] = float(W_q[i, j]) * scale_inv[i // 128, j // 128]

(edge blocks are partial). :func:`quantize_blockwise` is the matching quantiser (tests).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
SCALE_SUFFIX = "_scale_inv"


class FP8Error(ValueError):
    pass


def block_size(quantization_config: Optional[dict]) -> Optional[tuple]:
    """(rows, cols) of a block from ``quantization_config``; None when the checkpoint is not FP8."""
    if not quantization_config:
        return None
    method = quantization_config.get("quant_method")
    if method != "fp8":
        raise FP8Error(f"quantization_config.quant_method={method!r} is not supported (only DeepSeek 'fp8')")
    fmt = quantization_config.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise FP8Error(f"quantization_config.fmt={fmt!r} is not supported (only 'e4m3')")
    b = quantization_config.get("weight_block_size", [128, 128])
    if not (isinstance(b, (list, tuple)) and len(b) == 2 and all(int(x) > 0 for x in b)):
        raise FP8Error(f"quantization_config.weight_block_size={b!r}: expected [rows, cols]")
    return int(b[0]), int(b[1])


def scale_shape(shape: tuple, block: tuple) -> tuple:
    return tuple(math.ceil(s / b) for s, b in zip(shape, block))


def dequantize_blockwise(w: torch.Tensor, scale_inv: torch.Tensor, block: tuple = (128, 128),
                         dtype: torch.dtype = torch.float32, name: str = "weight") -> torch.Tensor:
    """``w`` (fp8, [out, in]) times the per-block ``scale_inv`` -> ``dtype`` (computed in fp32)."""
    if w.dim() != 2:
        raise FP8Error(f"{name}: FP8 block dequantisation needs a 2-D weight, got shape {tuple(w.shape)}")
    want = scale_shape(tuple(w.shape), block)
    if tuple(scale_inv.shape) != want:
        raise FP8Error(f"{name}{SCALE_SUFFIX}: expected shape {want} for weight {tuple(w.shape)} with blocks {block}, "
                       f"got {tuple(scale_inv.shape)}")
    rows, cols = w.shape
    s = scale_inv.float().repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return (w.float() * s).to(dtype)


def quantize_blockwise(w: torch.Tensor, block: tuple = (128, 128)) -> tuple:
    """(fp8 weight, fp32 scale_inv) with one scale per block: ``scale_inv = amax(block) / 448``."""
    rows, cols = w.shape
    sr, sc = scale_shape((rows, cols), block)
    padded = w.float().new_zeros(sr * block[0], sc * block[1])
    padded[:rows, :cols] = w.float()
    blocks = padded.view(sr, block[0], sc, block[1])
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale_inv = amax / FP8_MAX
    q = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(sr * block[0], sc * block[1])[:rows, :cols].contiguous(), scale_inv.float()
