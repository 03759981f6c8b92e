"""Majority vote (cons@k): answer keys, clustering by equivalence (math-verify in the reward pool for the real
thing, scripted equivalences for the rules), deterministic tie-breaking, abstentions, all-wrong questions."""
from __future__ import annotations

import pytest

from r1mega.eval.voting import (ChoiceEquivalence, MathEquivalence, answer_key, cluster_many, equivalence_for,
                                majority_vote, pick_winner)


@pytest.mark.parametrize("a,b", [("0.5", "\\frac{1}{2}"), ("0.50", "1/2"), ("$12$", "12"), ("12.", " 12 "),
                                 ("-007", "-7"), ("\\(3\\)", "3"), ("\\dfrac{-3}{4}", "-0.75"), ("x  +  1", "x + 1")])
def test_answer_key_merges_trivial_forms(a, b):
    assert answer_key(a) == answer_key(b)


@pytest.mark.parametrize("a,b", [("0.5", "0.51"), ("12", "-12"), ("x+1", "x-1"), ("1.5", "3/4"),
                                 ("$a$ and $b$", "a$ and $b")])
def test_answer_key_keeps_different_answers_apart(a, b):
    assert answer_key(a) != answer_key(b)


def test_plain_vote_and_abstentions():
    v = majority_vote(["3", "4", "4", None, "3", "4", None])
    assert v.answer == "4" and v.size == 3 and v.sample == 1
    assert v.clusters == [[0, 4], [1, 2, 5]] and v.abstained == 2


def test_equivalent_forms_vote_together_with_scripted_equivalence():
    same = {frozenset({"\\sqrt{4}/4", "0.5"})}
    calls = []

    def eq(a, b):
        calls.append((a, b))
        return frozenset({a, b}) in same

    # "0.5", "1/2", "\frac{1}{2}" share a key (no question asked); "\sqrt{4}/4" needs the equivalence
    answers = ["7", "0.5", "\\sqrt{4}/4", "7", "\\frac{1}{2}", "1/2", "7"]
    v = majority_vote(answers, eq)
    assert v.answer == "0.5" and v.size == 4 and v.sample == 1
    assert v.clusters == [[0, 3, 6], [1, 2, 4, 5]]
    assert v.representatives == ["7", "0.5"]
    # one question per pair of distinct keys at most, always (representative, candidate)
    assert calls == [("7", "0.5"), ("7", "\\sqrt{4}/4"), ("0.5", "\\sqrt{4}/4")]


def test_ties_go_to_the_cluster_seen_first():
    assert majority_vote(["5", "6", "6", "5"]).answer == "5"
    assert majority_vote(["6", "5", "5", "6"]).answer == "6"
    assert majority_vote([None, "b", "a", "a", "b"]).answer == "b"
    # a later, bigger cluster still wins
    assert majority_vote(["5", "6", "6"]).answer == "6"
    assert pick_winner([[2, 3], [0, 5], [1]]) == 1      # equal sizes: smallest first sample index
    assert pick_winner([]) is None


def test_all_abstain():
    v = majority_vote([None, None])
    assert v.answer is None and v.sample is None and v.size == 0 and v.abstained == 2


def test_greedy_clustering_uses_the_first_representative():
    """Non-transitive equivalence: b ~ a, c ~ b but not c ~ a: c opens its own cluster (asked against a only)."""
    rel = {("a", "b"), ("b", "c")}
    v = majority_vote(["a", "b", "c"], lambda x, y: (x, y) in rel)
    assert v.clusters == [[0, 1], [2]]


def test_cluster_many_batches_rounds_across_questions():
    batches = []

    def eq(pairs):
        batches.append(list(pairs))
        return [False] * len(pairs)

    out = cluster_many([["1", "2", "3"], ["x"], [None, "y", "y"]], eq)
    assert out == [[[0], [1], [2]], [[0]], [[1, 2]]]
    assert batches == [[("1", "2"), ("1", "3")], [("2", "3")]]


def test_cluster_many_rejects_wrong_verdict_count():
    with pytest.raises(ValueError):
        cluster_many([["1", "2"]], lambda pairs: [])


def test_choice_equivalence():
    v = majority_vote(["(B)", "A", "answer is B", "B."], ChoiceEquivalence())
    assert v.answer == "(B)" and v.size == 3


def test_equivalence_for_task_types():
    assert equivalence_for("code") is None
    assert equivalence_for("gym")([("a", "b")]) == [False]
    with pytest.raises(ValueError):
        equivalence_for("math")


def test_math_verify_equivalence_in_the_pool(eval_pool, math_cfg):
    eq = MathEquivalence(eval_pool, math_cfg)
    pairs = [("0.5", "\\frac{\\sqrt{4}}{4}"), ("2\\pi", "\\pi \\cdot 2"), ("3", "4"), ("\\frac{1}{2}", "0.5"),
             ("x=2", "2"), ("\\{1,2\\}", "\\{2,1\\}"), ("(1,2]", "(1,2)"), ("1,000,000", "7")]
    assert eq(pairs) == [True, True, False, True, True, True, False, False]
    # integers are told apart without a call; equal keys likewise
    assert eq.stats["skipped"] >= 2
    calls = eq.stats["calls"]
    eq(pairs)  # cached
    assert eq.stats["calls"] == calls


def test_math_vote_equivalent_forms_together(eval_pool, math_cfg):
    eq = MathEquivalence(eval_pool, math_cfg)
    answers = ["\\frac{\\sqrt{4}}{4}", "7", "0.5", "7", "\\frac12", "\\frac{1}{2}", None]
    v = majority_vote(answers, eq)
    assert v.answer == "\\frac{\\sqrt{4}}{4}" and v.size == 4 and v.clusters == [[0, 2, 4, 5], [1, 3]]


def test_math_equivalence_refuses_hostile_answers_without_parsing(eval_pool, math_cfg):
    eq = MathEquivalence(eval_pool, math_cfg)
    deep = "{" * 200 + "}" * 200
    assert eq([("1", deep), ("x" * 5000, "1")]) == [False, False]
    assert eq.stats["calls"] == 0


def test_math_equivalence_timeout_is_not_equivalent(eval_pool):
    from r1mega.config.rewards import MathRewardConfig

    eq = MathEquivalence(eval_pool, MathRewardConfig(timeout_s=2.0, verify_timeout_s=1))
    assert eq([("2", "\\boxed{9^{9^{9^{9}}}}")]) == [False]
