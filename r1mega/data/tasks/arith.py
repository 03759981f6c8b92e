"""Multi-step integer arithmetic: ``(37+12)*3-15``.

Difficulty ladder (see :data:`LEVELS`):

=====  =======  ===========================  =================================  ===========
level  ops      + / - operands               * factors                          max value
=====  =======  ===========================  =================================  ===========
1      1        0-20                         1 digit x 1 digit                  81
2      2        1 digit (every step)         1 digit x 1 digit                  81
3      2        1-2 digits                   2 digits x 1 digit                 9,999
4      3        2-3 digits                   2-3 digits x 1 digit               99,999
5      3-4      3 digits                     3 digits x 1-2 digits              999,999
=====  =======  ===========================  =================================  ===========

Level 2 composes two single-digit facts, left to right (``(7-3)*2``: ``7-3=4``, ``4*2=8``; every
operand of every step, intermediate values included, is one digit, and the steps follow the reading
order): no single step is harder than a times-table or single-digit sum, but the whole expression is
one nobody has written down before. Answering it directly is hard for a small model; working it step
by step is easy. That gap is what R1-Zero's RL stage can discover (see docs/tiny_pretraining.md).

All intermediate values are non-negative (``a-b`` is only generated with ``a >= b``), so every
answer is a non-negative integer. The expression is a random binary tree built bottom-up; the
worked solution evaluates it in post-order, one :func:`~.base.worked_step` per operator.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from .base import Step, TaskError, worked_step

TASK = "arith"

# Questions end in "?" (the R1-Zero template appends "." after the prompt). The Chinese phrasings are
# parallel to the English ones (same index), so the language never changes what the generator draws.
PHRASINGS = ("What is {e}?", "How much is {e}?", "What does {e} equal?", "Can you compute {e}?")
PHRASINGS_ZH = ("{e}是多少？", "{e}等于几？", "{e}等于多少？", "你能算出{e}吗？")
ZH_STRINGS = PHRASINGS_ZH  # every Chinese fragment a zh prompt can contain (the tokenizer's character set)


@dataclass(frozen=True)
class Level:
    ops: tuple[int, int]          # number of operators, inclusive range
    add: tuple[int, int]          # range of +/- leaf operands
    mul_big: tuple[int, int]      # range of the larger factor when it is a leaf
    mul_small: tuple[int, int]    # range of the smaller factor (always a leaf)
    max_value: int                # no intermediate value may exceed this
    op_weights: tuple[float, float, float]  # weights of +, -, *
    fact_steps: bool = False      # every step is a single-digit fact (see fact_step), taken in reading order


LEVELS = {
    1: Level((1, 1), (0, 20), (1, 9), (1, 9), 81, (0.4, 0.3, 0.3)),
    2: Level((2, 2), (0, 9), (1, 9), (1, 9), 81, (0.4, 0.3, 0.3), fact_steps=True),
    3: Level((2, 2), (1, 99), (10, 99), (2, 9), 9_999, (0.35, 0.3, 0.35)),
    4: Level((3, 3), (10, 999), (10, 999), (2, 9), 99_999, (0.35, 0.3, 0.35)),
    5: Level((3, 4), (100, 999), (100, 999), (2, 99), 999_999, (0.35, 0.3, 0.35)),
}

_PREC = {"+": 1, "-": 1, "*": 2}


def fact_step(a: int, op: str, b: int) -> bool:
    """``a op b`` is a single-digit fact: both operands at most 9 (``/``: divisor and quotient at
    most 9, the inverse of a times-table fact)."""
    if op == "/":
        return 0 < b <= 9 and a % b == 0 and a // b <= 9
    return 0 <= a <= 9 and 0 <= b <= 9


@dataclass
class Node:
    value: int
    op: Optional[str] = None
    left: Optional["Node"] = None
    right: Optional["Node"] = None

    @property
    def is_leaf(self) -> bool:
        return self.op is None

    def render(self) -> str:
        if self.is_leaf:
            return str(self.value)
        lt, rt = self.left.render(), self.right.render()
        p = _PREC[self.op]
        if not self.left.is_leaf and _PREC[self.left.op] < p:
            lt = f"({lt})"
        if not self.right.is_leaf and _PREC[self.right.op] <= p:
            rt = f"({rt})"
        return f"{lt}{self.op}{rt}"

    def steps(self) -> list[Step]:
        if self.is_leaf:
            return []
        return self.left.steps() + self.right.steps() + [worked_step(self.left.value, self.op, self.right.value)]


class _Retry(Exception):
    pass


def number(rng: random.Random, lo_hi: tuple[int, int]) -> int:
    """A number in [lo, hi] whose digit count is uniform first (so 1..99 gives as many 1-digit as 2-digit numbers)."""
    lo, hi = lo_hi
    d = rng.randint(len(str(lo)), len(str(hi)))
    return rng.randint(max(lo, 10 ** (d - 1) if d > 1 else 0), min(hi, 10 ** d - 1))


def _leaf(rng: random.Random, lo_hi: tuple[int, int]) -> Node:
    return Node(number(rng, lo_hi))


def _gen(rng: random.Random, n_ops: int, lv: Level) -> Node:
    if n_ops == 0:
        return _leaf(rng, lv.add)
    op = rng.choices("+-*", weights=lv.op_weights)[0]
    if op == "*":
        small = _leaf(rng, lv.mul_small)
        other = _leaf(rng, lv.mul_big) if n_ops == 1 else _gen(rng, n_ops - 1, lv)
        left, right = (other, small) if lv.fact_steps or rng.random() < 0.7 else (small, other)
        value = left.value * right.value
    else:
        n_left = n_ops - 1 if lv.fact_steps else rng.randint(0, n_ops - 1)
        left, right = _gen(rng, n_left, lv), _gen(rng, n_ops - 1 - n_left, lv)
        if op == "-" and left.value < right.value:
            if lv.fact_steps:
                raise _Retry
            left, right = right, left
        value = left.value + right.value if op == "+" else left.value - right.value
    if value > lv.max_value or (lv.fact_steps and not fact_step(left.value, op, right.value)):
        raise _Retry
    return Node(value, op, left, right)


def make_expression(rng: random.Random, difficulty: int, max_tries: int = 1000) -> Node:
    lv = level(difficulty)
    for _ in range(max_tries):
        try:
            return _gen(rng, rng.randint(*lv.ops), lv)
        except _Retry:
            continue
    raise TaskError(f"arith: could not build a level-{difficulty} expression in {max_tries} tries")


def level(difficulty: int) -> Level:
    if difficulty not in LEVELS:
        raise TaskError(f"arith: difficulty must be one of {sorted(LEVELS)}, got {difficulty!r}")
    return LEVELS[difficulty]


def sample(rng: random.Random, difficulty: int, lang: str = "en") -> dict:
    """One problem as raw parts: ``{key, prompt, answer, steps}`` (the key is the expression); ``lang``
    ('en' or 'zh') is the language of the question and draws nothing: both languages give the same problem."""
    phrasings = {"en": PHRASINGS, "zh": PHRASINGS_ZH}.get(lang)
    if phrasings is None:
        raise TaskError(f"arith: lang must be one of ('en', 'zh'), got {lang!r}")
    node = make_expression(rng, difficulty)
    expr = node.render()
    return {"key": f"{TASK}|{expr}", "prompt": phrasings[rng.randrange(len(phrasings))].format(e=expr),
            "answer": node.value, "steps": node.steps(), "expression": expr}
