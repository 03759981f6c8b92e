"""Evaluation metrics as pure functions (no model, no I/O).

* pass@1 of a question = mean correctness of its n samples (the R1 paper's pass@1 with k samples);
* pass@k of a question = the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021) of the chance
  that at least one of k samples drawn without replacement from the n is correct;
* cons@k of a question = 1 if the majority-vote answer is correct (see :mod:`r1mega.eval.voting`);
* a benchmark's score = the mean of its questions' scores.

pass@k is computed in product form, ``C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i)``, summed in log space
(``log1p``) and turned back with ``expm1``: no huge binomials, relative error ~1e-15 for any n (tested
against exact rational arithmetic for n up to 2000).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Optional, Sequence


def _count(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        if isinstance(x, float) and x.is_integer():
            return int(x)
        raise TypeError(f"{name} must be an integer, got {x!r}")
    return x


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with ``n`` samples of which ``c`` are correct.

    Raises ValueError when ``k > n`` (the estimator needs at least k samples), ``k < 1``, or ``c`` is not in
    ``[0, n]``. ``c == 0`` gives 0; ``n - c < k`` (in particular ``c == n``) gives exactly 1.
    """
    n, c, k = _count(n, "n"), _count(c, "c"), _count(k, "k")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per question, got n={n}")
    if c == 0:
        return 0.0
    if n - c < k:
        return 1.0
    # log C(n-c,k)/C(n,k) = sum_{i=n-c+1}^{n} log(1 - k/i)
    log_fail = math.fsum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    return min(1.0, max(0.0, -math.expm1(log_fail)))


def pass_at_k_exact(n: int, c: int, k: int):
    """``1 - C(n-c,k)/C(n,k)`` as an exact :class:`fractions.Fraction` (reference for tests; slow for huge n)."""
    from fractions import Fraction

    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per question, got n={n}")
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def pass_at_1(correct: Sequence) -> float:
    """Mean correctness of one question's samples (bools or 0/1)."""
    if len(correct) == 0:
        raise ValueError("pass@1 of a question without samples")
    return sum(1.0 for x in correct if x) / len(correct)


def mean(values: Iterable[Optional[float]]) -> Optional[float]:
    """Mean of the values that are not None; None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return math.fsum(vals) / len(vals) if vals else None


def mean_pass_at_k(pairs: Iterable[tuple], k: int) -> Optional[float]:
    """Benchmark pass@k: the mean over questions of :func:`pass_at_k` for ``(n, c)`` pairs (None if empty)."""
    return mean(pass_at_k(n, c, k) for n, c in pairs)


__all__ = ["pass_at_k", "pass_at_k_exact", "pass_at_1", "mean", "mean_pass_at_k"]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _as_number(text) -> Optional[float]:
    try:
        return float(str(text).strip().replace(",", ""))
    except ValueError:
        return None


def last_number_correct(text: str, gold) -> Optional[float]:
    """Generous grading of a question with a numeric gold answer: 1.0 when the *last number anywhere* in the
    response equals it (tags, format and reasoning ignored), else 0.0; None when the gold is not a plain
    number. The yardstick for a base model that never uses the answer tags (how a new user first scores it)."""
    g = _as_number(gold)
    if g is None:
        return None
    found = _NUMBER.findall(text or "")
    v = _as_number(found[-1]) if found else None
    return 1.0 if v is not None and abs(v - g) <= 1e-9 * max(1.0, abs(g)) else 0.0


def implausible(row: dict) -> Optional[str]:
    """Why a benchmark row's figures cannot be taken at face value, or None: nothing correct while most
    samples stopped at the token limit (a limit too low for the model, or an engine serving wrong weights)."""
    if row.get("pass@1") == 0 and (row.get("truncated_rate") or 0) >= 0.9:
        return (f"0% correct with {100 * row['truncated_rate']:.0f}% of the samples cut at the max_new_tokens limit: "
                "raise the limit, or check the model and engine (random text?) before reading these figures")
    return None
