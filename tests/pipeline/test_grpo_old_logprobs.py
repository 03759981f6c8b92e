"""Behaviour log-probs taken from the training forward (grpo.old_logprobs='auto', one update per step)
against the separate trainer forward ('recompute'): the same rollouts give the same update, and a
rollout engine that samples from other weights is refused before any weight, optimizer state or MoE
expert bias changes, in both modes. The tiny DeepSeek-V3-style MoE (MLA, routed experts with the
aux-loss-free bias), Megatron rollout engine, KL to a reference on."""
from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.slow


def _config(tmp_path, mode: str):
    from r1mega.config import load_config

    return load_config(None, [
        "model.preset=tiny", "model.num_layers=2", "data.seq_length=128", "data.tasks=[arith]",
        "data.difficulties=[1]", "rollout.engine=megatron", "rollout.max_new_tokens=8", "rollout.stop=[]",
        "grpo.group_size=4", "grpo.prompts_per_step=4", "grpo.kl_coef=0.001", f"grpo.old_logprobs={mode}",
        "optimizer.lr=1e-3", "optimizer.min_lr=1e-3", "optimizer.warmup_steps=0", "optimizer.decay_style=constant",
        "optimizer.micro_batch_size=8", "logging.tensorboard=false",
        f"pipeline.run_dir={tmp_path / mode}", "pipeline.stages=[{name: rl, kind: grpo, steps: 1}]"])


def _state(stage) -> dict:
    out = {n: p.detach().clone() for c in stage.policy.chunks for n, p in c.named_parameters()}
    out.update({n: b.detach().clone() for c in stage.policy.chunks for n, b in c.named_buffers() if "expert_bias" in n})
    return out


def _run(tmp_path, mode: str, scored=None, corrupt: bool = False):
    """One iteration in ``mode``; returns (scored rollouts, state before, state after or None, metrics or error)."""
    from r1mega.pipeline.grpo import GRPOStage
    from r1mega.platform.distributed import destroy
    from r1mega.rollout import Rollouts

    cfg = _config(tmp_path, mode)
    st = cfg.stage("rl")
    try:
        stage = GRPOStage(cfg.for_stage(st), st)
        if scored is None:
            scored = stage._generate_scored(0)
        if corrupt:  # the engine's log-probs of other weights: 0.5 nats per token off
            items, ro = scored[0], scored[1]
            bad = [dataclasses.replace(c, logprobs=[x - 0.5 for x in c.logprobs]) for c in ro.completions]
            scored = (items, Rollouts(ro.prompts, ro.n, bad), *scored[2:])
        stage._generate_scored = lambda it: scored
        before = _state(stage)
        step0 = stage.policy.step
        try:
            result = stage.iteration(0)
        except Exception as e:  # noqa: BLE001 - the caller checks the type
            assert stage.policy.step == step0
            return scored, before, _state(stage), e
        return scored, before, _state(stage), result
    finally:
        destroy()


def test_reused_old_logprobs_give_the_same_update(tmp_path):
    scored, before, after_rc, m_rc = _run(tmp_path, "recompute")
    _, before2, after_auto, m_auto = _run(tmp_path, "auto", scored=scored)
    for n in before:  # same starting weights (same seed, no init checkpoint)
        torch.testing.assert_close(before2[n], before[n], atol=0, rtol=0)
    assert m_auto["train/ratio/max"] == 1.0 and m_auto["train/ratio/min"] == 1.0   # exactly on-policy
    assert abs(m_rc["train/ratio/max"] - 1.0) < 1e-5                              # recomputed: ~1 to rounding
    for k in ("train/loss/pg", "train/loss/kl", "train/grad_norm", "reward/total"):
        assert m_auto[k] == pytest.approx(m_rc[k], rel=1e-4, abs=1e-7), k
    # the mismatch figures come from the training forward instead of the separate one: same weights, same values
    assert m_auto["rollout_mismatch/tokens"] == m_rc["rollout_mismatch/tokens"] > 0
    assert m_auto["rollout_mismatch/mean_abs"] == pytest.approx(m_rc["rollout_mismatch/mean_abs"], rel=1e-3, abs=1e-6)
    moved = 0
    for n in after_rc:
        # Adam's first step moves each weight by ~lr * sign(grad): a different sign would show as 2e-3
        torch.testing.assert_close(after_auto[n], after_rc[n], atol=2e-5, rtol=0, msg=n)
        moved += int((after_rc[n] - before[n]).abs().max() > 5e-4)
    assert moved > 10  # the update did move the weights
    assert any("expert_bias" in n and not torch.equal(after_rc[n], before[n]) for n in after_rc)


@pytest.mark.parametrize("mode", ["auto", "recompute"])
def test_mismatched_rollouts_are_refused_before_the_update(tmp_path, mode):
    from r1mega.rollout import PolicyMismatchError

    _, before, after, err = _run(tmp_path, mode, corrupt=True)
    assert isinstance(err, PolicyMismatchError), err
    assert "rl iteration 1" in str(err) and "0.5" in str(err)
    for n in before:  # weights and the aux-loss-free expert biases untouched
        torch.testing.assert_close(after[n], before[n], atol=0, rtol=0, msg=n)
