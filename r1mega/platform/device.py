"""Which accelerator this process runs on, decided once.

Everything outside ``r1mega/platform/`` asks this module (or receives a device from it) instead
of branching on CUDA itself.
"""
from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=None)
def has_cuda() -> bool:
    """True when CUDA is usable. ``R1MEGA_FORCE_CPU=1`` forces the CPU path (tests, debugging)."""
    if os.environ.get("R1MEGA_FORCE_CPU") == "1":
        return False
    return torch.cuda.is_available()


def select(name: str) -> None:
    """Apply the run config's ``device`` ('auto', 'cpu' or 'cuda') before anything is built."""
    if name == "cpu":
        os.environ["R1MEGA_FORCE_CPU"] = "1"
        has_cuda.cache_clear()
        have_transformer_engine.cache_clear()
    elif name == "cuda" and not has_cuda():
        from r1mega.config.base import ConfigError

        raise ConfigError("device", "'cuda' was asked for but CUDA is not available on this machine (use 'auto' or 'cpu')")


_DEFAULT_THREADS = torch.get_num_threads()


def set_cpu_threads(n=None) -> None:
    """The run config's ``cpu_threads`` on CPU (None restores torch's default); nothing on GPU."""
    if not has_cuda():
        torch.set_num_threads(n or _DEFAULT_THREADS)


def device() -> torch.device:
    """The device of this rank's model shard."""
    if has_cuda():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def dist_backend() -> str:
    """torch.distributed backend: nccl on GPU, gloo on CPU."""
    return "nccl" if has_cuda() else "gloo"


@functools.lru_cache(maxsize=None)
def have_transformer_engine() -> bool:
    """Transformer Engine is importable *and* usable (it needs CUDA). Never true on CPU."""
    if not has_cuda():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # TE raises various errors without a driver / matching CUDA
        return False
    return True


def check_context_parallel(context_parallel: int, where: str = "parallel.context_parallel") -> None:
    """Context parallelism runs only in Transformer Engine's attention (it exchanges the other ranks' keys and
    values around its ring; Megatron's local attention, the path without TE, has no CP): refuse it otherwise."""
    if context_parallel > 1 and not have_transformer_engine():
        from r1mega.config.base import ConfigError

        raise ConfigError(where, f"got {context_parallel}: context parallelism needs Transformer Engine attention "
                                 "(Megatron's local attention cannot split a sequence over ranks), and Transformer "
                                 "Engine is not usable on this machine (it needs CUDA); use 1")


def default_dtype_name() -> str:
    """Parameter dtype a config gets when it does not say: bf16 on GPU, fp32 on CPU
    (bf16 is slower than fp32 on CPU, and parity tests compare in fp32)."""
    return "bfloat16" if has_cuda() else "float32"


def synchronize() -> None:
    if has_cuda():
        torch.cuda.synchronize()


def empty_cache() -> None:
    if has_cuda():
        torch.cuda.empty_cache()


def memory_allocated_gb() -> float:
    if has_cuda():
        return torch.cuda.memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def megatron_config_overrides() -> dict:
    """TransformerConfig fields that differ between CPU and GPU."""
    if has_cuda():
        return {}
    # Initialise weights on the CPU RNG (the CUDA-init path calls into CUDA kernels).
    return {"use_cpu_initialization": True}
