"""Bradley-Terry reward model: the loss by hand, the TP-safe score, a short training run that must
separate held-out pairs, config errors, and the GRPO reward path (RM score for general prompts, rule
rewards for reasoning ones)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from r1mega.algorithms import BradleyTerryLoss, bradley_terry, pair_rewards
from r1mega.config.base import ConfigError
from r1mega.config.rewards import RewardsConfig
from r1mega.config.run import RunConfig
from r1mega.config.schema import build


def _sp(x: float) -> float:  # softplus
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------ the loss
def test_bt_loss_hand_computed_values():
    # 3 pairs (6 rows); the score position is marked by loss_mask; pair 3 is padding (no mask)
    scores = torch.tensor([[9.0, 2.0, 0.0], [9.0, 1.0, 0.0],      # pair 1: rc=2,  rr=1   (at position 1)
                           [0.0, 0.0, 0.0], [7.0, 7.0, 0.5],      # pair 2: rc=0,  rr=0.5 (at position 2)
                           [5.0, 5.0, 5.0], [1.0, 1.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.float32)
    rc, rr, valid = pair_rewards(scores, mask)
    assert rc.tolist()[:2] == [2.0, 0.0] and rr.tolist()[:2] == [1.0, 0.5] and valid.tolist() == [True, True, False]
    loss, m = BradleyTerryLoss(0.0)(scores, {"loss_mask": mask})
    expect = (_sp(-1.0) + _sp(0.5)) / 2          # -log sigmoid(1) = 0.31326, -log sigmoid(-0.5) = 0.97408
    assert loss.item() == pytest.approx(expect, abs=1e-6) and loss.item() == pytest.approx(0.643672, abs=1e-5)
    assert m["rm/accuracy"].tolist() == [1.0, 2.0] and m["rm/margin"].tolist() == pytest.approx([0.5, 2.0])
    loss.backward()
    g = scores.grad
    assert g[0, 1].item() == pytest.approx(-1 / (1 + math.e) / 2, abs=1e-6)     # -sigmoid(-d)/P, d = 1
    assert g[1, 1].item() == pytest.approx(1 / (1 + math.e) / 2, abs=1e-6)
    assert g[4].abs().sum() == 0 and g[0, 0] == 0                              # padding and other positions
    # centring term, and the global normaliser (global_num_seqs rows = 2 * pairs of the whole batch)
    s2 = scores.detach()
    loss_c, _ = BradleyTerryLoss(0.1)(s2, {"loss_mask": mask, "global_num_seqs": torch.tensor(8.0)})
    assert loss_c.item() == pytest.approx((_sp(-1.0) + 0.1 * 9 + _sp(0.5) + 0.1 * 0.25) / 4, abs=1e-6)
    assert bradley_terry(torch.tensor([3.0]), torch.tensor([3.0])).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="even number"):
        BradleyTerryLoss()(scores[:3], {"loss_mask": mask[:3]})


def test_logit_diff_score_matches_full_logits(megatron_world):
    from r1mega.rewards.model_reward import score_batch, vocab_parallel_logit_diff

    logits = torch.randn(2, 5, 512, requires_grad=True)
    d = vocab_parallel_logit_diff(logits, 13, 15)
    assert torch.allclose(d, logits[..., 13] - logits[..., 15])
    d.sum().backward()
    assert logits.grad[..., 13].eq(1).all() and logits.grad[..., 15].eq(-1).all() and logits.grad.abs().sum() == 20
    b = score_batch([[1, 5, 7, 2], [1, 2]], pad_id=0)
    assert b["tokens"].tolist() == [[1, 5, 7, 2], [1, 2, 0, 0]]
    assert b["loss_mask"].tolist() == [[0, 0, 0, 1], [0, 1, 0, 0]]


# ----------------------------------------------------------------------------- config errors
def _cfg(data: dict) -> RunConfig:
    return build(RunConfig, data)


@pytest.mark.parametrize("section, where, msg", [
    ({"reward_model": {"kinds": {"correctness": 1, "style": 1}}}, "reward_model.kinds.style", "unknown pair kind"),
    ({"reward_model": {"kinds": {"format": 0}}}, "reward_model.kinds", "all weights are 0"),
    ({"reward_model": {"score_tokens": ["+"]}}, "reward_model.score_tokens", "two different"),
    ({"reward_model": {"score_tokens": ["+", "+"]}}, "reward_model.score_tokens", "two different"),
    ({"reward_model": {"difficulties": [0]}}, "reward_model.difficulties", "levels from 1..5"),
    ({"reward_model": {"center_coef": -1}}, "reward_model.center_coef", "non-negative"),
    ({"rewards": {"model_reward": {"normalize": "softmax"}}}, "rewards.model_reward.normalize", "sigmoid"),
    ({"rewards": {"weights": {"general": {"helpfulness": 1}}}}, "rewards.weights.general", "model"),
    ({"rewards": {"reward_model": ""}}, "rewards.reward_model", "stage:NAME"),
])
def test_section_errors(section, where, msg):
    with pytest.raises(ConfigError) as e:
        _cfg(section).validate()
    assert e.value.where == where and msg in e.value.message


PIPE = {"model": {"preset": "tiny-dense", "num_layers": 1}, "data": {"seq_length": 192}, "rollout": {"max_new_tokens": 16},
        "optimizer": {"micro_batch_size": 4, "global_batch_size": 4}}


def _pipe(stages: list, **extra) -> RunConfig:
    return _cfg({**PIPE, **extra, "pipeline": {"stages": stages}})


def test_pipeline_errors():
    rm = {"name": "rm", "kind": "reward_model", "steps": 2}
    rl = {"name": "rl", "kind": "grpo", "steps": 1,
          "overrides": {"data": {"tasks": ["arith", "nonreasoning"]}, "rewards": {"reward_model": "stage:rm"}}}
    _pipe([rm, rl]).validate()  # fine
    with pytest.raises(ConfigError, match="does not run before this one"):
        _pipe([rl, rm]).validate()
    with pytest.raises(ConfigError, match="is a pretrain stage, expected a reward_model stage"):
        _pipe([{"name": "rm", "kind": "pretrain", "steps": 2}, rl]).validate()
    no_rm = {**rl, "overrides": {"data": {"tasks": ["arith", "nonreasoning"]}}}
    with pytest.raises(ConfigError, match="no reward model is set") as e:
        _pipe([rm, no_rm]).validate()
    assert "rewards.reward_model" in str(e.value)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        _pipe([rm, {**rl, "overrides": {"rewards": {"reward_model": "/nonexistent/ckpt"}}}]).validate()


# ------------------------------------------------------------------ training on the tiny model

@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory):
    """A reward model trained from random init for 30 steps (8 pairs each) on format + language pairs."""
    import time

    from r1mega.pipeline.reward_model import run_stage

    run_dir = tmp_path_factory.mktemp("rm")
    cfg = _cfg({**{k: v for k, v in PIPE.items() if k != "rollout"},  # (no stage generates)
                "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 3, "weight_decay": 0.0,
                              "micro_batch_size": 8, "global_batch_size": 8},
                "logging": {"tensorboard": False, "progress_bar": False, "log_interval": 10},
                "checkpoint": {"save_interval": 0},
                "reward_model": {"num_pairs": 320, "eval_pairs": 64, "eval_interval": 0,
                                 "kinds": {"format": 1, "language": 1}},
                "pipeline": {"run_dir": str(run_dir), "stages": [{"name": "rm", "kind": "reward_model", "steps": 30}]}})
    cfg.validate()
    t = time.time()
    metrics = run_stage(cfg, "rm")
    return cfg, run_dir / "rm", metrics, time.time() - t


def test_reward_model_learns_held_out_pairs(trained_rm):
    cfg, out, m, seconds = trained_rm
    print(f"RM: eval_accuracy={m['eval_accuracy']:.3f} per kind "
          f"{ {k: v for k, v in m.items() if k.startswith('eval_accuracy/')} } in {seconds:.1f}s")
    assert m["eval_accuracy"] >= 0.85, m          # chance is 0.5
    assert m["eval_accuracy/format"] >= 0.75 and m["eval_accuracy/language"] >= 0.75
    assert m["eval_margin"] > 0 and m["pairs_eval"] == 64
    meta = json.loads((out / "checkpoints" / "step_00000030" / "r1mega_meta.json").read_text())
    assert meta["extra"]["kind"] == "reward_model" and meta["extra"]["score_tokens"] == ["+", "-"]
    rows = [json.loads(l) for l in (out / "pairs_eval.jsonl").read_text().splitlines()]
    train_keys = {json.loads(l)["key"] for l in (out / "pairs_train.jsonl").read_text().splitlines()}
    assert len(rows) == 64 and not train_keys & {r["key"] for r in rows}
    logged = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 30 and "eval_accuracy" in logged[-1] and "loss" in logged[0]


# ------------------------------------------------------------------------- the GRPO reward path
def test_grpo_reward_path_uses_rm_for_general_rule_rewards_for_reasoning(trained_rm):
    from r1mega.pipeline.grpo import gather_rewards
    from r1mega.rewards import RewardComputer, RewardSample
    from r1mega.rewards.model_reward import ModelRewardScorer, apply_model_rewards
    from r1mega.train.checkpoint import CheckpointManager

    cfg, out, _, _ = trained_rm
    rw = build(RewardsConfig, {"preset": "r1_all_scenario", "pool": {"num_workers": 1}})
    scorer = ModelRewardScorer(CheckpointManager(out / "checkpoints").latest(), cfg.parallel,
                               __import__("r1mega.data.tokenizer", fromlist=["x"]).load_tokenizer(str(out / "tokenizer")),
                               max_length=192)
    asked = []

    def spy(prompts, responses):
        asked.extend(responses)
        return scorer(prompts, responses)

    good_math = "<think> Step 1: 7+5=12. </think> <answer> 12 </answer>"
    bad_math = "<think> 第1步：7+5=13。 </think> <answer> 13 </answer>"
    helpful = "<think> </think> <answer> apple apple apple </answer>"
    refusal = "<think> </think> <answer> I cannot help with that. </answer>"
    samples = [RewardSample(response=good_math, task_type="math", gold="12", prompt="What is 7+5?"),
               RewardSample(response=bad_math, task_type="math", gold="12", prompt="What is 7+5?"),
               RewardSample(response=helpful, task_type="general", gold="apple apple apple",
                            prompt="Repeat the word apple three times."),
               RewardSample(response="apple apple apple", task_type="general", gold="apple apple apple",
                            prompt="Repeat the word apple three times.")]
    with RewardComputer(rw) as rc:
        totals, _, comps = gather_rewards(rc, samples)
    assert totals[:2] == [3.0, 1.0]                       # accuracy + format + language (the 2nd: format only)
    assert totals[2:] == [0.0, 0.0]                       # general: nothing from the rule rewards
    totals, comps, m = apply_model_rewards(rw, samples, totals, comps, spy, group_size=2)
    assert asked == [helpful, "apple apple apple"]        # only the general samples reach the reward model
    raw = scorer([s.prompt for s in samples[2:]], [s.response for s in samples[2:]])
    for i, r in zip((2, 3), raw):
        assert comps[i]["model_raw"] == pytest.approx(r, abs=1e-5)
        assert comps[i]["model"] == pytest.approx(1 / (1 + math.exp(-r)), abs=1e-5)    # sigmoid
    assert totals[2] == pytest.approx(comps[2]["model"]) and totals[3] == pytest.approx(comps[3]["model"])
    assert totals[:2] == [3.0, 1.0] and "model" not in comps[0] and m["reward/model_samples"] == 2.0
    # group z-score: per group of G samples
    rz = build(RewardsConfig, {"preset": "r1_all_scenario", "model_reward": {"normalize": "group_z"}})
    _, cz, _ = apply_model_rewards(rz, samples, [0.0] * 4, [{} for _ in samples], lambda p, r: [2.0, -1.0], 2)
    assert cz[2]["model"] == pytest.approx(1.0, abs=1e-5) and cz[3]["model"] == pytest.approx(-1.0, abs=1e-5)


def test_task_prompts_mix_general_prompts():
    from r1mega.data.prompts import TaskPrompts
    from r1mega.data.tokenizer import default_tokenizer_dir, load_tokenizer

    tok = load_tokenizer(str(default_tokenizer_dir()))
    items = TaskPrompts(tok, ["arith", "nonreasoning"], [1], seed=3, general=True).batch(0, 40)
    types = {i.task_type for i in items}
    assert types == {"math", "general"}
    gen = [i for i in items if i.task_type == "general"]
    assert all(i.meta["task"].startswith("nonreasoning/") and i.gold for i in gen)
    assert {i.task_type for i in TaskPrompts(tok, ["arith", "nonreasoning"], [1], seed=3).batch(0, 40)} == {"math"}


# ------------------------------------------------------------------ TP / DP parity (2 processes)
def _worker(cmd: list, out) -> dict:
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd + ["--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def rm_reference(tmp_path_factory):
    import sys
    from pathlib import Path

    d = tmp_path_factory.mktemp("rm_parity")
    worker = Path(__file__).with_name("rm_tp_worker.py")
    return d, worker, _worker([sys.executable, str(worker), "--make-init", str(d / "init")], d / "ref.json")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp=2,sp=1", ""])  # TP2 (+SP, MoE) and DP2
def test_reward_model_parallel_parity(rm_reference, layout):
    """Scores, BT losses and grad norms at TP2+SP / DP2 equal one process's (vocab-parallel score, pairs
    kept together by the DP shard, each DP rank scoring its share)."""
    import sys
    from pathlib import Path

    d, worker, ref = rm_reference
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2"]
    par = _worker(torchrun + [str(worker), "--layout", layout, "--init", str(d / "init")], d / f"par{layout}.json")
    assert par["scores0"] == pytest.approx(ref["scores0"], abs=1e-4)
    assert par["losses"] == pytest.approx(ref["losses"], abs=1e-4)
    assert par["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-3)
    assert par["scores2"] == pytest.approx(ref["scores2"], abs=1e-3)
    assert ref["scores2"] != pytest.approx(ref["scores0"], abs=1e-3)      # the steps changed the model


def test_grpo_stage_model_reward_hooks():
    """GRPOStage._model_rewards refuses general samples without a reward model, adds the model term with
    one, and _reward_metrics averages each component over the task types that have it."""
    from r1mega.pipeline.grpo import GRPOStage
    from r1mega.rewards import RewardSample

    cfg = _cfg({"rewards": {"preset": "r1_all_scenario"}})
    st = GRPOStage.__new__(GRPOStage)
    st.cfg, st.G, st.model_reward = cfg, 2, None
    samples = [RewardSample(response="a", task_type="math", prompt="p0"), RewardSample(response="b", task_type="math", prompt="p0"),
               RewardSample(response="c", task_type="general", prompt="p1"), RewardSample(response="d", task_type="general", prompt="p1")]
    comps = [{"accuracy": 1.0, "format": 1.0, "language": 1.0}, {"accuracy": 0.0, "format": 1.0, "language": 1.0},
             {"accuracy": 0.0, "format": 0.0, "language": 0.0}, {"accuracy": 0.0, "format": 0.0, "language": 0.0}]
    with pytest.raises(ConfigError, match="rewards.reward_model"):
        st._model_rewards(samples, [3.0, 2.0, 0.0, 0.0], comps)
    st._model_rewards(samples[:2], [3.0, 2.0], comps[:2])          # no general sample: no reward model needed
    st.model_reward = lambda prompts, responses: [0.0, math.log(3.0)]
    totals, comps, m = st._model_rewards(samples, [3.0, 2.0, 0.0, 0.0], comps)
    assert totals == pytest.approx([3.0, 2.0, 0.5, 0.75]) and m == {"reward/model_samples": 2.0}
    out = st._reward_metrics(["math", "math", "general", "general"], torch.tensor(totals), comps)  # samples' task types
    assert out["reward/accuracy"] == 0.5 and out["reward/format"] == 1.0          # reasoning samples only
    assert out["reward/model"] == pytest.approx(0.625) and out["reward/model_raw"] == pytest.approx(math.log(3) / 2)
    assert out["reward/total/math"] == 2.5 and out["reward/total/general"] == pytest.approx(0.625)
    assert out["prompts/general_frac"] == 0.5
