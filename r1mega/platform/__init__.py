"""Platform layer: the only place that knows whether we run on CUDA or on the CPU.

``init()`` is called once before any Megatron model is built; on a CPU-only machine it applies
the Megatron-on-CPU compatibility layer (``megatron_cpu.py``). Nothing outside this package
branches on CPU vs GPU.
"""
from __future__ import annotations

import os
import warnings

from .device import (check_context_parallel, default_dtype_name, device, dist_backend, empty_cache,  # noqa: F401
                     has_cuda, have_transformer_engine, megatron_config_overrides, memory_allocated_gb, synchronize)

_initialised = False


def init() -> None:
    """Prepare this process for Megatron-Core (idempotent)."""
    global _initialised
    if _initialised:
        return
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    if not has_cuda():
        from . import megatron_cpu

        megatron_cpu.apply()
    from . import megatron_moe_padding, megatron_moe_tracker, megatron_noapex, megatron_writer_queue

    megatron_noapex.apply()
    megatron_writer_queue.apply()
    megatron_moe_tracker.apply()
    megatron_moe_padding.apply()
    if not have_transformer_engine():
        from . import megatron_local_mla, megatron_recompute

        megatron_local_mla.apply()
        megatron_recompute.apply()
    _initialised = True
