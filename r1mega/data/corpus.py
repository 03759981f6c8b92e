"""The pretraining text mix: plain sentences about numbers and objects, worked problems in the
R1-Zero template and in a plain "Question: ... Answer: ..." format, and a few non-reasoning pairs.

Everything is generated from templates in this repository (nothing is downloaded) and is
deterministic in ``CorpusConfig.seed``. Only *train*-split problems are used, so held-out
problems (``split_of(key) == "test"``) never appear in pretraining. Stricter still, no document
contains a *held-out expression* (:func:`heldout_expression`): a single operation ``a op b`` that
is the math key of a held-out arith or word problem (``arith|12+4`` or ``word|12+4``). Such an
expression is never written in an equation (in facts, worked steps, or inside the decomposition
sides of a step, ``40*6`` in ``47*6=40*6+7*6=...``, ``4+19`` in ``4+119=100+4+19=...``) nor in
its prose form (``12 plus 4 is 16``, ``had 12 apples and bought 4 more``); a train problem whose steps would write one is skipped, as
is a train arith problem whose step list is a held-out word key. So the held-out level-1/2
problems are answered by generalisation, never by recall.

Language mixing, on purpose: a ``zh_fraction`` share of the worked solutions write their step
words in Chinese (``第1步：37+12=49。所以答案是49。``) instead of English
(``Step 1: 37+12=49. The answer is 49.``). The base model therefore sometimes reasons in Chinese
on an English prompt, which the R1 stage-2 language-consistency reward then has to fix. With
``zh_prompt_fraction`` > 0 that share of the worked problems is *asked* in Chinese
(``(7-3)*2等于多少？``), and the step words are still drawn independently of the question's language: the
base model then often reasons in English on a Chinese question, the language mixing the DeepSeek-R1
paper reports for R1-Zero when RL prompts involve several languages.

Documents are yielded as strings without BOS/EOS; the packer adds them.

Sample documents (seed 0)::

    When 14 eggs are split into 2 equal piles, each pile has 7 eggs. Facts: 0*8=0, 4+7=11, 5*4=20, 17+18=35.
    Question: What does 79-56 equal?\nAnswer: Step 1: 79-56=23. The answer is 23.
    A conversation between User and Assistant. ... User: How much is 16-9?. Assistant: <think> 第1步：16-9=7。 </think> <answer> 7 </answer>
    Question: Sort these numbers from smallest to largest: 754, 488, 137, 370.\nAnswer: 137, 370, 488, 754
"""
from __future__ import annotations

import functools
import itertools
import random
import re
from dataclasses import dataclass
from typing import Iterator, Optional

from r1mega.config.base import check, check_int, doc

from .tasks import DIFFICULTIES, HELDOUT_FRACTION, REASONING_TASKS, Problem, eval_expr, iter_problems, split_of
from .tasks.base import _STEP_CHAIN
from .tasks.arith import number
from .tasks.word import CONTAINERS, NAMES, OBJECTS

DOC_KINDS = ("plain", "r1", "qa", "nonreasoning", "facts")

# The R1-Zero prompt (DeepSeek-R1 paper, Table 1). r1mega/data/templates.py is the owner of prompt
# templates; this copy is used only when that module is not importable.
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)


def render_prompt(prompt: str, template: str = "r1_zero") -> str:
    """The prompt in the named template: r1mega.data.templates.render when it exists, else the
    built-in R1-Zero text (template 'r1_zero' only)."""
    try:
        from r1mega.data.templates import render  # owned by the templates work
    except ImportError:
        render = None
    if render is not None:
        return render(template, prompt)
    if template not in ("r1_zero", "r1-zero", "r1zero"):
        raise ValueError(f"template {template!r} needs r1mega.data.templates, which is not available")
    return R1_ZERO_TEMPLATE.format(prompt=prompt)


