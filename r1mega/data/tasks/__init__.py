"""Synthetic, verifiable reasoning tasks: multi-step arithmetic and templated word problems at
five difficulty levels, plus small non-reasoning instruction/response pairs.

Problem records (``Problem.to_dict()``, one JSONL row each)::

    {"id", "task", "difficulty", "prompt", "answer", "solution", "split", "lang"}
    # + "response" for non-reasoning pairs

``lang`` is the problem's language: its question (``arith`` and ``word`` have a Chinese rendering of every
problem, drawn from the same random stream, so the language never changes which problem is drawn) and, by
default, the step words of its worked solution. Non-reasoning pairs are English only.

``answer`` is the canonical integer text for ``arith``/``word`` (the exact string for
non-reasoning pairs); ``solution`` is ``<think> Step 1: ... </think> <answer> N </answer>``.

Typical use::

    from r1mega.data.tasks import generate_problems
    test = generate_problems("arith", 200, seed=1, split="test", difficulty=1)
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from r1mega.config.base import check, check_int, doc

from . import arith, nonreasoning, word
from .base import (DIFFICULTIES, HELDOUT_FRACTION, LANGS, SPLITS, STEP_WORDS, TAGS, Problem, Step, TaskError,
                   canonical_int, check_steps, eval_expr, split_of, worked_step)

REASONING_TASKS = {"arith": arith, "word": word}
TASKS = tuple(REASONING_TASKS) + ("nonreasoning",)

__all__ = [
    "DIFFICULTIES", "HELDOUT_FRACTION", "LANGS", "SPLITS", "STEP_WORDS", "TAGS", "TASKS", "Problem", "Step",
    "TaskError", "TaskSetConfig", "canonical_int", "check_steps", "eval_expr", "generate_nonreasoning",
    "generate_problems", "iter_problems", "make_problem", "split_of", "worked_step", "write_task_splits",
    "zh_characters",
]


def zh_characters() -> str:
    """The sorted non-ASCII characters of every Chinese text the tasks write: step words and the Chinese
    questions (the tokenizer adds each of them as a token)."""
    texts = [*STEP_WORDS["zh"].values(), *(s for mod in REASONING_TASKS.values() for s in mod.ZH_STRINGS)]
    chars = {c for s in texts for c in s if ord(c) > 127}
    return "".join(sorted(chars))


def _check_args(task: str, split: str, lang: str) -> None:
    if task not in TASKS:
        raise TaskError(f"task must be one of {TASKS}, got {task!r}")
    if split not in SPLITS:
        raise TaskError(f"split must be one of {SPLITS}, got {split!r}")
    if lang not in LANGS:
        raise TaskError(f"lang must be one of {LANGS}, got {lang!r}")
    if task == "nonreasoning" and lang != "en":
        raise TaskError(f"nonreasoning pairs are English only, got lang {lang!r}")


def make_problem(rng: random.Random, task: str, difficulty: int, *, id: str = "", lang: str = "en",
                 heldout_fraction: float = HELDOUT_FRACTION) -> Problem:
    """Draw one problem of ``task`` (any split; see ``Problem.split``)."""
    if task == "nonreasoning":
        raw = nonreasoning.sample(rng, difficulty)
        return Problem(id=id, task=raw["task"], difficulty=difficulty, prompt=raw["prompt"], answer=raw["answer"],
                       steps=[], key=raw["key"], split=split_of(raw["key"], heldout_fraction), lang=lang,
                       response=raw["answer"])
    mod = REASONING_TASKS.get(task)
    if mod is None:
        raise TaskError(f"task must be one of {TASKS}, got {task!r}")
    raw = mod.sample(rng, difficulty, lang=lang)
    return Problem(id=id, task=task, difficulty=difficulty, prompt=raw["prompt"], answer=canonical_int(raw["answer"]),
                   steps=raw["steps"], key=raw["key"], split=split_of(raw["key"], heldout_fraction), lang=lang)


def generate_problems(task: str, n: int, seed: int = 0, split: str = "train",
                      difficulty: Union[int, Sequence[int]] = 1, *, lang: str = "en", unique: bool = True,
                      heldout_fraction: float = HELDOUT_FRACTION, max_stall: int = 20_000) -> list[Problem]:
    """``n`` problems of ``task`` belonging to ``split``, deterministic in (task, seed, split, difficulty).

    ``difficulty`` may be a list: the problems cycle through it (n=10, [1, 2] -> five of each).
    With ``unique`` no two returned problems share a math key (the expression they compute).
    Raises TaskError when the requested split/difficulty cannot supply ``n`` unique problems.
    """
    _check_args(task, split, lang)
    levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    if not levels or any(d not in DIFFICULTIES for d in levels):
        raise TaskError(f"difficulty must be in {DIFFICULTIES} (or a list of them), got {difficulty!r}")
    if not isinstance(n, int) or n < 0:
        raise TaskError(f"n must be a non-negative integer, got {n!r}")
    rng = random.Random(f"r1mega-tasks:{task}:{seed}:{split}:{','.join(map(str, levels))}")
    out: list[Problem] = []
    seen: set[str] = set()
    stall = 0  # draws since the last accepted problem
    while len(out) < n:
        d = levels[len(out) % len(levels)]
        p = make_problem(rng, task, d, lang=lang, heldout_fraction=heldout_fraction)
        if p.split != split or (unique and p.key in seen):
            stall += 1
            if stall > max_stall:
                raise TaskError(f"{task}: only {len(out)} of {n} unique level-{d} problems found for split {split!r} "
                                f"({max_stall} draws without a new one); ask for fewer or pass unique=False")
            continue
        stall = 0
        seen.add(p.key)
        p.id = f"{task}-{split}-s{seed}-d{d}-{len(out):06d}"
        out.append(p)
    return out


def generate_nonreasoning(n: int, seed: int = 0, split: str = "train", difficulty: Union[int, Sequence[int]] = 1,
                          **kw) -> list[Problem]:
    """``n`` non-reasoning pairs (see :mod:`.nonreasoning`); same contract as :func:`generate_problems`."""
    return generate_problems("nonreasoning", n, seed=seed, split=split, difficulty=difficulty, **kw)


def iter_problems(tasks: dict[str, float], difficulty_weights: dict[int, float], seed: int = 0,
                  split: str = "train", heldout_fraction: float = HELDOUT_FRACTION,
                  zh_fraction: float = 0.0, zh_tasks: Optional[Sequence[str]] = None) -> Iterator[Problem]:
    """An endless, deterministic stream of ``split`` problems: task and difficulty drawn by weight
    (duplicates possible; this feeds the pretraining corpus and the RL prompts).

    ``zh_fraction``: the share of reasoning problems asked in Chinese (``lang='zh'``), drawn from a separate
    stream, so the problems themselves are those of ``zh_fraction=0``; ``zh_tasks`` limits it to those task
    families (None: arith and word); non-reasoning pairs stay English."""
    for t in tasks:
        _check_args(t, split, "en")
    if not (isinstance(zh_fraction, (int, float)) and 0 <= zh_fraction <= 1):
        raise TaskError(f"zh_fraction must be a number in [0, 1], got {zh_fraction!r}")
    zh_tasks = set(REASONING_TASKS if zh_tasks is None else zh_tasks)
    if not zh_tasks <= set(REASONING_TASKS):
        raise TaskError(f"zh_tasks must be among {tuple(REASONING_TASKS)}, got {sorted(zh_tasks)}")
    names, tw = list(tasks), list(tasks.values())
    levels, lw = list(difficulty_weights), list(difficulty_weights.values())
    rng = random.Random(f"r1mega-stream:{seed}:{split}")
    lang_rng = random.Random(f"r1mega-stream-lang:{seed}:{split}")
    for i in itertools.count():
        t = rng.choices(names, weights=tw)[0]
        d = rng.choices(levels, weights=lw)[0]
        zh = t in zh_tasks and zh_fraction > 0 and lang_rng.random() < zh_fraction
        p = make_problem(rng, t, d, lang="zh" if zh else "en", heldout_fraction=heldout_fraction)
        if p.split == split:
            p.id = f"{t.replace('/', '.')}-{split}-stream{seed}-{i:08d}"
            yield p


@dataclass
class TaskSetConfig:
    """What :func:`write_task_splits` writes: per task and difficulty, n_train + n_test problems."""

    tasks: list = doc(["arith", "word"], "Task families to generate (arith, word, nonreasoning).")
    difficulties: list = doc([1, 2, 3, 4, 5], "Difficulty levels to generate (1 = one op on numbers up to 20 ... 5 = 3-4 ops on 3-digit numbers).")
    n_train: int = doc(2000, "Train problems per task and difficulty.")
    n_test: int = doc(100, "Held-out problems per task and difficulty.")
    seed: int = doc(0, "Generation seed (the split of a problem does not depend on it: splits stay disjoint across seeds).")
    heldout_fraction: float = doc(HELDOUT_FRACTION, "Share of the math-key hash space reserved for the held-out split.")

    def validate(self, where: str = "tasks") -> None:
        check(isinstance(self.tasks, list) and self.tasks and all(t in TASKS for t in self.tasks),
              f"{where}.tasks", f"got {self.tasks!r}, expected a non-empty list from {TASKS}")
        check(isinstance(self.difficulties, list) and self.difficulties and all(d in DIFFICULTIES for d in self.difficulties),
              f"{where}.difficulties", f"got {self.difficulties!r}, expected a non-empty list from {DIFFICULTIES}")
        check_int(self.n_train, f"{where}.n_train", minimum=0)
        check_int(self.n_test, f"{where}.n_test", minimum=0)
        check_int(self.seed, f"{where}.seed", minimum=0)
        check(isinstance(self.heldout_fraction, float) and 0 < self.heldout_fraction < 1,
              f"{where}.heldout_fraction", f"got {self.heldout_fraction!r}, expected a float in (0, 1)")


def write_task_splits(out_dir: Union[str, Path], cfg: Optional[TaskSetConfig] = None) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (all tasks and difficulties of ``cfg``) under ``out_dir``."""
    from r1mega.data.jsonl import write_jsonl

    cfg = cfg or TaskSetConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    paths = {}
    for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
        rows: list[dict] = []
        for task in cfg.tasks:
            for d in cfg.difficulties:
                rows += [p.to_dict() for p in generate_problems(task, n, seed=cfg.seed, split=split, difficulty=d,
                                                                heldout_fraction=cfg.heldout_fraction)]
        paths[split] = write_jsonl(out_dir / f"{split}.jsonl", rows)
    return paths
