"""Generate k samples per question with a rollout engine, grade them, vote, aggregate.

    runner = EvalRunner(engine, tokenizer, k=16)            # temperature 0.6, top-p 0.95 by default
    results = runner.run(problems)                          # problems: list[EvalProblem]
    results.summary["arith"]["pass@1"], results.problems[0].vote.answer

``engine`` is anything with the rollout engine's ``generate(prompt_token_ids, sampling, n)`` returning an
object with ``.completions`` (each with ``prompt_index``, ``sample_index``, ``text``, ``token_ids``,
``finish_reason``) and, optionally, ``.group(i)``: the vLLM and Megatron engines of :mod:`r1mega.rollout`, or
a scripted fake in tests. ``tokenizer`` needs ``encode(text)``.

Grading uses the rewards (:class:`~r1mega.rewards.RewardComputer`) with accuracy and format scored separately
for every task type (the training weights do not matter here): a sample is *correct* when its accuracy is at
least ``correct_threshold`` (1.0: exact for math/code; reasoning-gym partial credit does not count), and the
*format rate* is the mean format reward (strict mode by default: the share of well-formed responses).

Generation is collective on multi-rank runs (every rank must call :meth:`EvalRunner.generate` with the same
problems); grading and voting (:meth:`EvalRunner.score`) need to run on one rank only.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from r1mega.eval.benchmark import EvalProblem
from r1mega.eval.metrics import implausible, last_number_correct, mean, pass_at_k
from r1mega.eval.voting import Vote, cluster_many, equivalence_for, vote_from_clusters

EPS = 1e-9


@dataclass
class SampleResult:
    text: str
    answer: Optional[str]         # extracted answer (None: none found; code: not extracted)
    score: float                  # accuracy reward in [0, 1]
    correct: bool
    format: float                 # format reward
    tokens: int                   # response length in tokens
    finish_reason: str = ""
    status: str = ""              # the reward's accuracy status (ok, no_answer, timeout, ...)
    loose: Optional[float] = None  # numeric gold: the last number anywhere equals it (metrics.last_number_correct)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ProblemResult:
    problem: EvalProblem
    samples: list
    vote: Optional[Vote] = None   # None for task types without a vote (code)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def c(self) -> int:
        return sum(1 for s in self.samples if s.correct)

    @property
    def pass1(self) -> Optional[float]:
        return self.c / self.n if self.n else None

    def pass_at(self, k: int) -> Optional[float]:
        """Unbiased pass@k; None when the question has fewer than k samples."""
        return pass_at_k(self.n, self.c, k) if self.n >= k else None

    @property
    def cons(self) -> Optional[bool]:
        """Whether the majority-vote answer is correct (its representative sample's correctness); None for
        task types without a vote; False when no sample gave an answer."""
        if self.vote is None:
            return None
        if self.vote.sample is None:
            return False
        return self.samples[self.vote.sample].correct

    def to_dict(self, ks: Sequence[int], with_samples: bool = False) -> dict:
        p = self.problem
        d = {"id": p.id, "benchmark": p.benchmark, "task_type": p.task_type, "difficulty": p.difficulty,
             "gold": p.gold if p.task_type != "code" else p.metadata.get("task_id", p.id),
             "n": self.n, "c": self.c, "pass@1": self.pass1}
        for k in ks:
            if k != 1:
                d[f"pass@{k}"] = self.pass_at(k)
        d["cons"] = self.cons
        if self.vote is not None:
            d["vote"] = {"answer": self.vote.answer, "size": self.vote.size, "sizes": self.vote.sizes,
                         "abstained": self.vote.abstained}
        d["mean_tokens"] = mean(s.tokens for s in self.samples)
        d["format_rate"] = mean(s.format for s in self.samples)
        if with_samples:
            d["samples"] = [s.to_dict() for s in self.samples]
        return d


def aggregate(results: Sequence[ProblemResult], ks: Sequence[int], k: int) -> dict:
    """Benchmark-level metrics: means over questions of pass@1, pass@k (each k in ``ks``) and cons@k, and
    means over samples of response length, format, truncation and missing answers. ``too_few_samples``
    counts, per pass@k, the questions left out of it for having fewer than k samples (a warning says so)."""
    samples = [s for r in results for s in r.samples]
    row: dict[str, Any] = {"n": len(results), "samples": len(samples),
                           "pass@1": mean(r.pass1 for r in results)}
    for kk in ks:
        if kk != 1:
            row[f"pass@{kk}"] = mean(r.pass_at(kk) for r in results)
    cons = [r.cons for r in results if r.cons is not None]
    row[f"cons@{k}"] = mean(1.0 if x else 0.0 for x in cons) if cons else None
    row["mean_score"] = mean(s.score for s in samples)
    row["mean_tokens"] = mean(s.tokens for s in samples)
    row["format_rate"] = mean(s.format for s in samples)
    row["truncated_rate"] = mean(1.0 if s.finish_reason == "length" else 0.0 for s in samples)
    row["no_answer_rate"] = mean(1.0 if s.status == "no_answer" or s.status == "no_code" else 0.0
                                 for s in samples)
    loose = [s.loose for s in samples if s.loose is not None]
    row["last_number@1"] = mean(loose) if loose else None
    # a question with fewer than k samples has no pass@k: it is left out of that mean, and said so
    short = {f"pass@{kk}": sum(1 for r in results if r.n < kk) for kk in sorted(set(ks) | {1})}
    row["too_few_samples"] = {name: count for name, count in short.items() if count}
    warnings = [implausible(row)]
    if row["too_few_samples"]:
        most = max(kk for kk in ks if short[f"pass@{kk}"])
        warnings.append(f"{short[f'pass@{most}']} of {len(results)} questions have fewer than {most} samples "
                        f"(too_few_samples: {row['too_few_samples']}); each pass@k is the mean over the questions "
                        "with at least k samples only")
    warnings = [w for w in warnings if w]
    if warnings:
        row["warning"] = "; ".join(warnings)
    return row


def summarize(results: Sequence[ProblemResult], ks: Sequence[int], k: int) -> dict:
    """``{row name: metrics}``: one row per benchmark, then its per-difficulty rows ``bench/d1`` ... (when
    the problems have difficulties), then ``all`` when there are several benchmarks. Insertion-ordered."""
    by_bench: dict[str, list] = {}
    for r in results:
        by_bench.setdefault(r.problem.benchmark, []).append(r)
    out: dict[str, dict] = {}
    for bench, rs in by_bench.items():
        out[bench] = {"benchmark": bench, "difficulty": None, **aggregate(rs, ks, k)}
        levels = sorted({r.problem.difficulty for r in rs if r.problem.difficulty is not None})
        for d in levels:
            out[f"{bench}/d{d}"] = {"benchmark": bench, "difficulty": d,
                                    **aggregate([r for r in rs if r.problem.difficulty == d], ks, k)}
    if len(by_bench) > 1:
        out["all"] = {"benchmark": "all", "difficulty": None, **aggregate(results, ks, k)}
    return out


@dataclass
class EvalResults:
    problems: list
    k: int
    ks: list
    settings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.summary:
            self.summary = summarize(self.problems, self.ks, self.k)

    def to_dict(self, with_samples: bool = False) -> dict:
        return {"settings": self.settings, "summary": self.summary, "stats": self.stats,
                "problems": [r.to_dict(self.ks, with_samples) for r in self.problems]}


def eval_rewards_config(rewards_cfg=None, think_prefilled: bool = False):
    """The rewards config used to grade: the run's math/code/gym/format settings, with accuracy and format
    (weight 1 each) for every task type, no language reward, no overlong penalty."""
    from r1mega.config.rewards import TASK_TYPES, OverlongConfig, RewardsConfig

    base = rewards_cfg if isinstance(rewards_cfg, RewardsConfig) else RewardsConfig()
    fmt = dataclasses.replace(base.format, think_prefilled=base.format.think_prefilled or think_prefilled)
    return dataclasses.replace(base, weights={t: {"accuracy": 1.0, "format": 1.0} for t in TASK_TYPES},
                               format=fmt, overlong=OverlongConfig(enabled=False))


def _cut(completion) -> Optional[bool]:
    """Whether a completion was cut at the length limit (None: its engine does not say)."""
    reason = getattr(completion, "finish_reason", None)
    return None if not reason else reason == "length"


def _group(rollouts, i: int) -> list:
    group = rollouts.group(i) if hasattr(rollouts, "group") else [c for c in rollouts.completions
                                                                   if c.prompt_index == i]
    return sorted(group, key=lambda c: getattr(c, "sample_index", 0))


class EvalRunner:
    def __init__(self, engine, tokenizer, *, k: int = 16, temperature: float = 0.6, top_p: float = 0.95,
                 top_k: int = -1, max_new_tokens: int = 256, template: str = "r1_zero",
                 stop: Sequence[str] = ("</answer>",), include_stop_str_in_output: bool = True, seed: int = 1234,
                 pass_ks: Optional[Sequence[int]] = None, rewards_cfg=None, reward_computer=None,
                 batch_prompts: int = 64, correct_threshold: float = 1.0, log=None, system_prompt=None,
                 think_prefill: bool = False):
        from r1mega.config.rewards import RewardsConfig
        from r1mega.data.templates import TEMPLATE_NAMES, rewards_for_template

        if template not in TEMPLATE_NAMES:
            raise ValueError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATE_NAMES)}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.engine, self.tokenizer = engine, tokenizer
        self.k = k
        self.ks = sorted({1, k, *[int(x) for x in (pass_ks or ()) if int(x) <= k]})
        self.template = template
        self.render_args = dict(system_prompt=system_prompt, think_prefill=think_prefill)
        self._renderer = None
        self.sampling_args = dict(n=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  top_k=top_k, stop=tuple(stop), include_stop_str_in_output=include_stop_str_in_output,
                                  seed=seed)
        self.batch_prompts = max(1, batch_prompts)
        self.correct_threshold = correct_threshold
        self.rewards_cfg = eval_rewards_config(rewards_for_template(  # think_prefilled derived from the template
            rewards_cfg if isinstance(rewards_cfg, RewardsConfig) else RewardsConfig(), self.renderer))
        self.sampling_args["stop_token_ids"] = self.renderer.stop_token_ids()  # EOS / the template's end of turn
        self._rc = reward_computer
        self._own_rc = reward_computer is None
        self.log = log or (lambda msg: None)

    @classmethod
    def from_config(cls, engine, tokenizer, eval_cfg, run_cfg=None, **kw) -> "EvalRunner":
        """Settings from an :class:`~r1mega.eval.config.EvalConfig` and (optionally) the run config it
        belongs to (max_new_tokens, stop strings, seed and template default to the run's)."""
        ro = getattr(run_cfg, "rollout", None)
        data = getattr(run_cfg, "data", None)
        args = dict(
            k=eval_cfg.k, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p, top_k=eval_cfg.top_k,
            max_new_tokens=eval_cfg.max_new_tokens or (ro.max_new_tokens if ro is not None else 256),
            template=eval_cfg.template or (data.template if data is not None else "r1_zero"),
            pass_ks=eval_cfg.pass_k, batch_prompts=eval_cfg.batch_prompts,
            correct_threshold=eval_cfg.correct_threshold,
            rewards_cfg=getattr(run_cfg, "rewards", None),
            system_prompt=getattr(data, "system_prompt", None), think_prefill=getattr(data, "think_prefill", False))
        if ro is not None:
            args.update(stop=tuple(ro.stop), include_stop_str_in_output=ro.include_stop_str_in_output)
        seed = eval_cfg.sampling_seed if eval_cfg.sampling_seed is not None else (ro.seed if ro is not None
                                                                                 else None)
        if seed is not None:
            args["seed"] = seed
        args.update(kw)
        return cls(engine, tokenizer, **args)

    # ----------------------------------------------------------------------------------------- pieces
    @property
    def sampling(self):
        from r1mega.rollout.sampling import Sampling

        return Sampling(**self.sampling_args)

    @property
    def reward_computer(self):
        if self._rc is None:
            from r1mega.rewards import RewardComputer

            self._rc = RewardComputer(self.rewards_cfg)
        return self._rc

    def close(self) -> None:
        if self._rc is not None and self._own_rc:
            self._rc.close()
            self._rc = None

    def __enter__(self) -> "EvalRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def renderer(self):
        """The :class:`~r1mega.data.templates.PromptRenderer` of the template (a question or chat messages)."""
        if self._renderer is None:
            from r1mega.data.templates import PromptRenderer

            self._renderer = PromptRenderer(self.template, self.tokenizer, **self.render_args)
        return self._renderer

    def prompt_text(self, problem: EvalProblem) -> str:
        return self.renderer.render(problem.prompt)[0]

    def prompt_ids(self, problems: Sequence[EvalProblem]) -> list:
        return [self.renderer.render(p.prompt)[1] for p in problems]

    def _count_tokens(self, completion) -> int:
        ids = getattr(completion, "token_ids", None)
        if ids:
            return len(ids)
        text = getattr(completion, "text", "") or ""
        if not text:
            return 0
        try:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        except TypeError:
            return len(self.tokenizer.encode(text))

    # ----------------------------------------------------------------------------------------- phases
    def generate(self, problems: Sequence[EvalProblem]) -> list:
        """k completions per problem, ``[[completion, ...], ...]`` in problem order (collective)."""
        sampling = self.sampling
        prompts = self.prompt_ids(problems)
        groups: list = []
        for start in range(0, len(prompts), self.batch_prompts):
            chunk = prompts[start:start + self.batch_prompts]
            t0 = time.perf_counter()
            rollouts = self.engine.generate(chunk, sampling, self.k)
            groups += [_group(rollouts, i) for i in range(len(chunk))]
            self.log(f"eval: generated {start + len(chunk)}/{len(prompts)} questions x {self.k} samples "
                     f"({time.perf_counter() - t0:.1f} s)")
        return groups

    def score(self, problems: Sequence[EvalProblem], groups: Sequence[Sequence[Any]]) -> EvalResults:
        """Grade every completion, vote per question, aggregate."""
        from r1mega.rewards.extract import extract_answer

        if len(groups) != len(problems):
            raise ValueError(f"{len(groups)} completion groups for {len(problems)} problems")
        t0 = time.perf_counter()
        rc = self.reward_computer
        flat = []
        for p, g in zip(problems, groups):
            for c in g:
                flat.append((p, c, self._count_tokens(c)))
        out = rc.score([p.reward_sample(c.text, tokens, _cut(c)) for p, c, tokens in flat]) if flat else None
        results: list[ProblemResult] = []
        pos = 0
        for p, g in zip(problems, groups):
            samples = []
            for c in g:
                _, _, tokens = flat[pos]
                acc = out.components.get("accuracy", [0.0] * len(flat))[pos]
                fmt = out.components.get("format", [0.0] * len(flat))[pos]
                status = out.details[pos].get("accuracy", out.details[pos].get("sample", ""))
                answer = (extract_answer(c.text, self.rewards_cfg.format.think_prefilled, _cut(c))
                          if p.task_type != "code" else None)
                samples.append(SampleResult(text=c.text, answer=answer, score=acc,
                                            correct=acc >= self.correct_threshold - EPS, format=fmt, tokens=tokens,
                                            finish_reason=str(getattr(c, "finish_reason", "") or ""),
                                            status=str(status),
                                            loose=last_number_correct(c.text, p.gold) if p.task_type == "math"
                                            else None))
                pos += 1
            results.append(ProblemResult(p, samples))
        equiv_stats = self._vote(results)
        stats = {"score_seconds": time.perf_counter() - t0, **(out.metrics if out is not None else {}),
                 **{f"vote/{k}": v for k, v in equiv_stats.items()}}
        settings = {**{k: v for k, v in self.sampling_args.items() if k != "n"}, "k": self.k, "ks": self.ks,
                    "template": self.template, "think_prefilled": self.renderer.prefills_think,
                    "correct_threshold": self.correct_threshold,
                    "stop": list(self.sampling_args["stop"])}
        return EvalResults(results, self.k, self.ks, settings, stats)

    def _vote(self, results: list) -> dict:
        """Majority vote per question, questions of one task type clustered together."""
        stats: dict = {}
        by_type: dict[str, list] = {}
        for r in results:
            by_type.setdefault(r.problem.task_type, []).append(r)
        for tt, rs in by_type.items():
            rc = self.reward_computer  # its pool and math settings (timeouts, precision) compare the answers
            eq = equivalence_for(tt, rc.pool if tt == "math" else None, rc.cfg.math)
            if eq is None:
                continue
            answers = [[s.answer for s in r.samples] for r in rs]
            for r, a, clusters in zip(rs, answers, cluster_many(answers, eq)):
                r.vote = vote_from_clusters(a, clusters)
            for k, v in getattr(eq, "stats", {}).items():
                stats[k] = stats.get(k, 0) + v
        return stats

    def run(self, problems: Sequence[EvalProblem]) -> EvalResults:
        t0 = time.perf_counter()
        groups = self.generate(problems)
        gen_s = time.perf_counter() - t0
        res = self.score(problems, groups)
        res.stats["generate_seconds"] = gen_s
        return res


def run_eval(engine, tokenizer, problems: Sequence[EvalProblem], eval_cfg=None, run_cfg=None,
             **kw) -> EvalResults:
    """One call: :class:`EvalRunner` from an :class:`~r1mega.eval.config.EvalConfig` (defaults when None),
    run on ``problems``, reward pool closed afterwards (unless ``reward_computer`` is passed)."""
    from r1mega.eval.config import EvalConfig

    with EvalRunner.from_config(engine, tokenizer, eval_cfg or EvalConfig(), run_cfg, **kw) as runner:
        return runner.run(problems)


__all__ = ["EvalRunner", "EvalResults", "ProblemResult", "SampleResult", "aggregate", "summarize",
           "eval_rewards_config", "run_eval"]
