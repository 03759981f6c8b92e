"""reasoning-gym adapter: generate problems of a named gym task, and score answers with the gym's own scorer.

Problem generation runs in the trainer / data process (trusted). Scoring runs in a pool worker (per-call
timeout) and is guarded, because several gym scorers hand the model's answer to Python ``eval`` (e.g.
spiral_matrix, n_queens: "is it a Python list?") or to sympy's ``parse_expr`` (countdown, integration), both
of which execute code. Which scorers may do so is found by scanning the source of the dataset class and its
module for ``eval(``/``exec(`` and for a sympy import (:func:`risky_tasks`), so a new reasoning-gym version is re-checked automatically. For those tasks:

* ``eval`` tasks: the answer must be inert Python (literals, containers, bare names: nothing can be called)
  or not Python at all (then ``eval`` raises before running anything);
* sympy tasks: the answer may only contain digits, letters, spaces and ``+-*/^().,=<>![]{}|``, and every
  multi-letter word must be a known math function (sin, sqrt, log, pi, ...): no attribute access, strings,
  underscores or builtins can be formed.

Anything else scores 0 and is counted as ``reward/rejected``.
"""
from __future__ import annotations

import ast
import inspect
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional

_PY_EXEC = re.compile(r"(?<![\w.])(eval|exec)\s*\(")
_SYMPY = re.compile(r"^\s*(import sympy|from sympy)", re.M)
_MATH_CHARS = re.compile(r"[\sA-Za-z0-9+\-*/^().,=<>!\[\]{}|]*")
_WORD = re.compile(r"[A-Za-z]+")
MATH_NAMES = frozenset(
    "sin cos tan cot sec csc asin acos atan acot asec acsc sinh cosh tanh coth asinh acosh atanh exp log ln sqrt "
    "cbrt pi oo abs Abs floor ceiling factorial binomial gcd lcm mod and or not True False".split())


@dataclass
class GymProblem:
    prompt: str
    answer: str
    metadata: dict = field(default_factory=dict)   # {'gym_task': name, 'entry': the gym's entry (for scoring)}


def gym_available() -> bool:
    try:
        import reasoning_gym  # noqa: F401
    except Exception:
        return False
    return True


def gym_tasks() -> list[str]:
    """Names of the registered reasoning-gym tasks."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def generate(task: str, n: int, seed: int = 0, **config: Any) -> list[GymProblem]:
    """``n`` problems of gym task ``task`` (deterministic in ``seed``); ``config``: the task's config fields."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset(task, size=n, seed=seed, **config)
    out = []
    for entry in ds:
        entry = _plain(dict(entry))
        out.append(GymProblem(prompt=entry["question"], answer=str(entry["answer"]),
                              metadata={"gym_task": task, "entry": entry}))
    return out


def _plain(x: Any) -> Any:
    """Entries cross process boundaries: keep them to plain picklable data."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


@lru_cache(maxsize=None)
def risky_tasks() -> dict[str, str]:
    """{task: 'eval' | 'sympy' | 'eval+sympy'} for tasks whose scorer code may execute the answer."""
    from reasoning_gym.factory import DATASETS

    out = {}
    for name, (cls, _) in DATASETS.items():
        src = ""
        mods = set()
        for k in cls.__mro__:
            if k.__module__.startswith("reasoning_gym"):
                mods.add(k.__module__)
                try:
                    src += inspect.getsource(k)
                except (OSError, TypeError):
                    pass
        for m in mods:
            try:
                src += inspect.getsource(sys.modules[m])
            except (OSError, TypeError, KeyError):
                pass
        kinds = (["eval"] if _PY_EXEC.search(src) else []) + (["sympy"] if _SYMPY.search(src) else [])
        if kinds:
            out[name] = "+".join(kinds)
    return out


_INERT_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.List, ast.Tuple, ast.Set, ast.Dict,
                ast.UnaryOp, ast.USub, ast.UAdd)


def _inert(answer: str) -> bool:
    """The expression only builds literals and looks up names: evaluating it cannot call anything."""
    try:
        tree = ast.parse(answer.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return all(isinstance(n, _INERT_NODES) for n in ast.walk(tree))


def answer_guard(task: str, answer: str) -> Optional[str]:
    """Why ``answer`` must not reach ``task``'s scorer (None = safe)."""
    kind = risky_tasks().get(task, "")
    if "eval" in kind:
        try:
            compile(answer, "<answer>", "eval", ast.PyCF_ONLY_AST)
            compiles = True
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            compiles = False
        if compiles and not _inert(answer):
            return "eval-scored answer is Python code, not a literal"
    if "sympy" in kind:
        if not _MATH_CHARS.fullmatch(answer):
            return "sympy-scored answer has characters outside the math set"
        for w in _WORD.findall(answer):
            if len(w) > 1 and w not in MATH_NAMES:
                return f"sympy-scored answer names {w[:20]!r}, not a known math function"
    return None


@lru_cache(maxsize=None)
def _scorer(task: str):
    from reasoning_gym import get_score_answer_fn

    return get_score_answer_fn(task)


def _worker_warmup() -> None:
    """Run by each reward worker at start: import reasoning-gym and scan its scorers once."""
    if gym_available():
        risky_tasks()


def gym_score_in_worker(task: str, answer: Optional[str], entry: dict) -> dict:
    """{'reward': float in [0, 1], 'status': 'ok' | 'rejected' | 'no_answer'}; runs in a pool worker."""
    if answer is None:
        return {"reward": 0.0, "status": "no_answer"}
    source = (entry.get("metadata") or {}).get("source_dataset") or task
    for name in {task, source}:
        why = answer_guard(name, answer)
        if why:
            return {"reward": 0.0, "status": "rejected", "message": why}
    score = float(_scorer(source)(answer, entry))
    return {"reward": min(1.0, max(0.0, score)), "status": "ok"}


__all__ = ["GymProblem", "generate", "gym_tasks", "gym_available", "risky_tasks", "answer_guard",
           "gym_score_in_worker"]
