"""Router replay in the GRPO step (rollout.router_replay), on the tiny MoE model with the Megatron rollout
engine. The trainer's routing is forced away from the behaviour policy's (its expert bias moved right after
the rollout for R3, right after the old-log-prob forward for R2); with replay every trainer forward of the
step (old, reference, both minibatch updates) chooses exactly the carried experts and the mismatch is gone.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from test_grpo_invariants import TextReward, _cfg  # noqa: E402
from test_router_replay import Chosen, _in_batch_order, _shift_bias  # noqa: E402

from r1mega.train import router_replay as rr  # noqa: E402

pytestmark = pytest.mark.slow

MOE = ("model.preset=tiny", "model.num_layers=3", "grpo.minibatch_size=4", "grpo.kl_coef=0.01")


@pytest.fixture
def destroy():
    from r1mega.platform.distributed import destroy

    yield destroy
    destroy()


def _stage(cfg):
    from r1mega.pipeline.grpo import GRPOStage

    st = cfg.stage("rl")
    stage = GRPOStage(cfg.for_stage(st), st)
    stage.rewards.close()
    stage.rewards = TextReward(by_position=True)
    return stage


def _spy(stage, engines):
    """Every forward's chosen experts, and each one's batch (for the routing it carried)."""
    seen = []
    for e in engines:
        for name in ("logprobs", "train_step"):
            real = getattr(e, name)

            def call(batch, *a, _real=real, _e=e, _name=name, **kw):
                with Chosen(_e) as ch:
                    out = _real(batch, *a, **kw)
                seen.append((_name, dict(batch), ch, out))  # (a copy: the caller adds keys later)
                return out
            setattr(e, name, call)
    return seen


@pytest.mark.parametrize("mode", ["r3", "none"])
def test_r3_every_forward_replays_the_engine_routing(tmp_path, destroy, mode):
    stage = _stage(_cfg(tmp_path, mode, *MOE, f"rollout.router_replay={mode}", "rollout.mismatch_threshold=null"))
    generate = stage.rollout.generate

    def drifted(*a, **kw):  # the engine sampled; now the trainer routes differently
        out = generate(*a, **kw)
        _shift_bias(stage.policy, seed=5)
        _shift_bias(stage.ref, seed=5)
        return out
    stage.rollout.generate = drifted
    seen = _spy(stage, [stage.policy, stage.ref])
    m = stage.iteration(0)
    print(f"\n{mode}: rollout/trainer mismatch mean {m['rollout_mismatch/mean_abs']:.3e} max "
          f"{m['rollout_mismatch/max_abs']:.3e}")
    assert [s[0] for s in seen] == ["logprobs", "logprobs", "train_step", "train_step"]  # old, ref, 2 updates
    if mode == "none":
        assert all("routed_experts" not in s[1] for s in seen)
        assert m["rollout_mismatch/mean_abs"] > 0.05
        return
    assert m["rollout_mismatch/mean_abs"] < 1e-5 and m["rollout_mismatch/max_abs"] < 1e-4
    full = seen[0][1]["routed_experts"]
    assert full.shape[2:] == (2, 2) and full.dtype == torch.uint8
    for name, batch, ch, _ in seen:
        fed = torch.arange(batch["tokens"].size(1))[None] < batch["lengths"][:, None] - 1  # inputs the engine routed
        assert rr.agreement(batch["routed_experts"], _in_batch_order(ch.microbatches(), batch), fed) == 1.0, name


def test_r2_updates_replay_the_old_forward(tmp_path, destroy):
    stage = _stage(_cfg(tmp_path, "r2", *MOE, "rollout.router_replay=r2"))
    seen = _spy(stage, [stage.policy, stage.ref])
    logprobs = stage.policy.logprobs

    def then_drift(batch, **kw):  # after the recording forward, the policy's routing moves
        out = logprobs(batch, **kw)
        if kw.get("record_routing"):
            _shift_bias(stage.policy, seed=7)
        return out
    stage.policy.logprobs = then_drift
    m = stage.iteration(0)
    names = [s[0] for s in seen]
    assert names == ["logprobs", "logprobs", "train_step", "train_step"]
    old_lp, routed = seen[0][3]
    assert "routed_experts" not in seen[0][1] and routed.shape[2:] == (2, 2)
    for _, batch, ch, _ in seen[1:]:  # the reference and both updates replay the recording
        assert torch.equal(batch["routed_experts"], routed[:batch["tokens"].size(0)]) or \
            torch.equal(batch["routed_experts"], routed[-batch["tokens"].size(0):])
        real = torch.arange(batch["tokens"].size(1))[None] < batch["lengths"][:, None]
        assert rr.agreement(batch["routed_experts"], _in_batch_order(ch.microbatches(), batch), real) == 1.0
    # the first update starts from the old forward's weights and routing: its ratio is exactly 1
    first = seen[2][3].metrics
    assert abs(first["ratio/max"] - 1) < 1e-5 and abs(first["ratio/min"] - 1) < 1e-5
    assert m["train/updates"] == 2.0
