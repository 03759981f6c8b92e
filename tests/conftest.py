"""Shared fixtures. Megatron state is per process: single-process tests share one world of 1;
multi-process tests run in torchrun subprocesses (tests/distributed)."""
from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")


@pytest.fixture
def megatron_world():
    """Megatron parallel_state for a world of one process (TP=PP=EP=1). Re-initialised when an earlier
    in-process test (an engine, an entry point's teardown) destroyed or replaced it."""
    from megatron.core import parallel_state as ps

    from r1mega.config.parallel import ParallelConfig
    from r1mega.platform.distributed import init_model_parallel

    if not ps.model_parallel_is_initialized() or ps.get_tensor_model_parallel_world_size() != 1:
        init_model_parallel(ParallelConfig(), seed=1234)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: tiny matmuls run faster on one, and are immune to OpenMP
    spin-waits on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
