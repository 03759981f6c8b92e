"""GRPOConfig: defaults (the R1 recipe), help strings, and ConfigError naming the field."""
import dataclasses

import pytest

from r1mega.config.base import ConfigError, field_help
from r1mega.config.grpo import GRPOConfig


def test_defaults_are_the_r1_recipe_and_valid():
    c = GRPOConfig()
    c.validate()
    assert (c.group_size, c.prompts_per_step, c.temperature, c.kl_coef, c.kl_estimator) == (16, 32, 1.0, 0.001, "k3")
    assert (c.clip_eps_low, c.clip_eps_high, c.dual_clip_c) == (0.2, 0.2, None)
    assert c.advantage_mode == "group-norm" and c.loss_agg_mode == "seq-mean-token-mean"
    assert c.ref_refresh_interval == 400 and c.rollouts_per_step == 512 and c.updates_per_step == 1
    assert c.loss_norm_constant is None and c.mismatch_token_threshold is None and not c.tis
    assert GRPOConfig(minibatch_size=128, ppo_epochs=2).updates_per_step == 8


def test_old_logprobs_reused_only_for_one_update_per_step():
    assert GRPOConfig().old_logprobs == "auto" and GRPOConfig().reuse_old_logprobs
    assert GRPOConfig(minibatch_size=512).reuse_old_logprobs           # all rollouts in one step
    assert not GRPOConfig(minibatch_size=256).reuse_old_logprobs       # two updates: the second is off-policy
    assert not GRPOConfig(ppo_epochs=2).reuse_old_logprobs
    assert not GRPOConfig(old_logprobs="recompute").reuse_old_logprobs


def test_every_field_documented():
    for f in dataclasses.fields(GRPOConfig):
        assert len(field_help(GRPOConfig, f.name)) > 10, f.name


@pytest.mark.parametrize("kw,where", [
    (dict(group_size=0), "grpo.group_size"),
    (dict(group_size=True), "grpo.group_size"),
    (dict(kl_estimator="k4"), "grpo.kl_estimator"),
    (dict(loss_agg_mode="seq-mean"), "grpo.loss_agg_mode"),
    (dict(advantage_mode="ppo"), "grpo.advantage_mode"),
    (dict(dual_clip_c=1.0), "grpo.dual_clip_c"),
    (dict(clip_eps_high=-0.1), "grpo.clip_eps_high"),
    (dict(kl_coef=-1.0), "grpo.kl_coef"),
    (dict(minibatch_size=100), "grpo.minibatch_size"),
    (dict(tis_cap=0.5), "grpo.tis_cap"),
    (dict(mismatch_mask=True), "grpo.mismatch_mask"),
    (dict(ref_refresh_interval=0), "grpo.ref_refresh_interval"),
    (dict(temperature=0.0), "grpo.temperature"),
    (dict(loss_norm_constant=0), "grpo.loss_norm_constant"),
    (dict(mismatch_token_threshold=-1.0), "grpo.mismatch_token_threshold"),
    (dict(reward_granularity="token"), "grpo.reward_granularity"),
    (dict(old_logprobs="never"), "grpo.old_logprobs"),
])
def test_validate_names_the_field(kw, where):
    with pytest.raises(ConfigError) as e:
        GRPOConfig(**kw).validate()
    assert e.value.where == where
    assert str(e.value).startswith(where)
