"""Fixtures for the eval tests: one reward worker pool for the whole session (starting one costs ~1-2 s)."""
from __future__ import annotations

import pytest

from r1mega.config.rewards import CodeRewardConfig, GymRewardConfig, MathRewardConfig, RewardsConfig

# Generous limits: a loaded CI machine must not turn a slow first LaTeX parse into a wrong verdict
# (the timeout behaviour itself is tested with tight limits in test_eval_voting.py).
SLOW_OK = MathRewardConfig(timeout_s=60.0, verify_timeout_s=30)


@pytest.fixture(scope="session")
def eval_pool():
    from r1mega.rewards.pool import WorkerPool

    p = WorkerPool(num_workers=2, start_method="forkserver", worker_memory_mb=4096, preload=("r1mega.rewards.gym",))
    yield p
    p.close()


@pytest.fixture(scope="session")
def math_cfg():
    return SLOW_OK


@pytest.fixture(scope="session")
def eval_rewards(eval_pool):
    """A RewardComputer with the eval grading config (accuracy + format for every task type), on the shared pool."""
    from r1mega.eval.runner import eval_rewards_config
    from r1mega.rewards import RewardComputer

    cfg = RewardsConfig(math=SLOW_OK, gym=GymRewardConfig(timeout_s=60.0), code=CodeRewardConfig(wall_timeout_s=60.0))
    rc = RewardComputer(eval_rewards_config(cfg), pool=eval_pool)
    yield rc
    rc.close()
