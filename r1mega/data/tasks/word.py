"""Templated word problems: a person's count of objects changes through a few actions.

    Tom has 37 apples. He buys 3 bags with 12 apples each. Then he gives 20 apples to Mia.
    How many apples does Tom have now?

Each action maps to one or two arithmetic steps (``3*12=36``, ``37+36=73``, ``73-20=53``), so
the worked solution is the same kind of step list as for :mod:`.arith`. Number ranges and the
number of operations follow the arithmetic ladder (:data:`.arith.LEVELS`). Counts never go
negative and splits into equal piles are exact.

With ``lang="zh"`` the same problem (same draws, key, answer and steps) is told in simple Mandarin,
with measure words and Arabic digits:

    汤姆有37个苹果。他买了3袋苹果，每袋12个。然后他把20个苹果给了米娅。汤姆现在有多少个苹果？

:data:`ZH_STRINGS` lists every Chinese fragment such a prompt can contain (for the tokenizer).
"""
from __future__ import annotations

import random

from .arith import fact_step, level, number
from .base import LANGS, Step, TaskError, worked_step

TASK = "word"

NAMES = (("Tom", "He"), ("Ana", "She"), ("Ben", "He"), ("Mia", "She"), ("Sam", "He"),
         ("Lea", "She"), ("Max", "He"), ("Zoe", "She"), ("Leo", "He"), ("Eva", "She"))
OBJECTS = ("apples", "pens", "coins", "books", "cards", "eggs", "stickers", "shells", "marbles", "cookies")
CONTAINERS = (("bags", "bag"), ("boxes", "box"), ("packs", "pack"), ("jars", "jar"), ("baskets", "basket"))

# Chinese renderings, index-parallel to the English tuples above: (name, pronoun), (object, measure word), container.
ZH_NAMES = (("汤姆", "他"), ("安娜", "她"), ("本", "他"), ("米娅", "她"), ("萨姆", "他"),
            ("莉娅", "她"), ("马克斯", "他"), ("佐伊", "她"), ("利奥", "他"), ("伊娃", "她"))
ZH_OBJECTS = (("苹果", "个"), ("笔", "支"), ("硬币", "枚"), ("书", "本"), ("卡片", "张"),
              ("鸡蛋", "个"), ("贴纸", "张"), ("贝壳", "个"), ("弹珠", "颗"), ("饼干", "块"))
ZH_CONTAINERS = ("袋", "盒", "包", "罐", "篮")
ZH_LEADS = ("然后{p}", "之后{p}", "{p}")  # "Then he", "After that he", "He"
ZH_TEMPLATES = {
    "start": "{name}有{v}{cl}{obj}。",
    "start_containers": "{name}有{k}{cont}{obj}，每{cont}装{x}{cl}。",
    "buy": "{lead}又买了{x}{cl}{obj}。",
    "find": "{lead}找到了{x}{cl}{obj}。",
    "give": "{lead}把{x}{cl}{obj}给了{friend}。",
    "lose": "{lead}丢了{x}{cl}{obj}。",
    "times": "{lead}的{obj}数量变成了原来的{k}倍。",
    "split": "{lead}把{obj}平均分成{k}堆，留下其中一堆。",
    "groups": "{lead}买了{k}{cont}{obj}，每{cont}{x}{cl}。",
    "question_now": "{name}现在有多少{cl}{obj}？",
    "question": "{name}有多少{cl}{obj}？",
}
# Every Chinese fragment a zh prompt can contain (its non-ASCII characters are the task's CJK alphabet).
ZH_STRINGS = (*(w for pair in ZH_NAMES + ZH_OBJECTS for w in pair), *ZH_CONTAINERS, *ZH_LEADS,
              *ZH_TEMPLATES.values())


def sample(rng: random.Random, difficulty: int, max_tries: int = 1000, lang: str = "en") -> dict:
    """A level-``difficulty`` word problem; ``lang`` ("en" or "zh") only changes the prompt's wording."""
    lv = level(difficulty)
    for _ in range(max_tries):
        try:
            return _sample(rng, lv, lang)
        except _Retry:
            continue
    raise TaskError(f"word: could not build a level-{difficulty} problem in {max_tries} tries")


class _Retry(Exception):
    pass


