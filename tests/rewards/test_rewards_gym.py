"""reasoning-gym adapter: deterministic generation, the gym's own scoring through the pool, and the guard that
keeps model answers away from scorers that would eval them."""
from __future__ import annotations

import os
import uuid

import pytest

from r1mega.config.rewards import RewardsConfig
from r1mega.rewards import RewardSample

gym = pytest.importorskip("r1mega.rewards.gym")
if not gym.gym_available():
    pytest.skip("reasoning-gym not installed", allow_module_level=True)

ACC = RewardsConfig(preset="accuracy_only")


def test_generate_is_deterministic_and_complete():
    a = gym.generate("basic_arithmetic", 5, seed=7)
    b = gym.generate("basic_arithmetic", 5, seed=7)
    c = gym.generate("basic_arithmetic", 5, seed=8)
    assert [p.prompt for p in a] == [p.prompt for p in b] != [p.prompt for p in c]
    assert all(p.prompt and p.answer and p.metadata["gym_task"] == "basic_arithmetic" for p in a)
    assert a[0].metadata["entry"]["answer"] == a[0].answer
    assert len(gym.gym_tasks()) > 90


@pytest.mark.parametrize("task", ["basic_arithmetic", "countdown", "knights_knaves", "spiral_matrix", "chain_sum",
                                  "polynomial_multiplication", "word_sorting"])
def test_gold_scores_one_and_wrong_scores_less(computer, task):
    probs = gym.generate(task, 3, seed=1)
    rc = computer(ACC)
    good = [RewardSample(f"<think>x</think><answer>{p.answer}</answer>", "gym", metadata=p.metadata) for p in probs]
    bad = [RewardSample("<think>x</think><answer>definitely wrong 0</answer>", "gym", metadata=p.metadata)
           for p in probs]
    out = rc.score(good + bad)
    assert out.components["accuracy"][:3] == [1.0, 1.0, 1.0]
    assert all(v < 1.0 for v in out.components["accuracy"][3:])


def test_risky_scorers_are_detected():
    risky = gym.risky_tasks()
    for task in ("spiral_matrix", "n_queens", "binary_matrix", "string_insertion"):
        assert "eval" in risky[task]
    for task in ("countdown", "puzzle24", "simple_integration", "polynomial_multiplication"):
        assert "sympy" in risky[task]
    assert "word_sorting" not in risky and "propositional_logic" not in risky


@pytest.mark.parametrize("answer,task,ok", [
    ("[1, 2, 3]", "spiral_matrix", True),
    ("1 2 3", "spiral_matrix", True),           # not Python: eval would raise
    ("ABCDE", "string_insertion", True),         # a bare name: looked up, nothing called
    ("__import__('os').system('x')", "spiral_matrix", False),
    ("[().__class__]", "spiral_matrix", False),
    ("94*4 - 61 - 6", "countdown", True),
    ("x**2/2 + sin(x) + C", "simple_integration", True),
    ("__import__('os')", "countdown", False),
    ("x.subs(x, 1)", "simple_integration", False),
    ("S('1')", "countdown", False),
    ("anything goes", "word_sorting", True),
])
def test_answer_guard(answer, task, ok):
    assert (gym.answer_guard(task, answer) is None) == ok


def test_injections_into_eval_and_sympy_scorers_never_run(computer, tmp_path):
    rc = computer(ACC)
    samples, paths = [], []
    for task in ("spiral_matrix", "n_queens", "binary_matrix", "string_insertion", "countdown", "puzzle24",
                 "simple_integration", "polynomial_multiplication"):
        p = gym.generate(task, 1, seed=3)[0]
        path = str(tmp_path / f"{task}_{uuid.uuid4().hex}")
        paths.append(path)
        for inj in (f"__import__('os').system('touch {path}')", f"open('{path}', 'w')",
                    f"[open('{path}', 'w')]"):
            samples.append(RewardSample(f"<answer>{inj}</answer>", "gym", metadata=p.metadata))
    out = rc.score(samples)
    assert out.totals == [0.0] * len(samples)
    assert out.metrics["reward/rejected"] == len(samples)
    assert not [p for p in paths if os.path.exists(p)]
