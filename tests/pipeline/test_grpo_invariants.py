"""The GRPO loop's invariants (issue 20), on the tiny dense model with the Megatron rollout engine:

* old log-probs are computed once per step: identical for every minibatch update, so the second update of a
  split step is off-policy (ratio != 1); the step's metrics combine every update (means weighted, max as max);
* dynamic sampling keeps groups intact: the advantages of group i's rows are the group-normalised rewards of
  group i's own completions, even when the engine returns completions out of order;
* the reference is frozen between refreshes (byte-equal), becomes the policy at a refresh, and a resumed run
  gets the right one back: the stage's initial weights (no init checkpoint: the copy saved at step 0), or
  the policy of the last refresh;
* top-k / top-p sampling (engine log-probs of the filtered distribution) does not stop a healthy run at the
  rollout/trainer mismatch check; the figures are still logged and the skip is said.
"""
from __future__ import annotations

import zlib
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.slow


class TextReward:
    """A reward of (prompt, response) only: prompts whose hash is 0 mod 3 give their whole group 0 (dynamic
    sampling drops them), the others the parity of the response's hash (or of its position when ``by_position``:
    every group of 4 then has two 1s and two 0s)."""

    def __init__(self, by_position: bool = False):
        self.by_position = by_position

    @staticmethod
    def value(prompt: str, response: str) -> float:
        if zlib.crc32(prompt.encode()) % 3 == 0:
            return 0.0
        return float(zlib.crc32(response.encode()) % 2)

    def score(self, samples):
        totals = [float(k % 2) if self.by_position else self.value(s.prompt, s.response) for k, s in enumerate(samples)]
        return SimpleNamespace(totals=totals, components={"accuracy": totals}, metrics={})

    def close(self):
        pass


def _cfg(tmp_path, run: str, *extra: str, steps: int = 1):
    from r1mega.config import load_config

    return load_config(None, [
        "model.preset=tiny-dense", "model.num_layers=1", "data.seq_length=128", "data.tasks=[arith]",
        "data.difficulties=[1]", "rollout.engine=megatron", "rollout.max_new_tokens=6", "rollout.stop=[]",
        "grpo.group_size=4", "grpo.prompts_per_step=2", "grpo.kl_coef=0.0", "optimizer.lr=1e-2",
        "optimizer.min_lr=1e-2", "optimizer.warmup_steps=0", "optimizer.decay_style=constant",
        "optimizer.micro_batch_size=4", "logging.tensorboard=false", "logging.progress_bar=false",
        f"pipeline.run_dir={tmp_path / run}", f"pipeline.stages=[{{name: rl, kind: grpo, steps: {steps}}}]", *extra])


def _stage(cfg, reward=None):
    from r1mega.pipeline.grpo import GRPOStage

    st = cfg.stage("rl")
    stage = GRPOStage(cfg.for_stage(st), st)
    stage.rewards.close()
    stage.rewards = reward or TextReward(by_position=True)
    return stage


