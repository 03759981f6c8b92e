"""Shared fixtures. Megatron state is per process: single-process tests share one world of 1;
multi-process tests run in torchrun subprocesses (tests/distributed)."""
from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")


@pytest.fixture(scope="session")
def megatron_world():
    """Megatron parallel_state for a world of one process (TP=PP=EP=1), set up once per session."""
    from r1mega.config.parallel import ParallelConfig
    from r1mega.platform.distributed import init_model_parallel

    init_model_parallel(ParallelConfig(), seed=1234)
    yield
