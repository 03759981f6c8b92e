"""Shared pieces of the synthetic task families.

A :class:`Problem` keeps its worked solution as structured :class:`Step` objects, so the same
problem can be rendered with English or Chinese step words (the pretraining corpus mixes both on
purpose, see ``r1mega/data/corpus.py``) and in the R1 tag format or a plain "Question/Answer" one.

Every step is pure arithmetic on integers, written as an equality chain that a small model can
imitate and a checker can re-evaluate, e.g. ``47*6=40*6+7*6=240+42=282``.

Train / held-out membership is a pure function of a problem's *math key* (the expression it
computes, see :func:`split_of`), so two independently generated sets never share a problem,
whatever seeds were used, and the pretraining corpus (train split) never contains a held-out one.
"""
from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass, field
from typing import Optional

SPLITS = ("train", "test")
LANGS = ("en", "zh")
DIFFICULTIES = (1, 2, 3, 4, 5)
HELDOUT_FRACTION = 0.1  # share of the math-key hash space that belongs to the held-out split

# The R1 tags. The tokenizer makes each of them one token.
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# Step words per language. With the tasks' Chinese questions they are the only CJK text in the project:
# the tokenizer adds exactly those characters (r1mega.data.tasks.zh_characters), plus any other non-ASCII
# character its corpus has.
STEP_WORDS = {
    "en": {"step": "Step {k}: ", "end": ". ", "answer": "The answer is {a}."},
    "zh": {"step": "第{k}步：", "end": "。", "answer": "所以答案是{a}。"},
}


class TaskError(ValueError):
    """Bad arguments to a task generator, or a generator that cannot meet its request."""


def canonical_int(value) -> str:
    """The canonical text of an integer answer: no sign for 0, no leading zeros, no spaces, '-' for negatives."""
    if isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    if isinstance(value, str):
        s = value.strip().replace(",", "")
        if not re.fullmatch(r"[+-]?\d+", s):
            raise ValueError(f"not an integer: {value!r}")
        value = int(s)
    if not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return str(value)


# --------------------------------------------------------------------------------------------
# A small, safe evaluator for the integer expressions used in prompts and steps.

_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def eval_expr(text: str) -> int:
    """Evaluate an integer expression with + - * / and parentheses (``/`` must divide exactly).

    Raises ValueError for anything else (names, calls, floats, inexact division, ...).
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {text!r}") from e

    def ev(node) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div):
                if b == 0 or a % b:
                    raise ValueError(f"inexact division {a}/{b} in {text!r}")
                return a // b
            fn = _BINOPS.get(type(node.op))
            if fn is not None:
                return fn(a, b)
        raise ValueError(f"unsupported element {ast.dump(node)[:40]} in {text!r}")

    return ev(tree)


_STEP_CHAIN = re.compile(r"[\d(][\d+\-*/()]*(?:=[\d+\-*/()]+)+")


def check_steps(text: str) -> list[tuple[str, bool]]:
    """Find the equality chains (``a+b=c``, ``47*6=40*6+7*6=282``) in a worked solution and check
    each: every side must evaluate to the same integer. Returns ``[(chain, ok), ...]`` in order.

    Usable as a process-supervision signal (one verdict per step).
    """
    out = []
    for m in _STEP_CHAIN.finditer(text):
        chain = m.group(0)
        try:
            values = {eval_expr(side) for side in chain.split("=")}
            out.append((chain, len(values) == 1))
        except ValueError:
            out.append((chain, False))
    return out


# --------------------------------------------------------------------------------------------
# Split assignment

def split_of(key: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """'test' for the held-out share of math keys, else 'train' (a stable hash, independent of seeds)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "test" if h < heldout_fraction * 2**64 else "train"


# --------------------------------------------------------------------------------------------
# Problems and their worked solutions

@dataclass
class Step:
    """One worked step: ``expr = chain[0] = chain[1] = ... = result``."""

    expr: str
    result: int
    chain: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "=".join([self.expr, *self.chain, str(self.result)])


