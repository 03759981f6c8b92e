"""The GRPO loop learns: the real GRPO stage (Megatron rollout engine, group advantages, old-policy
log-probs, clipped surrogate, optimizer step, refit) on a reward that is easy to raise. A sign or
masking error anywhere in the chain leaves the reward flat or pushes it down."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow


class HalfVocabReward:
    """Reward = share of the response's tokens with an odd id (about a third for this random model)."""

    def __init__(self, tok):
        self.tok = tok

    def score(self, samples):
        totals = []
        for s in samples:
            ids = self.tok.encode(s.response, add_special_tokens=False)
            totals.append(sum(i % 2 == 1 for i in ids) / max(1, len(ids)))
        return SimpleNamespace(totals=totals, components={"accuracy": totals}, metrics={})

    def close(self):
        pass


def test_grpo_raises_the_reward(tmp_path):
    from r1mega.config import load_config
    from r1mega.pipeline.grpo import GRPOStage
    from r1mega.platform.distributed import destroy

    cfg = load_config(None, [
        "model.preset=tiny-dense", "model.num_layers=1", "data.seq_length=160", "data.tasks=[arith]",
        "data.difficulties=[1]", "rollout.engine=megatron", "rollout.max_new_tokens=6", "rollout.stop=[]",
        "grpo.group_size=8", "grpo.prompts_per_step=4", "grpo.kl_coef=0.0", "optimizer.lr=1e-2",
        "optimizer.min_lr=1e-2", "optimizer.warmup_steps=0", "optimizer.decay_style=constant",
        "optimizer.micro_batch_size=16", "logging.tensorboard=false",
        f"pipeline.run_dir={tmp_path}", "pipeline.stages=[{name: rl, kind: grpo, steps: 12}]"])
    st = cfg.stage("rl")
    try:
        stage = GRPOStage(cfg.for_stage(st), st)
        stage.rewards = HalfVocabReward(stage.tok)
        rewards = [stage.iteration(it)["reward/total"] for it in range(12)]
    finally:
        destroy()
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert 0.15 < first < 0.5, rewards  # the random model's share of odd tokens
    assert last > first + 0.2, rewards
