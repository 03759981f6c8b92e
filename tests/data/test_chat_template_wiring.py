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


def test_eval_runner_derives_think_prefill_and_stop_ids(tmp_path):
    import dataclasses

    from chat_fixtures import EOS_DS, chatml_dir, deepseek_dir

    from r1mega.config.rewards import RewardsConfig
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.eval.runner import EvalRunner

    ds = load_tokenizer(deepseek_dir(tmp_path))
    r = EvalRunner(None, ds, template="hf_chat", k=1)
    assert r.rewards_cfg.format.think_prefilled is True  # the template's generation prompt opens <think>
    assert r.sampling.stop_token_ids == (ds.convert_tokens_to_ids(EOS_DS),)
    chatml = load_tokenizer(chatml_dir(tmp_path))
    r = EvalRunner(None, chatml, template="hf_chat", k=1)
    assert r.rewards_cfg.format.think_prefilled is False
    assert r.sampling.stop_token_ids == (2, chatml.convert_tokens_to_ids("<|im_end|>"))
    hand_set = RewardsConfig()
    hand_set = dataclasses.replace(hand_set, format=dataclasses.replace(hand_set.format, think_prefilled=True))
    with pytest.raises(ConfigError, match="rewards.format.think_prefilled"):
        EvalRunner(None, chatml, template="hf_chat", k=1, rewards_cfg=hand_set)
    assert EvalRunner(None, chatml, template="hf_chat", think_prefill=True, k=1,
                      rewards_cfg=hand_set).rewards_cfg.format.think_prefilled is True