@dataclass
class Problem:
    id: str
    task: str
    difficulty: int
    prompt: str
    answer: str
    steps: list[Step]
    key: str
    split: str
    lang: str = "en"
    response: Optional[str] = None  # non-reasoning tasks: the plain response (no steps)

    def thinking(self, lang: Optional[str] = None) -> str:
        """The step text that goes inside <think> ... </think> (no answer sentence)."""
        w = STEP_WORDS[lang or self.lang]
        return "".join(w["step"].format(k=i + 1) + s.text() + w["end"] for i, s in enumerate(self.steps)).strip()

    def solution(self, lang: Optional[str] = None, direct: bool = False) -> str:
        """The R1-format worked solution: ``<think> steps </think> <answer> N </answer>``; ``direct``: no
        steps, only the answer sentence (``<think> The answer is N. </think> <answer> N </answer>``)."""
        if direct and self.steps:
            think = STEP_WORDS[lang or self.lang]["answer"].format(a=self.answer)
            return f"{THINK_OPEN} {think} {THINK_CLOSE} {ANSWER_OPEN} {self.answer} {ANSWER_CLOSE}"
        think = self.thinking(lang)
        inner = f" {think} " if think else " "
        return f"{THINK_OPEN}{inner}{THINK_CLOSE} {ANSWER_OPEN} {self.answer} {ANSWER_CLOSE}"

    def plain_solution(self, lang: Optional[str] = None, direct: bool = False) -> str:
        """Steps followed by an answer sentence, without tags (for "Question: ... Answer: ..."); ``direct``:
        the answer sentence alone."""
        if not self.steps:
            return self.response if self.response is not None else self.answer
        w = STEP_WORDS[lang or self.lang]
        if direct:
            return w["answer"].format(a=self.answer)
        sep = "" if (lang or self.lang) == "zh" else " "
        return self.thinking(lang) + sep + w["answer"].format(a=self.answer)

    def to_dict(self) -> dict:
        d = {"id": self.id, "task": self.task, "difficulty": self.difficulty, "prompt": self.prompt,
             "answer": self.answer, "solution": self.solution(), "split": self.split, "lang": self.lang}
        if self.response is not None:
            d["response"] = self.response
        return d


def place_parts(n: int) -> list[int]:
    """Non-zero place-value parts of n >= 0, largest first: 347 -> [300, 40, 7]; 0 -> [0]."""
    parts, p = [], 1
    while n:
        n, d = divmod(n, 10)
        if d:
            parts.append(d * p)
        p *= 10
    return parts[::-1] or [0]


def worked_step(a: int, op: str, b: int) -> Step:
    """The worked step for one binary operation, decomposed digit group by digit group.

    - ``+`` with a 3+ digit operand: hundreds and the rest separately (``378+465=300+400+78+65=700+143=843``)
    - ``-`` with a 3+ digit subtrahend: hundreds first (``843-465=843-400-65=443-65=378``)
    - ``*`` with a multi-digit factor: split the larger factor into place values when the other is
      one digit (``47*6=40*6+7*6=240+42=282``), else split the second factor (``47*36=47*30+47*6=1410+282=1692``)
    - ``/`` (exact): direct.
    Everything with both operands below 100 (or single digits for ``*``) is one direct equality.
    """
    expr = f"{a}{op}{b}"
    if op == "+":
        r = a + b
        ha, ra = divmod(a, 100)
        hb, rb = divmod(b, 100)
        chain = []
        if ha or hb:
            highs = [x * 100 for x in (ha, hb) if x]
            lows = [x for x in (ra, rb) if x]
            if len(highs) + len(lows) > 2:
                chain.append("+".join(map(str, highs + lows)))
                hs, ls = sum(highs), sum(lows)
                if hs and ls and len(highs) + len(lows) > 2:
                    chain.append(f"{hs}+{ls}")
        return Step(expr, r, _dedup(chain, expr))
    if op == "-":
        r = a - b
        hb, rb = divmod(b, 100)
        chain = []
        if hb and rb:
            chain = [f"{a}-{hb * 100}-{rb}", f"{a - hb * 100}-{rb}"]
        return Step(expr, r, _dedup(chain, expr))
    if op == "*":
        r = a * b
        if a < 10 and b < 10:
            return Step(expr, r)
        chain = []
        if min(a, b) < 10:
            big_first = a >= b
            big, small = (a, b) if big_first else (b, a)
            parts = place_parts(big)
            if len(parts) > 1:
                terms = [f"{p}*{small}" if big_first else f"{small}*{p}" for p in parts]
                chain = ["+".join(terms), "+".join(str(p * small) for p in parts)]
        else:
            parts = place_parts(b)
            if len(parts) > 1:
                chain = ["+".join(f"{a}*{p}" for p in parts), "+".join(str(a * p) for p in parts)]
        return Step(expr, r, _dedup(chain, expr))
    if op == "/":
        if b == 0 or a % b:
            raise TaskError(f"inexact division {a}/{b}")
        return Step(expr, a // b)
    raise TaskError(f"unknown operator {op!r}")


def _dedup(chain: list[str], expr: str) -> list[str]:
    out = []
    for c in chain:
        if c != expr and (not out or out[-1] != c):
            out.append(c)
    return out
