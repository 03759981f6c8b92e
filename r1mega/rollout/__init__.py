"""Rollout engines: the interface the RL loop drives, the vLLM and Megatron-Core implementations,
the weight refit into vLLM and the rollout-vs-trainer mismatch check (see docs/rollout.md).

Importing this package is light: vLLM and Megatron are imported when an engine is built.
"""
from .engine import Completion, RefitStats, RolloutEngine, Rollouts, make_engine
from .mismatch import PolicyMismatchError, check_mismatch, check_rollouts, mismatch_stats
from .sampling import Sampling, sample_seed

__all__ = ["Completion", "PolicyMismatchError", "RefitStats", "RolloutEngine", "Rollouts", "Sampling",
           "check_mismatch", "check_rollouts", "make_engine", "mismatch_stats", "sample_seed"]