def _params(engine) -> dict:
    return {n: p.detach().clone() for c in engine.chunks for n, p in getattr(c, "module", c).named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.fixture
def destroy():
    from r1mega.platform.distributed import destroy

    yield destroy
    destroy()


def test_old_logprobs_are_fixed_for_the_step_and_metrics_cover_every_update(tmp_path, destroy):
    stage = _stage(_cfg(tmp_path, "mb", "grpo.minibatch_size=4"))  # 8 rollouts, 2 updates (recomputed old)
    T = stage.cfg.grpo.temperature
    forwards, updates = [], []
    real_logprobs, real_step = stage.policy.logprobs, stage.policy.train_step

    def logprobs(batch, **kw):
        out = real_logprobs(batch, **kw)
        forwards.append(out.clone())
        return out

    def train_step(part, loss_fn, **kw):
        now = real_logprobs(part, temperature=T)  # the weights this update starts from
        st = real_step(part, loss_fn, **kw)
        updates.append(SimpleNamespace(old=part["old_logprobs"].clone(), now=now, mask=part["loss_mask"].bool(), st=st))
        return st

    stage.policy.logprobs, stage.policy.train_step = logprobs, train_step
    m = stage.iteration(0)
    assert len(forwards) == 1 and len(updates) == 2 and m["train/updates"] == 2.0
    old = forwards[0]  # the step's one behaviour forward, before any update
    assert torch.equal(updates[0].old, old[:4]) and torch.equal(updates[1].old, old[4:])  # never recomputed
    second = updates[1]
    moved = (second.now - second.old)[second.mask].abs().max()
    assert moved > 1e-3  # the first update changed the policy the second one starts from...
    r = second.st.metrics
    assert r["ratio/max"] > 1 + 1e-4 or r["ratio/min"] < 1 - 1e-4  # ...so its ratio is off 1

    # the logged figures combine both updates: (sum, count) means, max of maxes, min of mins
    s0, s1 = updates[0].st, updates[1].st
    for k in ("loss/pg", "ratio/mean", "entropy/mean", "response/length"):
        (a, n), (b, c) = s0.sums[k].tolist(), s1.sums[k].tolist()
        assert m[f"train/{k}"] == pytest.approx((a + b) / (n + c), rel=1e-6), k
    assert m["train/loss/pg"] != pytest.approx(s1.metrics["loss/pg"], rel=1e-3)  # not the last update's alone
    assert m["train/ratio/max"] == max(s0.metrics["ratio/max"], s1.metrics["ratio/max"])
    assert m["train/ratio/min"] == min(s0.metrics["ratio/min"], s1.metrics["ratio/min"])
    assert m["train/grad_norm"] == pytest.approx((s0.grad_norm + s1.grad_norm) / 2)
    assert m["train/grad_norm_max"] == max(s0.grad_norm, s1.grad_norm)


@pytest.mark.parametrize("order", ["engine", "reversed"])
def test_dynamic_sampling_keeps_each_group_with_its_own_rewards(tmp_path, destroy, order):
    from r1mega.algorithms import group_advantages
    from r1mega.rollout import Rollouts

    stage = _stage(_cfg(tmp_path, order, "grpo.dynamic_sampling=true", "grpo.prompts_per_step=4"),
                   TextReward())
    G = stage.G
    if order == "reversed":  # a (legal) engine that returns the completions in another order than prompt-major
        real = stage.rollout.generate

        def generate(*a, **kw):
            ro = real(*a, **kw)
            return Rollouts(ro.prompts, ro.n, list(reversed(ro.completions)), ro.seconds, ro.engine, ro.sampling)

        stage.rollout.generate = generate
    seen = {}
    real_gen, real_shard = stage._generate_scored, stage._shard
    stage._generate_scored = lambda it: seen.setdefault("scored", real_gen(it))
    stage._shard = lambda batch: real_shard(seen.setdefault("batch", batch))
    stage.iteration(0)
    items, ro, rewards = seen["scored"][:3]
    batch = seen["batch"]
    assert 0 < len(items) <= 4 and len(ro.completions) == len(items) * G == batch["tokens"].size(0)
    dropped = sum(1 for i in items if zlib.crc32(i.text.encode()) % 3 == 0)
    assert dropped == 0  # every kept group has unequal rewards by construction of TextReward on its prompt
    # row k of the training batch: its prompt + completion, its reward recomputed from its own text
    mine = []
    for k, c in enumerate(ro.completions):
        assert k // G == c.prompt_index  # groups contiguous, in item order
        seq = list(ro.prompts[c.prompt_index]) + list(c.token_ids)
        assert ro.prompts[c.prompt_index] == list(items[c.prompt_index].ids)
        assert batch["tokens"][k, :len(seq) - 1].tolist() == seq[:-1]
        mine.append(TextReward.value(items[c.prompt_index].text, c.text))
    assert rewards == mine
    want = group_advantages(torch.tensor(mine), G, mode=stage.cfg.grpo.advantage_mode, eps=stage.cfg.grpo.adv_epsilon)
    torch.testing.assert_close(batch["advantages"], want, atol=0, rtol=0)
    assert (want != 0).any()


def test_reference_is_frozen_between_refreshes_and_restored_on_resume(tmp_path, destroy):
    """kl on, refresh every 2 iterations, policy checkpoints every 3 (and at the refresh): the reference is byte-equal
    to the initial weights through iteration 2, the policy of step 2 after it; stopped after 3 iterations and
    resumed, the run gets the step-2 reference back (neither the initial weights nor the step-3 policy)."""
    extra = ("grpo.kl_coef=0.05", "grpo.ref_refresh_interval=2", "checkpoint.save_interval=3")
    stage = _stage(_cfg(tmp_path, "ref", *extra, steps=5))
    ref0 = _params(stage.ref)
    assert _same(ref0, _params(stage.policy))  # no init checkpoint: the reference starts as the initial policy
    assert (stage.out / "reference" / "step_00000000").is_dir()  # ...and is saved, for a resume
    snaps = []
    real = stage.iteration

    def iteration(it):
        if it == 3:
            raise KeyboardInterrupt("stopped")
        out = real(it)
        snaps.append((_params(stage.ref), _params(stage.policy)))
        return out

    stage.iteration = iteration
    with pytest.raises(KeyboardInterrupt):
        stage.run()
    (ref1, pol1), (ref2, pol2), (ref3, pol3) = snaps
    assert _same(ref1, ref0) and not _same(pol1, ref0)  # between refreshes: untouched
    assert _same(ref2, pol2) and not _same(ref2, ref0)  # refreshed at step 2
    assert _same(ref3, ref2) and not _same(pol3, ref2)
    ckpts = sorted(p.name for p in (stage.out / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000002", "step_00000003"]  # step 2: saved with its refresh
    destroy()
    resumed = _stage(_cfg(tmp_path, "ref", *extra, steps=5))
    assert resumed.start == 3
    assert _same(_params(resumed.ref), ref2) and _same(_params(resumed.policy), pol3)


def test_resume_exactly_at_a_refresh_takes_the_policy_it_loads(tmp_path, destroy):
    """Stopped right after the refresh step's checkpoint, before the reference's own save of that step (removed
    here, as a kill between the two saves would leave it): the resumed reference is the step-2 policy."""
    import shutil

    extra = ("grpo.kl_coef=0.05", "grpo.ref_refresh_interval=2", "checkpoint.save_interval=5")
    stage = _stage(_cfg(tmp_path, "at", *extra, steps=4))
    real = stage.iteration
    stage.iteration = lambda it: real(it) if it < 2 else (_ for _ in ()).throw(KeyboardInterrupt("stopped"))
    with pytest.raises(KeyboardInterrupt):
        stage.run()
    pol2 = _params(stage.policy)
    assert _same(_params(stage.ref), pol2)
    shutil.rmtree(stage.out / "reference" / "step_00000002")
    destroy()
    resumed = _stage(_cfg(tmp_path, "at", *extra, steps=4))
    assert resumed.start == 2 and _same(_params(resumed.ref), pol2)


def test_resume_without_init_keeps_the_initial_reference(tmp_path, destroy):
    extra = ("grpo.kl_coef=0.05", "checkpoint.save_interval=1")
    stage = _stage(_cfg(tmp_path, "noinit", *extra, steps=3))
    ref0 = _params(stage.ref)
    real = stage.iteration
    stage.iteration = lambda it: real(it) if it == 0 else (_ for _ in ()).throw(KeyboardInterrupt("stopped"))
    with pytest.raises(KeyboardInterrupt):
        stage.run()
    trained = _params(stage.policy)
    assert not _same(trained, ref0)
    destroy()
    resumed = _stage(_cfg(tmp_path, "noinit", *extra, steps=3))
    assert resumed.start == 1 and _same(_params(resumed.policy), trained)
    assert _same(_params(resumed.ref), ref0)  # the stage's initial weights, not the trained policy
    destroy()
    # a run whose initial weights were never saved (an older r1mega) is refused, clearly
    import shutil

    from r1mega.train.checkpoint import CheckpointError

    shutil.rmtree(resumed.out / "reference")
    with pytest.raises(CheckpointError, match=r"rl: resuming at iteration 1, the KL reference must be the stage's "
                                              r"initial weights.*no init checkpoint"):
        _stage(_cfg(tmp_path, "noinit", *extra, steps=3))


@pytest.mark.parametrize("mode", ["auto", "recompute"])
def test_filtered_sampling_skips_the_mismatch_check_and_says_so(tmp_path, destroy, capsys, mode):
    # top-k 2 on a near-uniform random model: the engine's log-probs are ~log(1/2), the trainer's ~log(1/V)
    stage = _stage(_cfg(tmp_path, mode, "rollout.top_k=2", f"grpo.old_logprobs={mode}"))
    assert "mismatch check is skipped" in capsys.readouterr().out
    m = stage.iteration(0)
    assert m["rollout_mismatch/checked"] == 0.0
    assert m["rollout_mismatch/mean_abs"] > 1.0 > stage.cfg.rollout.mismatch_threshold  # would have stopped the run
    assert m["train/updates"] == 1.0
