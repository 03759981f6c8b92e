"""Preference pairs ``(prompt, chosen, rejected)`` for the Bradley-Terry reward model (R1 stage 4).

Every pair is made by the project from its own synthetic tasks (:mod:`r1mega.data.tasks`), from
the **train** split only (the held-out split stays clean for evaluation), and is a pure function of
the seed. ``chosen`` is always a correct, readable, well-formatted, helpful response; ``rejected``
differs from it in one way, named by the pair's ``kind`` and ``variant``:

==============  ==========================  =========================================================
kind            task                        rejected variant
==============  ==========================  =========================================================
correctness     arith / word                ``wrong_answer``: steps intact, a different final answer;
                                            ``wrong_step``: the last step's result and the answer
                                            changed together (an arithmetic slip)
language        arith / word                ``zh``: Chinese step words; ``mixed``: some steps in
                                            Chinese, some in English (language mixing)
format          arith / word                ``no_think_close``, ``no_answer_tags``, ``answer_first``,
                                            ``double_answer``, ``no_tags``, ``no_think_open``
helpfulness     nonreasoning                ``off_topic`` (the answer to another request),
                                            ``refusal`` (an unhelpful non-answer),
                                            ``wrong`` (a plausible but wrong answer)
==============  ==========================  =========================================================

Held-out pairs: :func:`build_pairs` first draws the evaluation problems (their own seed, unique
math keys), then draws the training problems from the train-split stream, skipping every math key
used by an evaluation pair, so the pairwise accuracy on ``eval`` is measured on problems the reward
model never saw.

Rows (``Pair.to_dict()``, one JSONL line each)::

    {"prompt", "chosen", "rejected", "kind", "variant", "task", "difficulty", "key", "question"}

``prompt`` is the templated prompt text (the template of the RL stage that uses the model);
responses are written as the policy would write them after that prompt (a template that prefills
``<think>`` gets responses without their leading ``<think>``).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Iterator, Optional, Sequence

from r1mega.data.tasks import Problem, Step, iter_problems
from r1mega.data.tasks.base import ANSWER_CLOSE, ANSWER_OPEN, STEP_WORDS, THINK_CLOSE, THINK_OPEN
from r1mega.data.templates import PREFILLS_THINK, render

KINDS = ("correctness", "language", "format", "helpfulness")
REASONING = ("arith", "word")
VARIANTS = {
    "correctness": ("wrong_answer", "wrong_step"),
    "language": ("zh", "mixed"),
    "format": ("no_think_close", "no_answer_tags", "answer_first", "double_answer", "no_tags", "no_think_open"),
    "helpfulness": ("off_topic", "refusal", "wrong"),
}
REFUSALS = ("I don't know.", "I cannot help with that.", "Please ask someone else.", "That is not something I can answer.",
            "Sorry, no.", "Hmm.")


@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str
    kind: str
    variant: str
    task: str
    difficulty: int
    key: str
    question: str

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------- responses
def r1_format(think: str, answer: str) -> str:
    """``<think> think </think> <answer> answer </answer>`` exactly as ``Problem.solution`` writes it."""
    inner = f" {think} " if think else " "
    return f"{THINK_OPEN}{inner}{THINK_CLOSE} {ANSWER_OPEN} {answer} {ANSWER_CLOSE}"


def _thinking(steps: Sequence[Step], langs: Sequence[str]) -> str:
    return "".join(STEP_WORDS[lang]["step"].format(k=i + 1) + s.text() + STEP_WORDS[lang]["end"]
                   for i, (s, lang) in enumerate(zip(steps, langs))).strip()


def _wrong_int(rng: random.Random, value: int) -> int:
    for _ in range(100):
        delta = rng.choice((1, 2, 3, 10, rng.randint(4, 99)))
        v = value + delta if (rng.random() < 0.5 or value - delta < 0) else value - delta
        if v != value and v >= 0:
            return v
    return value + 1


def correctness_rejected(rng: random.Random, p: Problem, variant: str) -> str:
    wrong = _wrong_int(rng, int(p.answer))
    if variant == "wrong_answer":
        return r1_format(p.thinking("en"), str(wrong))
    steps = list(p.steps)
    last = steps[-1]
    steps[-1] = Step(last.expr, wrong, list(last.chain))
    return r1_format(_thinking(steps, ["en"] * len(steps)), str(wrong))


def language_rejected(rng: random.Random, p: Problem, variant: str) -> str:
    n = len(p.steps)
    if variant == "zh" or n == 1:
        langs = ["zh"] * n
    else:
        k = rng.randint(1, n - 1)
        langs = rng.sample(["zh"] * k + ["en"] * (n - k), n)
    return r1_format(_thinking(p.steps, langs), p.answer)


def format_rejected(rng: random.Random, p: Problem, variant: str) -> str:
    think, a = p.thinking("en"), p.answer
    if variant == "no_think_close":
        return f"{THINK_OPEN} {think} {ANSWER_OPEN} {a} {ANSWER_CLOSE}"
    if variant == "no_answer_tags":
        return f"{THINK_OPEN} {think} {THINK_CLOSE} {STEP_WORDS['en']['answer'].format(a=a)}"
    if variant == "answer_first":
        return f"{ANSWER_OPEN} {a} {ANSWER_CLOSE} {THINK_OPEN} {think} {THINK_CLOSE}"
    if variant == "double_answer":
        return r1_format(think, a) + f" {ANSWER_OPEN} {a} {ANSWER_CLOSE}"
    if variant == "no_tags":
        return p.plain_solution("en")
    if variant == "no_think_open":
        return f"{think} {THINK_CLOSE} {ANSWER_OPEN} {a} {ANSWER_CLOSE}"
    raise ValueError(f"unknown format variant {variant!r}")


def _wrong_text_answer(rng: random.Random, answer: str) -> str:
    """A plausible wrong answer to a non-reasoning request (same shape as the right one)."""
    words = answer.split()
    if answer.isdigit():
        return str(_wrong_int(rng, int(answer)))
    if ", " in answer:  # a sorted list: any other order
        items = answer.split(", ")
        for _ in range(20):
            rng.shuffle(items)
            if ", ".join(items) != answer:
                return ", ".join(items)
        return ", ".join(reversed(answer.split(", ")))
    if len(set(words)) == 1:  # 'apple apple apple': another count
        k = len(words)
        return " ".join(words[:1] * rng.choice([c for c in (1, 2, 3, 4, 5, 6) if c != k]))
    return answer[::-1]


def helpfulness_rejected(rng: random.Random, p: Problem, variant: str, other: Problem) -> str:
    if variant == "off_topic":
        return r1_format("", other.answer)
    if variant == "refusal":
        return r1_format("", rng.choice(REFUSALS))
    if variant == "wrong":
        return r1_format("", _wrong_text_answer(rng, p.answer))
    raise ValueError(f"unknown helpfulness variant {variant!r}")


def _strip_prefill(text: str, template: str) -> str:
    if template in PREFILLS_THINK and text.startswith(THINK_OPEN):
        return text[len(THINK_OPEN):]
    return text


# ------------------------------------------------------------------------------------------ pairs
def _make_pair(rng: random.Random, kind: str, p: Problem, template: str, other: Optional[Problem] = None) -> Pair:
    variants = VARIANTS[kind]
    if template in PREFILLS_THINK:  # the prompt already opens <think>: a missing <think> is not a defect there
        variants = tuple(v for v in variants if v != "no_think_open")
    variant = rng.choice(variants)
    if kind == "helpfulness":
        chosen, rejected = r1_format("", p.answer), helpfulness_rejected(rng, p, variant, other)
    else:
        chosen = p.solution("en")
        rejected = {"correctness": correctness_rejected, "language": language_rejected,
                    "format": format_rejected}[kind](rng, p, variant)
    assert chosen != rejected, (kind, variant, p.key)
    return Pair(prompt=render(template, p.prompt), chosen=_strip_prefill(chosen, template),
                rejected=_strip_prefill(rejected, template), kind=kind, variant=variant, task=p.task,
                difficulty=p.difficulty, key=p.key, question=p.prompt)


def kind_counts(n: int, weights: dict) -> dict:
    """``n`` split over the kinds by weight (largest remainder; deterministic)."""
    kinds = [k for k in KINDS if weights.get(k, 0) > 0]
    total = sum(float(weights[k]) for k in kinds)
    raw = {k: n * float(weights[k]) / total for k in kinds}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(kinds, key=lambda k: (-(raw[k] - out[k]), KINDS.index(k)))[:n - sum(out.values())]:
        out[k] += 1
    return out


def _stream(task_names: Sequence[str], difficulties: Sequence[int], seed: int, exclude: set) -> Iterator[Problem]:
    """Train-split problems of ``task_names`` (uniform), skipping the math keys in ``exclude``."""
    for p in iter_problems({t: 1.0 for t in task_names}, {d: 1.0 for d in difficulties}, seed=seed, split="train"):
        if p.key not in exclude:
            yield p


def _pairs_for(kind: str, n: int, difficulties: Sequence[int], template: str, seed: int, exclude: set,
               unique: bool) -> list[Pair]:
    tasks = ("nonreasoning",) if kind == "helpfulness" else REASONING
    rng = random.Random(f"r1mega-prefs:{kind}:{seed}")
    # random.Random(str) seeds from the string's SHA-512: the same in every process (hash() of a str is salted)
    stream_seed = random.Random(f"r1mega-prefs-stream:{kind}:{seed}").getrandbits(31)
    stream = _stream(tasks, difficulties, seed=stream_seed, exclude=exclude)
    out: list[Pair] = []
    seen: set = set()
    stall = 0
    for p in stream:
        if unique and p.key in seen:
            stall += 1
            if stall > 20_000:
                raise ValueError(f"preference pairs: only {len(out)} of {n} unique {kind} problems at difficulties "
                                 f"{list(difficulties)}; ask for fewer evaluation pairs or add difficulty levels")
            continue
        stall = 0
        if len(out) == n:
            break
        seen.add(p.key)
        other = next(stream) if kind == "helpfulness" else None
        while other is not None and other.answer == p.answer:
            other = next(stream)
        out.append(_make_pair(rng, kind, p, template, other))
    return out


def build_pairs(n_train: int, n_eval: int, kinds: Optional[dict] = None, difficulties: Sequence[int] = (1, 2),
                template: str = "r1_zero", seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """``(train, eval)`` preference pairs, deterministic in the arguments.

    ``kinds``: relative weights of the pair kinds (default: all equal). Evaluation pairs use unique
    problems (across kinds too); training pairs never use a problem (math key) of an evaluation pair. Both lists are
    shuffled (kinds interleaved)."""
    kinds = kinds or {k: 1.0 for k in KINDS}
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown preference kind(s) {unknown}; expected {KINDS}")
    ev: list[Pair] = []
    held: set = set()  # every evaluation problem is used once, by one kind
    for kind, n in kind_counts(n_eval, kinds).items():
        got = _pairs_for(kind, n, difficulties, template, seed + 1_000_003, set(held), unique=True)
        held |= {p.key for p in got}
        ev += got
    tr: list[Pair] = []
    for kind, n in kind_counts(n_train, kinds).items():
        tr += _pairs_for(kind, n, difficulties, template, seed, held, unique=False)
    random.Random(f"r1mega-prefs-shuffle:{seed}").shuffle(tr)
    random.Random(f"r1mega-prefs-shuffle:{seed}:eval").shuffle(ev)
    return tr, ev


def write_pairs(path, pairs: Sequence[Pair]):
    from r1mega.data.jsonl import write_jsonl

    return write_jsonl(path, (p.to_dict() if isinstance(p, Pair) else dict(p) for p in pairs))


def read_pairs(path) -> list[dict]:
    from r1mega.data.jsonl import read_jsonl

    return read_jsonl(path, required=("prompt", "chosen", "rejected"))


__all__ = ["Pair", "KINDS", "VARIANTS", "build_pairs", "kind_counts", "write_pairs", "read_pairs", "r1_format"]
