"""The entry point: weighted combination (hand-computed), overlong penalty, presets, config errors, and that
nothing in a batch can make score() raise."""
from __future__ import annotations

import pytest

from r1mega.config.base import ConfigError
from r1mega.config.rewards import (FormatRewardConfig, LanguageRewardConfig, OverlongConfig, RewardsConfig,
                                   CodeRewardConfig, MathRewardConfig, PoolConfig)
from r1mega.rewards import RewardComputer, RewardSample, overlong_penalty


@pytest.mark.parametrize("length,want", [(None, 0.0), (0, 0.0), (900, 0.0), (901, -0.01), (950, -0.5),
                                         (1000, -1.0), (1001, -1.0), (5000, -1.0)])
def test_overlong_penalty_hand_values(length, want):
    # L_max = 1000, L_cache = 100: 0 up to 900, then (900 - L) / 100
    assert overlong_penalty(length, 1000, 100) == pytest.approx(want)


def test_weighted_combination_hand_computed(computer):
    cfg = RewardsConfig(
        weights={"math": {"accuracy": 2.0, "format": 0.5, "language": 1.0}},
        format=FormatRewardConfig(mode="partial"),
        language=LanguageRewardConfig(target="en"),
        overlong=OverlongConfig(enabled=True, cache_tokens=100, weight=0.5))
    rc = computer(cfg)
    # correct (1), format partial 0.75 (text before <think>), language 3/9, length 950 of 1000 -> -0.5
    s1 = RewardSample("Sure. <think>Let me compute 3+4. 所以答案是七</think><answer>7</answer>", "math", "7",
                      response_tokens=950, max_tokens=1000)
    # wrong (0), format 1, language 1, short
    s2 = RewardSample("<think>Adding three and four.</think><answer>8</answer>", "math", "7",
                      response_tokens=10, max_tokens=1000)
    out = rc.score([s1, s2])
    want1 = 2.0 * 1.0 + 0.5 * 0.75 + 1.0 * (3 / 9) + 0.5 * -0.5
    want2 = 2.0 * 0.0 + 0.5 * 1.0 + 1.0 * 1.0
    assert out.totals == [pytest.approx(want1), pytest.approx(want2)]
    assert out.components["accuracy"] == [1.0, 0.0]
    assert out.components["format"] == [0.75, 1.0]
    assert out.components["language"] == [pytest.approx(1 / 3), 1.0]
    assert out.components["overlong"] == [-0.5, 0.0]
    assert out.metrics["reward/total/mean"] == pytest.approx((want1 + want2) / 2)
    assert out.metrics["reward/accuracy/mean"] == 0.5


def test_presets_r1_zero_and_stage2(computer):
    resp = "<think>Let me compute 3+4. 所以答案是七</think><answer>7</answer>"
    zero = computer(RewardsConfig(preset="r1_zero")).score([RewardSample(resp, "math", "7")])
    stage2 = computer(RewardsConfig(preset="r1_stage2")).score([RewardSample(resp, "math", "7")])
    assert zero.totals == [2.0] and "language" not in zero.components
    assert stage2.totals == [pytest.approx(2.0 + 3 / 9)]


def test_global_overlong_max_tokens_overrides_sample():
    cfg = RewardsConfig(preset="accuracy_only", overlong=OverlongConfig(enabled=True, cache_tokens=10, max_tokens=100))
    rc = RewardComputer(cfg)
    out = rc.score([RewardSample("<answer>x</answer>", "mcq", "A", response_tokens=95, max_tokens=10_000)])
    assert out.totals == [pytest.approx(-0.5)]
    rc.close()


def test_bad_samples_and_failures_never_raise(computer):
    rc = computer(RewardsConfig(preset="r1_zero"))
    batch = [
        RewardSample("<think>a</think><answer>1</answer>", "math", "1"),
        {"response": None, "task_type": "math"},                          # not a string
        {"response": "x", "task_type": "poetry"},                         # unknown task type
        RewardSample("<answer>1</answer>", "gym", metadata={}),            # gym without its entry
        RewardSample("<answer>```python\nx=1\n```</answer>", "code", gold={"nothing": 1}),  # bad spec
        RewardSample("<think>a</think><answer>2</answer>", "math", None),  # no gold
        {"response": "<think>a</think><answer>(A)</answer>", "task": "mcq", "gold": "A"},
    ]
    out = rc.score(batch)
    assert out.totals == [2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0]
    assert out.metrics["reward/errors"] == 4   # None response, unknown type, gym entry, code spec
    assert rc.counters["errors"] >= 4


def test_timeouts_are_counted_not_raised(computer):
    cfg = RewardsConfig(preset="accuracy_only", math=MathRewardConfig(timeout_s=1.5, verify_timeout_s=1))
    rc = computer(cfg)
    rc.pool  # noqa: B018 - started
    from r1mega.rewards.pool import Task

    out = rc.pool.run([Task("sleep", (30,), 0.5)])
    assert out[0].status == "timeout"
    res = rc.score([RewardSample(r"\boxed{9^{9^{9^{9^{9}}}}}", "math", "1")])
    assert res.totals == [0.0]


@pytest.mark.parametrize("cfg,where", [
    (RewardsConfig(preset="nope"), "rewards.preset"),
    (RewardsConfig(weights={"math": {"acuracy": 1}}), "rewards.weights.math"),
    (RewardsConfig(weights={"poetry": {"accuracy": 1}}), "rewards.weights"),
    (RewardsConfig(format=FormatRewardConfig(mode="loose")), "rewards.format.mode"),
    (RewardsConfig(math=MathRewardConfig(verify_timeout_s=10, timeout_s=5)), "rewards.math.verify_timeout_s"),
    (RewardsConfig(code=CodeRewardConfig(backend="docker")), "rewards.code.backend"),
    (RewardsConfig(code=CodeRewardConfig(sandbox_uid=0)), "rewards.code.sandbox_uid"),
    (RewardsConfig(overlong=OverlongConfig(cache_tokens=0)), "rewards.overlong.cache_tokens"),
    (RewardsConfig(overlong=OverlongConfig(max_tokens=10, cache_tokens=100)), "rewards.overlong.max_tokens"),
    (RewardsConfig(pool=PoolConfig(start_method="thread")), "rewards.pool.start_method"),
])
def test_config_errors_name_the_field(cfg, where):
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert e.value.where == where


def test_default_config_is_valid_and_weights_resolve():
    cfg = RewardsConfig()
    cfg.validate()
    assert cfg.task_weights("math") == {"accuracy": 1.0, "format": 1.0}
    assert RewardsConfig(preset="r1_stage2").task_weights("code") == {"accuracy": 1.0, "format": 1.0, "language": 1.0}
