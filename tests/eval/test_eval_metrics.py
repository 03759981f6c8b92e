"""pass@k: hand-computed values, brute-force enumeration of k-subsets, exact rational arithmetic for large n,
and the error cases."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from r1mega.eval.metrics import mean, mean_pass_at_k, pass_at_1, pass_at_k, pass_at_k_exact


@pytest.mark.parametrize("n,c,k,want", [
    (5, 2, 2, 0.7),            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 0, 1, 0.0), (10, 0, 5, 0.0), (10, 0, 10, 0.0),
    (10, 10, 1, 1.0), (10, 10, 10, 1.0), (1, 1, 1, 1.0), (1, 0, 1, 0.0),
    (10, 3, 1, 0.3),           # pass@1 = c/n
    (4, 1, 2, 0.5),            # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 2, 2, 5 / 6),          # 1 - C(2,2)/C(4,2) = 1 - 1/6
    (10, 8, 3, 1.0),           # n - c = 2 < k: every 3-subset holds a correct one
    (64, 1, 64, 1.0), (64, 1, 8, 8 / 64),
])
def test_pass_at_k_hand_values(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-15)


def test_c_equal_n_is_exactly_one_and_c_zero_exactly_zero():
    for n in (1, 2, 7, 64, 1000, 5000):
        for k in (1, n // 2 or 1, n):
            assert pass_at_k(n, n, k) == 1.0
            assert pass_at_k(n, 0, k) == 0.0


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_brute_force_enumeration(n):
    """The estimator is the share of k-subsets of the n samples that contain a correct one."""
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            hit = sum(1 for s in subsets if any(samples[i] for i in s))
            assert pass_at_k(n, c, k) == pytest.approx(hit / len(subsets), abs=1e-14), (n, c, k)


@pytest.mark.parametrize("n,c,k", [(1000, 1, 1), (1000, 1, 999), (1000, 3, 500), (1000, 999, 1), (1000, 500, 64),
                                   (1024, 7, 64), (2000, 1, 1), (2000, 1000, 1000), (1500, 2, 3)])
def test_exact_for_large_n(n, c, k):
    exact = pass_at_k_exact(n, c, k)
    got = pass_at_k(n, c, k)
    assert math.isfinite(got)
    # relative agreement to ~1e-12, including tiny values (n=2000, c=1, k=1 -> 5e-4) and values near 1
    assert abs(Fraction(got) - exact) <= Fraction(1, 10**12) * max(exact, Fraction(1, 10**6)), (got, float(exact))


def test_exact_reference_itself():
    assert pass_at_k_exact(5, 2, 2) == Fraction(7, 10)


@pytest.mark.parametrize("n,c,k", [(5, 2, 6), (1, 1, 2), (0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0)])
def test_errors(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_k_greater_than_n_message():
    with pytest.raises(ValueError, match="at least 6 samples"):
        pass_at_k(5, 2, 6)


def test_type_errors():
    with pytest.raises(TypeError):
        pass_at_k(5, 2.5, 1)
    with pytest.raises(TypeError):
        pass_at_k(True, 1, 1)
    assert pass_at_k(5.0, 2.0, 2.0) == pytest.approx(0.7)


def test_pass_at_1_and_means():
    assert pass_at_1([True, False, True, True]) == 0.75
    assert pass_at_1([1, 0]) == 0.5
    with pytest.raises(ValueError):
        pass_at_1([])
    assert mean([1, None, 0]) == 0.5
    assert mean([None]) is None
    assert mean_pass_at_k([(5, 2), (10, 0), (3, 3)], 2) == pytest.approx((0.7 + 0 + 1) / 3)
    assert mean_pass_at_k([], 2) is None


def test_last_number_correct_is_generous_and_format_blind():
    from r1mega.eval.metrics import last_number_correct

    assert last_number_correct("14 + 13 = 27", "27") == 1.0
    assert last_number_correct("The answer is 27.", "27") == 1.0
    assert last_number_correct("27 is wrong, it is 26", "27") == 0.0  # the last number counts
    assert last_number_correct("<answer>1,000</answer>", "1000") == 1.0
    assert last_number_correct("no digits here", "5") == 0.0
    assert last_number_correct("x = 0.5", "0.50") == 1.0
    assert last_number_correct("anything", "\\frac{1}{2}") is None  # not a plain number: not graded


def test_zero_with_every_sample_at_the_limit_is_flagged():
    from r1mega.eval.metrics import implausible
    from r1mega.eval.report import format_table

    row = {"n": 4, "pass@1": 0.0, "cons@2": 0.0, "truncated_rate": 1.0, "format_rate": 0.0, "mean_tokens": 16.0}
    assert "100% of the samples cut at the max_new_tokens limit" in implausible(row)
    assert implausible({**row, "truncated_rate": 0.5}) is None and implausible({**row, "pass@1": 0.25}) is None
    text = format_table({"file:x": {**row, "warning": implausible(row), "last_number@1": 0.25}}, 2, [1, 2])
    assert "WARNING file:x: 0% correct" in text and "last number" in text.splitlines()[0] and "25.0" in text
