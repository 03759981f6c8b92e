"""Code reward: HumanEval canonical solutions score 1.0 through the sandbox, wrong ones < 1, test splitting."""
from __future__ import annotations

import time

import pytest

from r1mega.config.rewards import CodeRewardConfig, RewardsConfig
from r1mega.rewards import RewardSample
from r1mega.rewards.code import build_payload, io_verdicts, split_check
from r1mega.rewards.humaneval import canonical_response, humaneval_spec, load_humaneval

CFG = RewardsConfig(preset="accuracy_only", code=CodeRewardConfig(backend="bwrap", wall_timeout_s=15.0))


def test_split_check_one_case_per_assert_statement():
    test = ("METADATA = {}\n\ndef helper(x):\n    return x\n\n"
            "def check(candidate):\n    assert True, 'This prints if this assert fails'\n    import math\n"
            "    assert candidate(1) == 2\n    for i in range(3):\n        assert candidate(i) == i + 1\n"
            "    assert abs(candidate(0.5) - 1.5) < 1e-6\n")
    prelude, steps = split_check(test)
    assert "METADATA" in prelude and "def helper" in prelude and "check" not in prelude
    assert [s["kind"] for s in steps] == ["setup", "test", "test", "test"]   # `assert True` dropped
    assert [s["index"] for s in steps if s["kind"] == "test"] == [0, 1, 2]
    assert steps[2]["src"].startswith("for i in range(3)")


def test_all_164_problems_split_and_count():
    probs = load_humaneval()
    assert len(probs) == 164
    counts = [build_payload("pass", humaneval_spec(p), CodeRewardConfig(), True)["n_tests"] for p in probs]
    assert min(counts) >= 1 and sum(counts) > 700


def test_io_verdicts_compare_outside_first_record_counts():
    out = (b'0 pass\nTOK out 0 {"exit": 0, "out": "6\\n"}\nxTOK out 1 {"exit": 0, "out": "20"}\n'
           b'TOK out 1 {"exit": 1, "out": "20"}\nTOK out 1 {"exit": 0, "out": "20"}\nTOK out 2 garbage\nTOK done\n')
    passed, done = io_verdicts(out, "TOK", ["6", "20", "3"])
    assert passed == {0} and done          # case 1: its first record says exit 1; case 2: not JSON
    assert io_verdicts(out, "TOK", ["7", "20", "3"])[0] == set()


def test_humaneval_canonical_solutions_all_score_one(computer, bwrap_ok):
    probs = load_humaneval()
    rc = computer(CFG)
    t = time.monotonic()
    out = rc.score([RewardSample(canonical_response(p), "code", humaneval_spec(p)) for p in probs])
    wall = time.monotonic() - t
    bad = [(p["task_id"], d) for p, v, d in zip(probs, out.components["accuracy"], out.details) if v != 1.0]
    assert bad == []
    assert wall < 90, wall


def test_wrong_and_partial_solutions_score_below_one(computer, bwrap_ok):
    probs = {p["task_id"]: p for p in load_humaneval()}
    p0 = probs["HumanEval/0"]   # has_close_elements: 7 asserts
    wrong = "<answer>```python\ndef has_close_elements(numbers, threshold):\n    return False\n```</answer>"
    syntax = "<answer>```python\ndef has_close_elements(numbers, threshold)\n    return\n```</answer>"
    body_only = "<answer>```python\n" + p0["canonical_solution"] + "```</answer>"   # completes the prompt
    no_code = "<answer>I cannot write code.</answer>"
    rc = computer(CFG)
    out = rc.score([RewardSample(r, "code", humaneval_spec(p0)) for r in (wrong, syntax, body_only, no_code)])
    acc = out.components["accuracy"]
    assert 0.0 < acc[0] < 1.0            # returning False passes exactly the "no close pair" asserts
    assert acc[0] == pytest.approx(3 / 7)
    assert acc[1] == 0.0 and acc[2] == 1.0 and acc[3] == 0.0
    assert out.details[3]["accuracy"] == "no_code"


def test_mbpp_style_and_stdin_stdout_tests(computer, bwrap_ok):
    rc = computer(CFG)
    mbpp = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]}
    io = {"io": [{"input": "3\n", "output": "6\n"}, {"input": "10", "output": "20"}, {"input": "1", "output": "3"}]}
    prog = "<answer>```python\nimport sys\nn = int(sys.stdin.readline())\nprint(n * 2)\n```</answer>"
    out = rc.score([RewardSample("<answer>```python\ndef add(a, b):\n    return a + b\n```</answer>", "code", mbpp),
                    RewardSample(prog, "code", io)])
    assert out.components["accuracy"] == [pytest.approx(2 / 3), pytest.approx(2 / 3)]
