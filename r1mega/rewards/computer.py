"""The reward entry point: ``RewardComputer(cfg).score(samples) -> RewardOutput``.

Per sample, the components configured for its task type are computed and combined:

    total = sum_c weight[c] * reward_c  +  overlong.weight * overlong_penalty     (if overlong.enabled)

The ``model`` component (reward-model score) is not computed here: the GRPO stage adds it with
:func:`r1mega.rewards.model_reward.apply_model_rewards` (its weight is left out of ``totals`` here).
Cheap components (format, overlong, choice letters) run in this process; math-verify, language consistency,
code tests (sandbox) and reasoning-gym scorers run in the :class:`~r1mega.rewards.pool.WorkerPool` with a hard
per-call timeout. Nothing a sample contains can make :meth:`RewardComputer.score` raise: a component that
times out, errors or is refused scores 0 and is counted (``reward/timeouts``, ``reward/errors``,
``reward/rejected``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from r1mega.config.rewards import TASK_TYPES, RewardsConfig
from r1mega.rewards.choice import choice_reward
from r1mega.rewards.extract import extract_answer, extract_code
from r1mega.rewards.format import format_reward
from r1mega.rewards.language import for_prompt
from r1mega.rewards.math_accuracy import prefilter
from r1mega.rewards.overlong import overlong_penalty
from r1mega.rewards.pool import Task, WorkerPool

log = logging.getLogger(__name__)


_ALIASES = {"task": "task_type", "answer": "gold", "completion": "response"}


@dataclass
class RewardSample:
    """One rollout to score.

    gold: math -> the reference answer (LaTeX or plain; a bare letter is graded as a choice); mcq -> the letter;
    code -> the test spec dict (see :mod:`r1mega.rewards.code`); gym -> unused (the entry is in metadata).
    metadata: mcq may give ``choices``; gym needs ``gym_task`` and ``entry`` (as made by
    :func:`r1mega.rewards.gym.generate`); ``lang``, the prompt's language, is the language reward's target
    when that is 'prompt'.
    Dicts are accepted too (``RewardSample.coerce``), with aliases task -> task_type, answer -> gold,
    completion -> response; unknown keys are ignored.
    """
    response: str
    task_type: str = "math"
    gold: Any = None
    prompt: str = ""
    metadata: dict = field(default_factory=dict)
    response_tokens: Optional[int] = None
    max_tokens: Optional[int] = None
    truncated: Optional[bool] = None  # cut at the generation limit (finish reason 'length'); None: tokens >= max

    @property
    def cut(self) -> bool:
        """Whether the response was cut at the length limit (then the \\boxed{} fallback gives no answer)."""
        if self.truncated is not None:
            return bool(self.truncated)
        return self.response_tokens is not None and self.max_tokens is not None and self.response_tokens >= self.max_tokens

    @classmethod
    def coerce(cls, x: Union["RewardSample", dict]) -> "RewardSample":
        if isinstance(x, cls):
            return x
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(x)
        for alias, name in _ALIASES.items():
            if alias in d and name not in d:
                d[name] = d.pop(alias)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class RewardOutput:
    totals: list                      # per-sample total reward
    components: dict                  # {component: per-sample values}; 0.0 where not computed for a sample
    metrics: dict                     # reward/... scalars for this batch (means, counts)
    details: list                     # per-sample {component: status} for debugging

    def __len__(self) -> int:
        return len(self.totals)


class RewardComputer:
    """Scores batches of samples with the rule-based rewards of ``cfg`` (a :class:`RewardsConfig`)."""

    def __init__(self, cfg: Optional[RewardsConfig] = None, pool: Optional[WorkerPool] = None):
        self.cfg = cfg or RewardsConfig()
        self.cfg.validate()
        self._pool = pool
        self._own_pool = pool is None
        self.counters: Counter = Counter()       # cumulative over all score() calls
        self._sandbox_backend: Optional[str] = None

    def check_code_sandbox(self) -> str:
        """The code sandbox backend this machine gives ('bwrap' or 'rlimit'); logs the degraded-sandbox warning
        in this (the trainer's) process. Raises if ``code.backend='bwrap'`` and bubblewrap is unusable."""
        if self._sandbox_backend is None:
            from r1mega.rewards.sandbox import resolve_python, select_backend

            c = self.cfg.code
            self._sandbox_backend = select_backend(c.backend, resolve_python(c.python), c.sandbox_uid)
        return self._sandbox_backend

    @property
    def pool(self) -> WorkerPool:
        if self._pool is None:
            p = self.cfg.pool
            self._pool = WorkerPool(p.num_workers, p.start_method, p.worker_memory_mb, preload=tuple(p.preload))
        return self._pool

    def warm_up(self) -> "RewardComputer":
        """Start the reward workers in the background now (see :meth:`WorkerPool.start`); returns self."""
        self.pool.start(background=True)
        return self

    def close(self) -> None:
        if self._pool is not None and self._own_pool:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "RewardComputer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------
    def score(self, samples: Sequence[Union[RewardSample, dict]]) -> RewardOutput:
        cfg = self.cfg
        n = len(samples)
        counts: Counter = Counter()
        comps: dict[str, list] = {}
        computed: dict[str, list] = {}
        details: list[dict] = [dict() for _ in range(n)]
        weights: list[dict] = [{} for _ in range(n)]
        tasks: list[Task] = []
        targets: list[tuple[int, str]] = []

        def put(i: int, comp: str, value: float, status: str = "ok") -> None:
            comps.setdefault(comp, [0.0] * n)[i] = float(value)
            computed.setdefault(comp, [False] * n)[i] = True
            details[i][comp] = status

        def fail(i: int, comp: str, status: str) -> None:
            put(i, comp, 0.0, status)
            counts[{"timeout": "timeouts", "rejected": "rejected"}.get(status, "errors")] += 1

        prepared: list[Optional[RewardSample]] = []
        for i, raw in enumerate(samples):
            try:
                s = RewardSample.coerce(raw)
                if not isinstance(s.response, str):
                    raise TypeError(f"response must be str, got {type(s.response).__name__}")
                if s.task_type not in TASK_TYPES:
                    raise ValueError(f"unknown task_type {s.task_type!r}")
                weights[i] = cfg.task_weights(s.task_type)
            except Exception as e:  # noqa: BLE001
                log.warning("reward sample %d unusable: %s", i, e)
                counts["errors"] += 1
                details[i]["sample"] = f"error: {e}"[:200]
                prepared.append(None)
                continue
            prepared.append(s)
            for comp in weights[i]:
                try:
                    self._plan(i, s, comp, put, fail, tasks, targets)
                except Exception as e:  # noqa: BLE001
                    log.warning("reward %s of sample %d failed: %s", comp, i, e)
                    fail(i, comp, "error")

        if tasks:
            try:
                outcomes = self.pool.run(tasks)
            except Exception as e:  # noqa: BLE001 - the pool itself broke: every pending component scores 0
                log.error("reward pool failed: %s", e)
                outcomes = [None] * len(tasks)
            for (i, comp), out in zip(targets, outcomes):
                if out is None or out.status in ("error", "crashed"):
                    fail(i, comp, "error" if out is None else out.status)
                elif out.status == "timeout":
                    fail(i, comp, "timeout")
                elif isinstance(out.value, dict):  # code / gym
                    st = out.value.get("status", "ok")
                    counts[f"{comp}_status/{st}"] += 1
                    if st == "rejected":
                        counts["rejected"] += 1
                    put(i, comp, out.value.get("reward", 0.0), st)
                else:
                    put(i, comp, out.value)

        totals = [0.0] * n
        penalties = [0.0] * n
        for i, s in enumerate(prepared):
            if s is None:
                continue
            total = sum(w * comps[c][i] for c, w in weights[i].items() if c in comps)
            if cfg.overlong.enabled:
                max_tokens = cfg.overlong.max_tokens if cfg.overlong.max_tokens is not None else s.max_tokens
                penalties[i] = overlong_penalty(s.response_tokens, max_tokens, cfg.overlong.cache_tokens)
                total += cfg.overlong.weight * penalties[i]
            totals[i] = total if math.isfinite(total) else 0.0
        if cfg.overlong.enabled:
            comps["overlong"] = penalties
            computed["overlong"] = [s is not None for s in prepared]
        return self._finish(totals, comps, computed, details, counts)

    def _plan(self, i, s: RewardSample, comp: str, put, fail, tasks: list, targets: list) -> None:
        """Compute ``comp`` of sample ``i`` now, or queue a pool task for it."""
        cfg = self.cfg
        if comp == "format":
            put(i, comp, format_reward(s.response, cfg.format))
        elif comp == "language":
            lcfg = for_prompt(cfg.language, s.metadata.get("lang"))  # target 'prompt': this sample's prompt language
            tasks.append(Task("language", (s.response, dataclasses.asdict(lcfg), cfg.format.think_prefilled),
                              cfg.language.timeout_s))
            targets.append((i, comp))
        elif comp == "accuracy":
            self._plan_accuracy(i, s, put, fail, tasks, targets)
        elif comp == "model":
            pass  # the reward model's score: a Megatron forward the caller runs (r1mega.rewards.model_reward)
        else:
            raise ValueError(f"unknown component {comp!r}")

    def _plan_accuracy(self, i, s: RewardSample, put, fail, tasks: list, targets: list) -> None:
        cfg = self.cfg
        if s.task_type == "code":
            self.check_code_sandbox()  # once; a required-but-missing bwrap makes every code reward an error
            code = extract_code(s.response)
            if code is None:
                put(i, "accuracy", 0.0, "no_code")
                return
            spec = s.gold if isinstance(s.gold, dict) else s.metadata
            tasks.append(Task("code", (code, spec, dataclasses.asdict(cfg.code)),
                              cfg.code.wall_timeout_s + cfg.code.timeout_margin_s))
            targets.append((i, "accuracy"))
            return
        answer = extract_answer(s.response, think_prefilled=cfg.format.think_prefilled, truncated=s.cut)
        if answer is None:
            put(i, "accuracy", 0.0, "no_answer")
            return
        if s.task_type == "gym":
            if len(answer) > cfg.gym.max_answer_chars:
                fail(i, "accuracy", "rejected")
                return
            md = s.metadata
            if "entry" not in md or "gym_task" not in md:
                raise ValueError("gym sample needs metadata['gym_task'] and metadata['entry']")
            tasks.append(Task("gym", (md["gym_task"], answer, md["entry"]), cfg.gym.timeout_s))
            targets.append((i, "accuracy"))
            return
        m = cfg.math
        if s.task_type == "mcq":
            put(i, "accuracy", choice_reward(answer, str(s.gold), m.mcq_letters, s.metadata.get("choices")))
            return
        why = prefilter(answer, m.max_answer_chars, m.max_brace_depth)
        if why:
            fail(i, "accuracy", "rejected")
            return
        tasks.append(Task("math", (answer, None if s.gold is None else str(s.gold), m.verify_timeout_s,
                                   m.numeric_precision, m.mcq_letters, s.metadata.get("choices")), m.timeout_s))
        targets.append((i, "accuracy"))

    def _finish(self, totals, comps, computed, details, counts: Counter) -> RewardOutput:
        metrics: dict[str, float] = {}
        n = len(totals)
        metrics["reward/total/mean"] = sum(totals) / n if n else 0.0
        for comp, values in comps.items():
            vals = [v for v, c in zip(values, computed[comp]) if c]
            if vals:
                metrics[f"reward/{comp}/mean"] = sum(vals) / len(vals)
        for key in ("timeouts", "errors", "rejected"):
            metrics[f"reward/{key}"] = float(counts.get(key, 0))
        for key, v in counts.items():
            if "_status/" in key:
                metrics[f"reward/{key}"] = float(v)
        self.counters.update(counts)
        self.counters["samples"] += n
        return RewardOutput(totals=totals, components=comps, metrics=metrics, details=details)


__all__ = ["RewardComputer", "RewardSample", "RewardOutput"]
