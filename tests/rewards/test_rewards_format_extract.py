"""Answer/code extraction, the format reward (hand-computed values) and the prompt templates."""
from __future__ import annotations

import pytest

from r1mega.config.rewards import FormatRewardConfig
from r1mega.data.templates import TEMPLATES, render
from r1mega.rewards.extract import extract_answer, extract_code, extract_last_boxed, reasoning_text
from r1mega.rewards.format import format_checks, format_reward

STRICT = FormatRewardConfig(mode="strict")
PARTIAL = FormatRewardConfig(mode="partial")


def test_answer_tag_wins_over_boxed():
    assert extract_answer(r"<think>\boxed{1}</think><answer> 42 </answer>") == "42"
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"  # last complete pair


def test_last_boxed_when_no_answer_tag():
    assert extract_answer(r"so \boxed{3} hmm actually \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_last_boxed(r"\boxed{3} and a broken \boxed{4") == "3"
    assert extract_last_boxed(r"\fbox{7}") == "7"
    assert extract_last_boxed(r"\boxed 5 end") == "5"
    assert extract_answer("no answer here") is None
    assert extract_answer(r"<answer>unclosed \boxed{9}") == "9"


def test_boxed_fallback_never_looks_inside_the_reasoning():
    # a box inside a closed think block is not the answer; one after it is
    assert extract_answer(r"<think>maybe \boxed{7}</think> so 5") is None
    assert extract_answer(r"<think>maybe \boxed{7}</think> \boxed{5}") == "5"
    # a think block still open (no </think>: cut, or the model never closed it) has no answer at all
    assert extract_answer(r"<think>try \boxed{7} and then") is None
    assert extract_answer(r"before <think>try \boxed{7}") is None
    # a prefilled <think> (chat template): the response starts inside the reasoning
    assert extract_answer(r"try \boxed{7} hmm", think_prefilled=True) is None
    assert extract_answer(r"try \boxed{7}</think> \boxed{8}", think_prefilled=True) == "8"
    assert extract_answer(r"try \boxed{7} hmm") == "7"  # no think block at all: the whole response counts


def test_truncated_response_gets_no_answer_from_the_fallback():
    assert extract_answer(r"<think>x</think> \boxed{5} and more", truncated=True) is None
    assert extract_answer(r"<think>x</think><answer>5</answer>", truncated=True) == "5"  # a complete tag still counts


def test_reward_computer_grades_think_boxes_and_truncation(computer):
    from r1mega.rewards import RewardSample

    cut = dict(response_tokens=16, max_tokens=16)
    out = computer().score([
        RewardSample(r"<think>\boxed{5}</think> I give up", "math", "5"),
        RewardSample(r"<think>ok</think> \boxed{5}", "math", "5"),
        RewardSample(r"<think>ok</think> \boxed{5} but wait", "math", "5", **cut),  # cut at the limit
        RewardSample(r"<think>ok</think> \boxed{5} but wait", "math", "5", truncated=True),
        RewardSample(r"<think>ok</think> \boxed{5}", "math", "5", **cut, truncated=False),  # EOS exactly at the limit
    ])
    assert out.components["accuracy"] == [0.0, 1.0, 0.0, 0.0, 1.0]
    assert [d["accuracy"] for d in out.details][:4] == ["no_answer", "ok", "no_answer", "no_answer"]


def test_extraction_is_linear_on_hostile_input():
    import time

    t = time.monotonic()
    assert extract_answer("<answer>" * 200_000) is None
    assert extract_last_boxed("\\boxed{" * 100_000) is None
    nested = "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}"
    assert len(extract_last_boxed(nested)) == 20_001
    assert extract_code("```python\n" * 50_000) is not None
    assert time.monotonic() - t < 5


def test_extract_code_takes_last_python_block_prefers_answer():
    text = "```python\nx = 1\n```\nthen ```js\nfoo()\n``` and ```py\ny = 2\n```"
    assert extract_code(text) == "y = 2\n"
    text = "<think>```python\nbad()\n```</think><answer>```python\ngood()\n```</answer>"
    assert extract_code(text) == "good()\n"
    assert extract_code("no code") is None


@pytest.mark.parametrize("response,strict,partial", [
    ("<think>r</think><answer>a</answer>", 1.0, 1.0),
    ("  <think>\nreason\n</think>\n<answer> 5 </answer>\n", 1.0, 1.0),
    ("<think>r</think>", 0.0, 0.25),                                      # think only
    ("<answer>a</answer>", 0.0, 0.25),                                    # answer only
    ("<answer>a</answer><think>r</think>", 0.0, 0.5),                     # wrong order
    ("hello <think>r</think><answer>a</answer>", 0.0, 0.75),              # text outside
    ("<think>r</think> between <answer>a</answer>", 0.0, 0.75),
    ("<think>r</think><answer>a</answer> bye", 0.0, 0.75),
    ("<think>r</think><think>s</think><answer>a</answer>", 0.0, 0.25),    # two think blocks
    ("<think> </think><answer>a</answer>", 0.0, 0.25),                    # empty think
    ("no tags at all", 0.0, 0.0),
])
def test_format_reward_hand_values(response, strict, partial):
    assert format_reward(response, STRICT) == strict
    assert format_reward(response, PARTIAL) == partial


def test_format_prefilled_think_and_nonempty_switch():
    cfg = FormatRewardConfig(mode="strict", think_prefilled=True)
    assert format_reward("reasoning</think><answer>1</answer>", cfg) == 1.0
    assert format_reward("reasoning</think><answer>1</answer>", STRICT) == 0.0
    lax = FormatRewardConfig(mode="strict", require_nonempty=False)
    assert format_reward("<think></think><answer></answer>", lax) == 1.0
    assert format_checks("<think>a</think><answer>b</answer>") == {"think": True, "answer": True, "order": True,
                                                                  "clean": True}


def test_reasoning_text_scopes():
    r = "<think>why</think><answer>7</answer>"
    assert reasoning_text(r) == "why"
    assert reasoning_text("plain reasoning <answer>7</answer>") == "plain reasoning "
    assert reasoning_text(r, scope="response") == r


def test_r1_zero_template_exact():
    out = render("r1_zero", "What is 2+2?")
    assert out == (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
        "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
        "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
        "User: What is 2+2?. Assistant:")


def test_chat_template_and_errors():
    out = render("chat", "Solve {x}")  # braces in prompts are not format fields
    assert "Solve {x}" in out and out.endswith("<think>\n")
    assert not render("chat_plain", "q").endswith("<think>\n")
    assert set(TEMPLATES) >= {"r1_zero", "chat", "chat_plain"}
    with pytest.raises(KeyError, match="unknown template"):
        render("nope", "q")