@dataclass
class CorpusConfig:
    seed: int = doc(0, "Seed of the whole mix (documents, problems, languages).")
    plain_weight: float = doc(0.3, "Share of plain English documents about numbers and objects.")
    r1_weight: float = doc(0.25, "Share of worked problems in the R1-Zero template (prompt + <think>...</think> <answer>...</answer>).")
    qa_weight: float = doc(0.35, "Share of worked problems as 'Question: ...\\nAnswer: steps. The answer is N.'")
    nonreasoning_weight: float = doc(0.1, "Share of non-reasoning instruction/response pairs (both formats).")
    facts_weight: float = doc(0.0, "Share of dense arithmetic-fact documents ('Facts: 7+5=12, 9*3=27, ...', levels 1-2): the cheapest practice for the easy levels, in the notation of the worked steps.")
    zh_fraction: float = doc(0.2, "Share of worked solutions whose step words are Chinese (language mixing for the stage-2 reward to fix).")
    zh_prompt_fraction: float = doc(0.0, "Share of worked problems whose question is in Chinese; their step words follow zh_fraction like any other's, so most are answered in English (language mixing relative to the question).")
    zh_prompt_tasks: list = doc(["arith", "word"], "Task families whose problems may be asked in Chinese (zh_prompt_fraction of theirs).")
    direct_fraction: float = doc(0.0, "Share of multi-step problems (level 2 and up) written as a bare answer, no steps ('<think> The answer is 1. </think> <answer> 1 </answer>', 'Answer: The answer is 1.'). The base model then sometimes answers without working, mostly wrongly on new problems, and R1-Zero's RL can discover that working pays.")
    facts_max: int = doc(99, "Largest +/- operand of the arithmetic-fact documents: at most 20, every fact uses operands up to it (9: the single-digit tables that level-2 steps use); above 20, 70% of facts stay within 20 and the rest go up to it. Factors of * are always single digits.")
    task_weights: dict = doc({"arith": 0.6, "word": 0.4}, "Relative weights of the reasoning task families.")
    difficulty_weights: list = doc([0.5, 0.25, 0.12, 0.08, 0.05], "Relative weights of difficulty levels 1..5 for worked problems (easy-heavy: a tiny model must get some easy ones right before RL).")
    template: str = doc("r1_zero", "Prompt template name for the R1-format documents (see r1mega.data.templates).")
    heldout_fraction: float = doc(HELDOUT_FRACTION, "Held-out share of the problem space (must match the evaluation sets).")

    def weights(self) -> dict[str, float]:
        # "facts" last: with facts_weight 0 the kind draw is the same as without that kind
        return {"plain": self.plain_weight, "r1": self.r1_weight, "qa": self.qa_weight,
                "nonreasoning": self.nonreasoning_weight, "facts": self.facts_weight}

    def validate(self, where: str = "corpus") -> None:
        check_int(self.seed, f"{where}.seed", minimum=0)
        for k, v in self.weights().items():
            check(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, f"{where}.{k}_weight",
                  f"got {v!r}, expected a non-negative number")
        check(sum(self.weights().values()) > 0, where, "all document weights are 0")
        for name in ("zh_fraction", "zh_prompt_fraction", "direct_fraction"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1, f"{where}.{name}",
                  f"got {v!r}, expected a number in [0, 1]")
        check(isinstance(self.zh_prompt_tasks, list) and all(t in REASONING_TASKS for t in self.zh_prompt_tasks),
              f"{where}.zh_prompt_tasks", f"got {self.zh_prompt_tasks!r}, expected tasks from {tuple(REASONING_TASKS)}")
        check_int(self.facts_max, f"{where}.facts_max", minimum=9)
        check(isinstance(self.task_weights, dict) and self.task_weights
              and all(t in REASONING_TASKS and w >= 0 for t, w in self.task_weights.items())
              and sum(self.task_weights.values()) > 0, f"{where}.task_weights",
              f"got {self.task_weights!r}, expected non-negative weights for tasks from {tuple(REASONING_TASKS)}")
        check(isinstance(self.difficulty_weights, list) and len(self.difficulty_weights) == len(DIFFICULTIES)
              and all(isinstance(w, (int, float)) and w >= 0 for w in self.difficulty_weights)
              and sum(self.difficulty_weights) > 0, f"{where}.difficulty_weights",
              f"got {self.difficulty_weights!r}, expected {len(DIFFICULTIES)} non-negative weights (levels 1..5)")
        check(isinstance(self.heldout_fraction, float) and 0 < self.heldout_fraction < 1, f"{where}.heldout_fraction",
              f"got {self.heldout_fraction!r}, expected a float in (0, 1)")


