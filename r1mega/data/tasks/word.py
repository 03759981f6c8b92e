"""Templated word problems: a person's count of objects changes through a few actions.

    Tom has 37 apples. He buys 3 bags with 12 apples each. Then he gives 20 apples to Mia.
    How many apples does Tom have now?

Each action maps to one or two arithmetic steps (``3*12=36``, ``37+36=73``, ``73-20=53``), so
the worked solution is the same kind of step list as for :mod:`.arith`. Number ranges and the
number of operations follow the arithmetic ladder (:data:`.arith.LEVELS`). Counts never go
negative and splits into equal piles are exact.
"""
from __future__ import annotations

import random

from .arith import fact_step, level, number
from .base import Step, TaskError, worked_step

TASK = "word"

NAMES = (("Tom", "He"), ("Ana", "She"), ("Ben", "He"), ("Mia", "She"), ("Sam", "He"),
         ("Lea", "She"), ("Max", "He"), ("Zoe", "She"), ("Leo", "He"), ("Eva", "She"))
OBJECTS = ("apples", "pens", "coins", "books", "cards", "eggs", "stickers", "shells", "marbles", "cookies")
CONTAINERS = (("bags", "bag"), ("boxes", "box"), ("packs", "pack"), ("jars", "jar"), ("baskets", "basket"))


def sample(rng: random.Random, difficulty: int, max_tries: int = 1000) -> dict:
    lv = level(difficulty)
    for _ in range(max_tries):
        try:
            return _sample(rng, lv)
        except _Retry:
            continue
    raise TaskError(f"word: could not build a level-{difficulty} problem in {max_tries} tries")


class _Retry(Exception):
    pass


def _sample(rng: random.Random, lv) -> dict:
    n_ops = rng.randint(*lv.ops)
    (name, pron), obj = rng.choice(NAMES), rng.choice(OBJECTS)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    conts, cont = rng.choice(CONTAINERS)
    steps: list[Step] = []
    sentences: list[str] = []

    def apply(a: int, op: str, b: int) -> int:
        s = worked_step(a, op, b)
        if s.result > lv.max_value or s.result < 0 or (lv.fact_steps and not fact_step(a, op, b)):
            raise _Retry
        steps.append(s)
        return s.result

    # The start: a plain count, or (using one op) a number of full containers.
    if n_ops >= 1 and rng.random() < 0.3:
        k = number(rng, (max(2, lv.mul_small[0]), lv.mul_small[1]))
        x = number(rng, (max(2, lv.mul_big[0]), lv.mul_big[1]) if n_ops == 1 else (max(2, lv.mul_small[0]), lv.mul_small[1]))
        sentences.append(f"{name} has {k} {conts}, and each {cont} holds {x} {obj}.")
        v = apply(k, "*", x)
        ops_left = n_ops - 1
    else:
        v = number(rng, (max(1, lv.add[0]), lv.add[1]))
        sentences.append(f"{name} has {v} {obj}.")
        ops_left = n_ops

    first = True
    while ops_left > 0:
        kinds = ["buy", "find", "give", "lose", "times"]
        if ops_left >= 2:
            kinds += ["groups", "groups"]
        if any(v % k == 0 and v // k >= 1 for k in range(2, 10)):
            kinds.append("split")
        kind = rng.choice(kinds)
        lead = pron if first else rng.choice((f"Then {pron.lower()}", f"After that {pron.lower()}", pron))
        if kind in ("buy", "find"):
            x = number(rng, (max(1, lv.add[0]), lv.add[1]))
            verb = "buys" if kind == "buy" else "finds"
            sentences.append(f"{lead} {verb} {x} more {obj}." if kind == "buy" else f"{lead} {verb} {x} {obj}.")
            v = apply(v, "+", x)
            ops_left -= 1
        elif kind in ("give", "lose"):
            if v < 1:
                continue
            x = number(rng, (max(1, min(lv.add[0], v)), min(lv.add[1], v)))
            sentences.append(f"{lead} gives {x} {obj} to {friend}." if kind == "give" else f"{lead} loses {x} {obj}.")
            v = apply(v, "-", x)
            ops_left -= 1
        elif kind == "times":
            k = rng.choice((2, 3))
            sentences.append(f"{lead} {'doubles' if k == 2 else 'triples'} the number of {obj}.")
            v = apply(v, "*", k)
            ops_left -= 1
        elif kind == "split":
            k = rng.choice([k for k in range(2, 10) if v % k == 0])
            sentences.append(f"{lead} splits the {obj} into {k} equal piles and keeps one pile.")
            v = apply(v, "/", k)
            ops_left -= 1
        else:  # groups: two ops
            k = number(rng, (max(2, lv.mul_small[0]), lv.mul_small[1]))
            x = number(rng, (max(2, lv.mul_small[0]), min(lv.mul_big[1], 99)))
            sentences.append(f"{lead} buys {k} {conts} with {x} {obj} each.")
            g = apply(k, "*", x)
            v = apply(v, "+", g)
            ops_left -= 2
        first = False

    question = f"How many {obj} does {name} have now?" if len(sentences) > 1 else f"How many {obj} does {name} have?"
    key = f"{TASK}|" + ";".join(s.expr for s in steps)
    return {"key": key, "prompt": " ".join(sentences + [question]), "answer": v, "steps": steps}
