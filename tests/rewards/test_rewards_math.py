"""Math accuracy: math-verify equivalences, choice letters, injection attempts (nothing runs), pathological
answers (0 within the timeout, the pool survives)."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from r1mega.config.rewards import MathRewardConfig, RewardsConfig
from r1mega.rewards import RewardSample
from r1mega.rewards.choice import choice_reward, normalize_choice
from r1mega.rewards.math_accuracy import math_accuracy

ACC = RewardsConfig(preset="accuracy_only", math=MathRewardConfig(timeout_s=3.0, verify_timeout_s=1))


def _answer(x: str) -> str:
    return f"<think>work</think><answer>{x}</answer>"


@pytest.mark.parametrize("pred,gold,want", [
    ("0.5", r"\frac{1}{2}", 1.0),
    (r"\frac12", "1/2", 1.0),
    ("(1, 2]", "(1,2]", 1.0),
    ("[1, 2]", "(1,2]", 0.0),
    (r"x = \frac{1}{2}", r"\frac12", 1.0),
    ("The final answer is 42", "42", 1.0),
    ("41", "42", 0.0),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", 1.0),
    ("1,000,000", "1000000", 1.0),
    (r"\{1, 2\}", r"\{2,1\}", 1.0),
    (r"2\pi", r"2 \pi", 1.0),
])
def test_math_verify_equivalences(pred, gold, want):
    assert math_accuracy(pred, gold) == want


@pytest.mark.parametrize("pred", ["B", "(B)", "B)", "B.", "**B**", r"\text{(B)}", r"\boxed{B}", "answer is B",
                                  "The answer is (B).", "Option B: 17", "(B) 17", "b", "Answer: B"])
def test_choice_letters_normalised(pred):
    assert normalize_choice(pred) == "B"
    assert choice_reward(pred, "B") == 1.0
    assert choice_reward(pred, "(B)") == 1.0
    assert choice_reward(pred, "C") == 0.0


@pytest.mark.parametrize("pred", ["A train", "AB", "B and C", "I think B is right", "", "42"])
def test_choice_needs_one_clear_letter(pred):
    assert choice_reward(pred, "B") == 0.0


def test_choice_text_matches_choice_content():
    assert choice_reward("17", "B", choices=["42", "17", "3"]) == 1.0
    assert choice_reward("42", "B", choices={"A": "42", "B": "17"}) == 0.0


def test_mcq_through_computer_and_letter_gold_on_math_task(computer):
    rc = computer(ACC)
    out = rc.score([RewardSample(_answer("(C)"), "mcq", "C"), RewardSample(_answer("answer is C"), "math", "C"),
                    RewardSample(_answer("(D)"), "mcq", "C"), RewardSample(_answer(r"\boxed{\frac{1}{2}}"), "math",
                                                                           "0.5")])
    assert out.components["accuracy"] == [1.0, 1.0, 0.0, 1.0]


INJECTIONS = [
    "__import__('os').system('touch {p}')",
    "open('{p}', 'w').write('x')",
    "exec(\"open('{p}','w')\")",
    "eval(compile('open(\"{p}\",\"w\")', 'x', 'exec'))",
    "(lambda: __import__('pathlib').Path('{p}').touch())()",
    "1 + __import__('os').system('touch {p}')",
    "\\text{{__import__('os').system('touch {p}')}}",
    "$__import__('os').system('touch {p}')$",
    "x = __import__('subprocess').call(['touch', '{p}'])",
]


def test_injection_in_boxed_and_answer_never_executes(computer, tmp_path):
    os.chmod(tmp_path, 0o777)
    rc = computer(ACC)
    samples, paths = [], []
    for i, inj in enumerate(INJECTIONS):
        p = str(tmp_path / f"pwned_{i}_{uuid.uuid4().hex}")
        paths.append(p)
        code = inj.format(p=p)
        samples.append(RewardSample(_answer(code), "math", "0"))
        samples.append(RewardSample(f"so the answer is \\boxed{{{code}}}", "math", "0"))
        samples.append(RewardSample(_answer(code), "mcq", "A"))
    out = rc.score(samples)
    assert out.totals == [0.0] * len(samples)
    assert not [p for p in paths if os.path.exists(p)]
    assert os.listdir(tmp_path) == []


def test_pathological_answers_score_zero_within_timeout_and_pool_survives(computer):
    cfg = RewardsConfig(preset="accuracy_only", math=MathRewardConfig(timeout_s=3.0, verify_timeout_s=1))
    rc = computer(cfg)
    samples = [
        RewardSample(_answer(r"\boxed{9^{9^{9^{9}}}}"), "math", "1"),
        RewardSample(r"\boxed{9^{9^{9^{9^{9^{9}}}}}}", "math", r"9^{9^{9}}"),
        RewardSample(_answer("9**9**9**9"), "math", "1"),
        RewardSample(_answer("1" * 1_000_000), "math", "1"),                          # 1 MB answer
        RewardSample("\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "math", "1"),  # 10k nested braces
        RewardSample(_answer("(" * 10_000 + "1" + ")" * 10_000), "math", "1"),
        RewardSample(_answer(r"\frac{1}{0}"), "math", "1"),
    ]
    t = time.monotonic()
    out = rc.score(samples)
    wall = time.monotonic() - t
    assert out.components["accuracy"] == [0.0] * len(samples)
    # 7 calls on 2 workers, each bounded by timeout_s=3: never more than ceil(7/2) * 3 s (+ restart slack)
    assert wall < 4 * cfg.math.timeout_s + 4
    assert out.metrics["reward/rejected"] >= 3          # the 1 MB and the two deeply nested ones, unparsed
    # the pool still works afterwards
    ok = rc.score([RewardSample(_answer(r"\frac{3}{4}"), "math", "0.75")])
    assert ok.components["accuracy"] == [1.0]


def test_hard_timeout_kills_and_replaces_a_stuck_worker(pool):
    from r1mega.rewards.pool import Task

    before = pool.stats.timeouts
    t = time.monotonic()
    out = pool.run([Task("sleep", (60,), 1.0), Task("echo", ("after",), 5.0)])
    assert time.monotonic() - t < 10
    assert out[0].status == "timeout" and out[1].value == "after"
    assert pool.stats.timeouts == before + 1
    assert pool.run([Task("echo", (1,), 5.0)] * 4)[3].value == 1


def test_math_reward_rate_is_reasonable(computer):
    rc = computer(ACC)
    samples = [RewardSample(_answer(f"\\frac{{{i}}}{{{i + 1}}}"), "math", f"{i}/{i + 1}") for i in range(1, 101)]
    out = rc.score(samples)
    assert out.components["accuracy"] == [1.0] * 100