# --------------------------------------------------------------------------------------------
# Held-out expressions (kept out of every document)

# every "a op b" inside an expression, overlapping: "100+4+19" -> "100+4", "4+19"
_PAIRS = re.compile(r"(?=(?<!\d)(\d+[+\-*/]\d+)(?!\d))")


def operations(side: str) -> list[str]:
    """The single operations ``a op b`` written in one side of an equality chain, including those
    inside a longer sum (``100+4+19`` -> ``100+4``, ``4+19``: the next side shows ``4+19``'s value)."""
    return _PAIRS.findall(side)


@functools.lru_cache(maxsize=1 << 18)
def heldout_expression(expr: str, heldout_fraction: float = HELDOUT_FRACTION) -> bool:
    """True when ``expr`` (one operation, ``"12+4"``) is the math key of a held-out problem of a
    reasoning task (``arith|12+4`` or ``word|12+4``: the level-1/2 problems of both families)."""
    return any(split_of(f"{t}|{expr}", heldout_fraction) == "test" for t in REASONING_TASKS)


def heldout_expressions_in(text: str, heldout_fraction: float = HELDOUT_FRACTION) -> list[str]:
    """The held-out operations (:func:`operations`) written in the equality chains of ``text``
    (``12+4=16``, ``47*6=40*6+7*6=240+42=282``: every side is checked)."""
    return [op for m in _STEP_CHAIN.finditer(text) for side in m.group(0).split("=") for op in operations(side)
            if heldout_expression(op, heldout_fraction)]


def problem_is_clean(p: Problem, heldout_fraction: float = HELDOUT_FRACTION) -> bool:
    """A train problem usable in the corpus: none of its steps writes a held-out expression, and
    its step list is not the key of a held-out word problem (an arith problem can compute exactly
    the steps of a word problem)."""
    for s in p.steps:
        if any(heldout_expression(op, heldout_fraction) for side in (s.expr, *s.chain) for op in operations(side)):
            return False
    return not (p.steps and split_of("word|" + ";".join(s.expr for s in p.steps), heldout_fraction) == "test")


# --------------------------------------------------------------------------------------------
# Plain text

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty")
COLORS = ("red", "blue", "green", "yellow", "brown", "white")
PLACES = ("on the table", "on the shelf", "on the floor", "on the desk", "in the garden", "in the kitchen")


def _plain_sentence(rng: random.Random) -> str:
    """One sentence; redrawn while it states a held-out expression (:func:`heldout_expression`)."""
    while True:
        text, expr = _plain_sentence_raw(rng)
        if expr is None or not heldout_expression(expr):
            return text