def _sample(rng: random.Random, lv, lang: str = "en") -> dict:
    if lang not in LANGS:
        raise TaskError(f"word: lang must be one of {LANGS}, got {lang!r}")
    n_ops = rng.randint(*lv.ops)
    (name, pron), obj = rng.choice(NAMES), rng.choice(OBJECTS)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    conts, cont = rng.choice(CONTAINERS)
    # The Chinese words of the same draws, looked up by index (never an extra draw).
    zh_name, zh_pron = ZH_NAMES[NAMES.index((name, pron))]
    zh_obj, zh_cl = ZH_OBJECTS[OBJECTS.index(obj)]
    zh = dict(name=zh_name, obj=zh_obj, cl=zh_cl, cont=ZH_CONTAINERS[CONTAINERS.index((conts, cont))],
              friend=ZH_NAMES[[n for n, _ in NAMES].index(friend)][0])
    steps: list[Step] = []
    sentences: list[str] = []

    def say(en: str, zh_key: str, **fields) -> None:
        sentences.append(ZH_TEMPLATES[zh_key].format(**zh, **fields) if lang == "zh" else en)

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
        say(f"{name} has {k} {conts}, and each {cont} holds {x} {obj}.", "start_containers", k=k, x=x)
        v = apply(k, "*", x)
        ops_left = n_ops - 1
    else:
        v = number(rng, (max(1, lv.add[0]), lv.add[1]))
        say(f"{name} has {v} {obj}.", "start", v=v)
        ops_left = n_ops

    first = True
    while ops_left > 0:
        kinds = ["buy", "find", "give", "lose", "times"]
        if ops_left >= 2:
            kinds += ["groups", "groups"]
        if any(v % k == 0 and v // k >= 1 for k in range(2, 10)):
            kinds.append("split")
        kind = rng.choice(kinds)
        if first:
            lead, zh_lead = pron, zh_pron
        else:  # one draw among three (English, Chinese) pairs
            lead, zh_lead = rng.choice([(en, z.format(p=zh_pron)) for en, z in
                                        zip((f"Then {pron.lower()}", f"After that {pron.lower()}", pron), ZH_LEADS)])
        if kind in ("buy", "find"):
            x = number(rng, (max(1, lv.add[0]), lv.add[1]))
            verb = "buys" if kind == "buy" else "finds"
            say(f"{lead} {verb} {x} more {obj}." if kind == "buy" else f"{lead} {verb} {x} {obj}.", kind, lead=zh_lead, x=x)
            v = apply(v, "+", x)
            ops_left -= 1
        elif kind in ("give", "lose"):
            if v < 1:
                continue
            x = number(rng, (max(1, min(lv.add[0], v)), min(lv.add[1], v)))
            say(f"{lead} gives {x} {obj} to {friend}." if kind == "give" else f"{lead} loses {x} {obj}.", kind,
                lead=zh_lead, x=x)
            v = apply(v, "-", x)
            ops_left -= 1
        elif kind == "times":
            k = rng.choice((2, 3))
            say(f"{lead} {'doubles' if k == 2 else 'triples'} the number of {obj}.", kind, lead=zh_lead, k=k)
            v = apply(v, "*", k)
            ops_left -= 1
        elif kind == "split":
            k = rng.choice([k for k in range(2, 10) if v % k == 0])
            say(f"{lead} splits the {obj} into {k} equal piles and keeps one pile.", kind, lead=zh_lead, k=k)
            v = apply(v, "/", k)
            ops_left -= 1
        else:  # groups: two ops
            k = number(rng, (max(2, lv.mul_small[0]), lv.mul_small[1]))
            x = number(rng, (max(2, lv.mul_small[0]), min(lv.mul_big[1], 99)))
            say(f"{lead} buys {k} {conts} with {x} {obj} each.", "groups", lead=zh_lead, k=k, x=x)
            g = apply(k, "*", x)
            v = apply(v, "+", g)
            ops_left -= 2
        first = False

    now = len(sentences) > 1
    say(f"How many {obj} does {name} have now?" if now else f"How many {obj} does {name} have?",
        "question_now" if now else "question")
    key = f"{TASK}|" + ";".join(s.expr for s in steps)
    return {"key": key, "prompt": ("" if lang == "zh" else " ").join(sentences), "answer": v, "steps": steps}
