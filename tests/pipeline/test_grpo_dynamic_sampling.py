"""The GRPO stage's dynamic sampling under data parallelism: when the rounds run out, it trains on the kept
groups that split over the ranks and minibatches (instead of stopping), and reports the rewards over every
sampled group beside the kept ones. The sampling loop alone: fake prompts, engine and rewards, no model."""
from types import SimpleNamespace

import pytest


class FakePrompts:
    """Round r gives prompts 'r-0', 'r-1', ...; the informative ones (unequal rewards) are listed in INFORMATIVE."""

    def batch(self, it, n, offset=0):
        from r1mega.data.prompts import PromptItem

        return [PromptItem(f"{offset}-{k}", [5, 6, k], "1", "math", {"id": f"{offset}-{k}"}) for k in range(n)]


INFORMATIVE = {"0-0", "0-2", "1-1"}  # 2 groups in round 0, 1 in round 1: 3 kept groups for P = 4


class FakeRollout:
    def generate(self, ids, sampling, n, **kw):
        from r1mega.rollout import Completion, Rollouts

        return Rollouts(ids, n, [Completion(i, j, [7, 8], [-0.1, -0.2], "x", "stop") for i in range(len(ids))
                                 for j in range(n)])


class FakeRewards:
    """An informative group gets rewards (1, 0); the others (1, 1) in round 0 and (0, 0) in round 1."""

    def score(self, samples):
        totals = [(1.0 - j) if s.prompt in INFORMATIVE else float(s.prompt.startswith("0"))
                  for k, s in enumerate(samples) for j in [k % 2]]
        return SimpleNamespace(totals=totals, components={"accuracy": totals}, metrics={})


def _stage(tmp_path, dp: int, minibatch: int):
    from r1mega.config import load_config
    from r1mega.pipeline.grpo import GRPOStage

    cfg = load_config(None, ["model.preset=tiny-dense", "grpo.group_size=2", "grpo.prompts_per_step=4",
                             "grpo.dynamic_sampling=true", "grpo.dynamic_sampling_max_rounds=2",
                             f"grpo.minibatch_size={minibatch}", "grpo.kl_coef=0.0", f"pipeline.run_dir={tmp_path}"])
    st = object.__new__(GRPOStage)  # the sampling loop only: no model, no engine
    st.cfg, st.G, st.P, st.model_reward = cfg, 2, 4, None
    st.prompts, st.rollout, st.rewards = FakePrompts(), FakeRollout(), FakeRewards()
    st.sampling = SimpleNamespace(max_new_tokens=4)
    st.policy = SimpleNamespace(dp_rank_size=lambda: (0, dp))
    return st


def test_grpo_stage_trims_a_short_batch_and_reports_all_sampled_groups(tmp_path):
    st = _stage(tmp_path, dp=2, minibatch=4)  # 2 ranks, 2 minibatches of 4 rollouts: unit 2 groups
    items, ro, rewards, comps, counters, _, _ = st._generate_rounds(0)  # the sampling loop (no trainer to offload)
    assert [i.text for i in items] == ["0-0", "0-2"]  # 3 informative groups, the first 2 kept
    assert [c.prompt_index for c in ro.completions] == [0, 0, 1, 1] and rewards == [1.0, 0.0, 1.0, 0.0]
    assert len(comps) == 4
    assert counters["dynamic_sampling/groups_sampled"] == 8      # 4 prompts in round 0, 2 x 2 missing in round 1
    assert counters["dynamic_sampling/groups_informative"] == 3
    assert counters["dynamic_sampling/groups_kept"] == 2 and counters["dynamic_sampling/groups_trimmed"] == 1
    assert counters["dynamic_sampling/rounds"] == 2
    # all 16 sampled rewards: round 0 groups (1,0) (1,1) (1,0) (1,1) = 6, round 1 (0,0) (1,0) (0,0) (0,0) = 1
    assert counters["sampled/reward/total"] == pytest.approx(7 / 16)
    assert counters["sampled/reward/accuracy"] == pytest.approx(7 / 16)
    assert counters["sampled/prompts/math_frac"] == 1.0
    # each rank's 2 rows make the step's 2 updates (one row each), as a full batch would (4 rows, 2 each)
    assert st._local_minibatch(2) == 1 and st._local_minibatch(4) == 2


def test_grpo_stage_keeps_a_short_batch_that_splits(tmp_path):
    st = _stage(tmp_path, dp=1, minibatch=8)  # one rank, one update: nothing to trim
    items, ro, rewards, _, counters, _, _ = st._generate_rounds(0)  # the sampling loop (no trainer to offload)
    assert [i.text for i in items] == ["0-0", "0-2", "1-1"] and len(rewards) == 6
    assert counters["dynamic_sampling/groups_trimmed"] == 0 and counters["dynamic_sampling/groups_kept"] == 3
