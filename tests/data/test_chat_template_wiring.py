"""The stages derive rewards.format.think_prefilled from their template: a hand-set value that contradicts
it stops GRPO and rejection sampling at start-up, before any model is built."""
from __future__ import annotations

import pytest

from r1mega.config.base import ConfigError
from r1mega.config.loader import load_config

STAGES = ('pipeline.stages=[{"name": "rl", "kind": "grpo", "steps": 1}, '
          '{"name": "rej", "kind": "rejection_sampling", "init_from": "rl"}]')


def test_contradicting_think_prefilled_stops_grpo_and_rejection(tmp_path):
    from r1mega.pipeline.grpo import GRPOStage
    from r1mega.pipeline.rejection import run_stage

    cfg = load_config(None, [f"pipeline.run_dir={tmp_path}", STAGES, "rewards.format.think_prefilled=true",
                             "data.template=r1_zero"], validate=False)
    with pytest.raises(ConfigError, match="rewards.format.think_prefilled.*'r1_zero' do not end with <think>"):
        GRPOStage(cfg.for_stage(cfg.stage("rl")), cfg.stage("rl"))
    with pytest.raises(ConfigError, match="rewards.format.think_prefilled"):
        run_stage(cfg, "rej")
