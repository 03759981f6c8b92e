"""Fixtures for the reward tests: one worker pool for the whole session (starting one costs ~1-2 s)."""
from __future__ import annotations

import pytest

from r1mega.config.rewards import RewardsConfig
from r1mega.rewards import RewardComputer
from r1mega.rewards.pool import WorkerPool
from r1mega.rewards.sandbox import bwrap_works, resolve_python


@pytest.fixture(scope="session")
def pool():
    p = WorkerPool(num_workers=2, start_method="forkserver", worker_memory_mb=4096, preload=("r1mega.rewards.gym",))
    yield p
    p.close()


@pytest.fixture
def computer(pool):
    """make(cfg=None) -> a RewardComputer that uses the shared pool."""
    made = []

    def make(cfg: RewardsConfig = None) -> RewardComputer:
        rc = RewardComputer(cfg or RewardsConfig(), pool=pool)
        made.append(rc)
        return rc

    yield make


@pytest.fixture(scope="session")
def bwrap_ok():
    ok, why = bwrap_works(resolve_python("auto"), 65534)
    if not ok:
        pytest.skip(f"bubblewrap unusable here: {why}")
    return True
