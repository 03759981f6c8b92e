"""Non-reasoning instruction/response pairs (R1 stage 3 mixes ~25% of them into SFT).

Small templated requests whose responses are checked by exact string match:

- repeat:    "Repeat the word apple three times."            -> "apple apple apple"
- larger:    "Which is larger, 17 or 71?"                    -> "71"
- smaller:   "Which is smaller, 17 or 71?"                   -> "17"
- sort:      "Sort these numbers from smallest to largest: 5, 12, 3."  -> "3, 5, 12"
- successor: "What number comes after 41?"                   -> "42"

As in R1 for simple queries, there is no chain of thought: the R1-format solution has an empty
``<think> </think>`` block. ``response`` holds the bare response.
"""
from __future__ import annotations

import random

from .base import TaskError

TASK_PREFIX = "nonreasoning/"
KINDS = ("repeat", "larger", "smaller", "sort", "successor")
WORDS = ("apple", "cat", "tree", "book", "sun", "river", "stone", "bird", "house", "star", "blue", "red")
TIMES = {2: "two", 3: "three", 4: "four"}


def sample(rng: random.Random, difficulty: int = 1, kind: str | None = None) -> dict:
    """One pair as raw parts: ``{key, task, prompt, answer}``. ``difficulty`` widens the number ranges."""
    if difficulty not in (1, 2, 3, 4, 5):
        raise TaskError(f"nonreasoning: difficulty must be 1..5, got {difficulty!r}")
    kind = kind or rng.choice(KINDS)
    hi = 10 ** min(1 + difficulty, 4) - 1
    if kind == "repeat":
        w, k = rng.choice(WORDS), rng.choice(sorted(TIMES))
        prompt, answer = f"Repeat the word {w} {TIMES[k]} times.", " ".join([w] * k)
    elif kind in ("larger", "smaller"):
        a, b = rng.sample(range(0, hi + 1), 2)
        prompt = f"Which is {kind}, {a} or {b}?"
        answer = str(max(a, b) if kind == "larger" else min(a, b))
    elif kind == "sort":
        nums = rng.sample(range(0, hi + 1), rng.randint(3, 3 + difficulty))
        prompt = f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}."
        answer = ", ".join(map(str, sorted(nums)))
    elif kind == "successor":
        n = rng.randint(0, hi)
        prompt, answer = f"What number comes after {n}?", str(n + 1)
    else:
        raise TaskError(f"nonreasoning: kind must be one of {KINDS}, got {kind!r}")
    task = TASK_PREFIX + kind
    return {"key": f"{task}|{prompt}", "task": task, "prompt": prompt, "answer": answer}
