"""Evaluation settings live in :mod:`r1mega.config.eval` (the ``eval`` section of the run config)."""
from r1mega.config.eval import *  # noqa: F401,F403
from r1mega.config.eval import EvalConfig, load_eval_config  # noqa: F401