def _plain_sentence_raw(rng: random.Random) -> tuple[str, Optional[str]]:
    """(sentence, the single operation it states or None)."""
    (name, pron), obj = rng.choice(NAMES), rng.choice(OBJECTS)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    conts, cont = rng.choice(CONTAINERS)
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    n = rng.randint(1, 999)
    k = rng.randint(0, 20)
    kind = rng.randrange(16)
    hi, lo = max(a, b), min(a, b)
    if kind == 0:
        return f"{name} has {a} {obj}.", None
    if kind == 1:
        return f"There are {a} {obj} in the {cont} {rng.choice(PLACES)}.", None
    if kind == 2:
        return f"{a} plus {b} is {a + b}.", f"{a}+{b}"
    if kind == 3:
        return f"{hi} minus {lo} is {hi - lo}.", f"{hi}-{lo}"
    if kind == 4:
        x, y = rng.randint(0, 12), rng.randint(0, 12)
        return f"{x} times {y} is {x * y}.", f"{x}*{y}"
    if kind == 5:
        return f"The number {n} comes after {n - 1} and before {n + 1}.", None
    if kind == 6:
        hi2, lo2 = (a, b) if a != b else (a + 1, b)
        hi2, lo2 = max(hi2, lo2), min(hi2, lo2)
        return rng.choice((f"{hi2} is larger than {lo2}.", f"{lo2} is smaller than {hi2}.")), None
    if kind == 7:
        parts = [(n // 100, "hundred"), (n // 10 % 10, "ten"), (n % 10, "one")]
        return f"The number {n} is " + " and ".join(f"{d} {w}{'' if d == 1 else 's'}" for d, w in parts
                                                    if d or w == "one") + ".", None
    if kind == 8:
        return f"{NUMBER_WORDS[k].capitalize()} is written as {k}.", None
    if kind == 9:
        start, step = rng.randint(0, 50), rng.choice((1, 1, 2, 5, 10))
        return "Count: " + ", ".join(str(start + i * step) for i in range(rng.randint(4, 7))) + ".", None
    if kind == 10:
        return f"{name} had {a} {obj} and bought {b} more, so now {pron.lower()} has {a + b} {obj}.", f"{a}+{b}"
    if kind == 11:
        return f"{name} had {hi} {obj} and gave {lo} to {friend}, so {pron.lower()} has {hi - lo} left.", f"{hi}-{lo}"
    if kind == 12:
        x, y = rng.randint(2, 9), rng.randint(2, 12)
        return f"{x} {conts} with {y} {obj} each hold {x * y} {obj}.", f"{x}*{y}"
    if kind == 13:
        x, y = rng.randint(2, 9), rng.randint(2, 12)
        return f"When {x * y} {obj} are split into {x} equal piles, each pile has {y} {obj}.", f"{x * y}/{x}"
    if kind == 14:
        return arithmetic_facts(rng), None
    color = rng.choice(COLORS)
    return f"The {cont} is {color}. {name} puts {k} {obj} in the {color} {cont}.", None


def arithmetic_facts(rng: random.Random, max_operand: int = 99) -> str:
    """``Facts: 7+5=12, 23+4=27, 9*3=27, 56/8=7.``: facts in the notation of the worked steps, +/-
    operands up to ``max_operand`` (see ``CorpusConfig.facts_max``), single-digit factors, divisions
    that invert a times-table fact (a held-out expression, :func:`heldout_expression`, is redrawn)."""
    facts: list[str] = []
    n = rng.randint(3, 6)
    while len(facts) < n:
        op = rng.choice("+-*/")
        if op == "*":
            x, y = rng.randint(0, 9), rng.randint(0, 9)
        elif op == "/":  # the inverse of a times-table fact
            y, q = rng.randint(1, 9), rng.randint(0, 9)
            x = y * q
        else:
            hi = max_operand if max_operand <= 20 else 20 if rng.random() < 0.7 else max_operand
            x, y = number(rng, (0, hi)), number(rng, (0, hi))
            if op == "-" and x < y:
                x, y = y, x
        if heldout_expression(f"{x}{op}{y}"):
            continue
        facts.append(f"{x}{op}{y}={eval_expr(f'{x}{op}{y}')}")
    return "Facts: " + ", ".join(facts) + "."


def facts_document(rng: random.Random, max_operand: int = 99) -> str:
    """2-4 lines of arithmetic facts (:func:`arithmetic_facts`)."""
    return " ".join(arithmetic_facts(rng, max_operand) for _ in range(rng.randint(2, 4)))


def plain_document(rng: random.Random, facts_share: float = 0.3) -> str:
    """A short paragraph of 2-5 simple, true sentences; about ``facts_share`` of them are lists
    of arithmetic facts (dense, cheap practice for the easy levels)."""
    return " ".join(arithmetic_facts(rng) if rng.random() < facts_share else _plain_sentence(rng)
                    for _ in range(rng.randint(2, 5)))


# --------------------------------------------------------------------------------------------
# Worked problems

def r1_document(p: Problem, lang: str, template: str = "r1_zero", direct: bool = False) -> str:
    return f"{render_prompt(p.prompt, template)} {p.solution(lang, direct=direct)}"


def qa_document(p: Problem, lang: str, direct: bool = False) -> str:
    return f"Question: {p.prompt}\nAnswer: {p.plain_solution(lang, direct=direct)}"


def _language_flags(rng: random.Random, zh_fraction: float, block: int = 50) -> Iterator[bool]:
    """True (= Chinese) for a ``zh_fraction`` share of worked solutions: in each block of 50, a
    quota of floor(f*50) or that +1 (randomised rounding) at random positions. Tighter than
    independent coin flips, so short runs already respect the fraction."""
    while True:
        want = zh_fraction * block
        k = int(want) + (rng.random() < want - int(want))
        chosen = set(rng.sample(range(block), k))
        yield from (i in chosen for i in range(block))


def iter_corpus_records(cfg: Optional[CorpusConfig] = None) -> Iterator[dict]:
    """Endless stream of ``{"kind", "lang", "prompt_lang", "task", "difficulty", "key", "direct", "text"}``;
    ``kind`` is one of plain / r1 / qa / nonreasoning / facts, ``lang`` the language of the step words,
    ``prompt_lang`` that of the question, ``key`` the problem's math key (None for plain text),
    ``direct`` whether a multi-step problem is written as a bare answer (``CorpusConfig.direct_fraction``)."""
    cfg = cfg or CorpusConfig()
    cfg.validate()
    rng = random.Random(f"r1mega-corpus:{cfg.seed}")
    kinds, kw = list(cfg.weights()), list(cfg.weights().values())
    levels = dict(zip(DIFFICULTIES, cfg.difficulty_weights))
    problems = (p for p in iter_problems(cfg.task_weights, levels, seed=cfg.seed, split="train",
                                         heldout_fraction=cfg.heldout_fraction, zh_fraction=cfg.zh_prompt_fraction,
                                         zh_tasks=cfg.zh_prompt_tasks)
                if problem_is_clean(p, cfg.heldout_fraction))
    zh_flags = _language_flags(random.Random(f"r1mega-corpus-lang:{cfg.seed}"), cfg.zh_fraction)
    direct_rng = random.Random(f"r1mega-corpus-direct:{cfg.seed}")
    chats = iter_problems({"nonreasoning": 1.0}, {1: 0.5, 2: 0.3, 3: 0.2}, seed=cfg.seed, split="train",
                          heldout_fraction=cfg.heldout_fraction)
    while True:
        kind = rng.choices(kinds, weights=kw)[0]
        if kind == "plain":
            yield {"kind": kind, "lang": "en", "prompt_lang": "en", "task": None, "difficulty": None, "key": None,
                   "direct": False, "text": plain_document(rng)}
        elif kind == "facts":
            yield {"kind": kind, "lang": "en", "prompt_lang": "en", "task": None, "difficulty": None, "key": None,
                   "direct": False, "text": facts_document(rng, cfg.facts_max)}
        elif kind == "nonreasoning":
            p = next(chats)
            text = r1_document(p, "en", cfg.template) if rng.random() < 0.5 else qa_document(p, "en")
            yield {"kind": kind, "lang": "en", "prompt_lang": "en", "task": p.task, "difficulty": p.difficulty, "key": p.key,
                   "direct": False, "text": text}
        else:
            p = next(problems)
            lang = "zh" if next(zh_flags) else "en"
            # a separate stream, so direct_fraction 0 leaves every other draw as it was
            direct = len(p.steps) > 1 and direct_rng.random() < cfg.direct_fraction
            text = r1_document(p, lang, cfg.template, direct) if kind == "r1" else qa_document(p, lang, direct)
            yield {"kind": kind, "lang": lang, "prompt_lang": p.lang, "task": p.task, "difficulty": p.difficulty, "key": p.key,
                   "direct": direct, "text": text}


def iter_corpus(cfg: Optional[CorpusConfig] = None, n: Optional[int] = None) -> Iterator[str]:
    """The documents' text (``n`` of them, or endless with ``n=None``)."""
    texts = (r["text"] for r in iter_corpus_records(cfg))
    return texts if n is None else itertools.islice(texts, n)
