"""Evaluation settings: which benchmarks, how many samples per question, how to sample.

The ``eval`` section of :class:`~r1mega.config.run.RunConfig`. :func:`load_eval_config` also accepts a
mapping of these fields, or the YAML file named by ``$R1MEGA_EVAL_CONFIG`` for a config without the section.

The R1 paper samples at temperature 0.6, top-p 0.95, k samples per question (cons@64 on AIME).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .base import ConfigError, check, check_int, check_positive, doc

ENV_VAR = "R1MEGA_EVAL_CONFIG"


@dataclass
class EvalConfig:
    benchmarks: list = doc(["arith", "word"],
                           "What to evaluate: 'arith', 'word' (held-out split of the built-in tasks, per "
                           "difficulty), 'humaneval' (bundled HumanEval, first n_problems), 'gym:TASK' (a "
                           "reasoning-gym task, held-out by question hash), 'jsonl:PATH' (rows with prompt and "
                           "answer; optional task_type, difficulty, id). A stage with its own eval data (data.eval_paths / "
                           "eval_sources, or the held-out rows of its training files) evaluates only those while this "
                           "is left at its default; name benchmarks here to add them.")
    k: int = doc(16, "Samples per question (pass@1 is their mean correctness, cons@k their majority vote).")
    pass_k: list = doc([], "Extra k values for the unbiased pass@k (k itself and 1 are always reported).")
    n_problems: int = doc(50, "Problems per difficulty for 'arith'/'word'; problems in total for the other "
                              "benchmarks (a jsonl file: at most this many; 0 = all rows).")
    difficulties: list = doc([1, 2, 3, 4, 5], "Difficulty levels of the built-in task benchmarks.")
    temperature: float = doc(0.6, "Sampling temperature (R1 evaluation: 0.6).")
    top_p: float = doc(0.95, "Nucleus sampling (R1 evaluation: 0.95).")
    top_k: int = doc(-1, "Top-k sampling (-1 = off).")
    max_new_tokens: Optional[int] = doc(None, "Most tokens per completion (None = rollout.max_new_tokens).")
    seed: int = doc(0, "Problem-generation seed (held-out membership does not depend on it).")
    sampling_seed: Optional[int] = doc(None, "Seed of the sampled completions (None = rollout.seed).")
    template: Optional[str] = doc(None, "Prompt template (None = data.template).")
    correct_threshold: float = doc(1.0, "A sample counts as correct when its accuracy reward is at least this "
                                        "(reasoning-gym scorers can give partial credit).")
    batch_prompts: int = doc(64, "Questions per engine.generate call (each gets k samples).")
    save_samples: bool = doc(True, "Also write every completion to eval_samples.jsonl next to eval.json.")
    output: str = doc("eval.json", "File name (in the stage output directory) of the results.")
    checkpoint: Optional[str] = doc(None, "What to evaluate: a stage name or checkpoint directory (None = the "
                                          "eval stage's init_from, or a training stage's own latest checkpoint).")

    def ks(self) -> list[int]:
        """The k values pass@k is reported for: 1, the extra ones, k; sorted, at most k."""
        return sorted({1, self.k, *[int(x) for x in self.pass_k if int(x) <= self.k]})

    def validate(self, where: str = "eval") -> None:
        check(isinstance(self.benchmarks, list) and bool(self.benchmarks), f"{where}.benchmarks",
              f"got {self.benchmarks!r}, expected a non-empty list")
        from r1mega.eval.benchmark import check_benchmark_name

        for i, b in enumerate(self.benchmarks):
            why = check_benchmark_name(b)
            check(why is None, f"{where}.benchmarks[{i}]", f"got {b!r}: {why}")
        check_int(self.k, f"{where}.k")
        for i, x in enumerate(self.pass_k):
            check_int(x, f"{where}.pass_k[{i}]")
            check(x <= self.k, f"{where}.pass_k[{i}]", f"got {x}, but pass@k needs k <= the samples per question "
                                                      f"({self.k})")
        check_int(self.n_problems, f"{where}.n_problems", minimum=0)
        check(isinstance(self.difficulties, list) and bool(self.difficulties)
              and all(d in (1, 2, 3, 4, 5) for d in self.difficulties), f"{where}.difficulties",
              f"got {self.difficulties!r}, expected a non-empty list of levels 1..5")
        check_positive(self.temperature, f"{where}.temperature", allow_zero=True)
        check(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, f"{where}.top_p",
              f"got {self.top_p!r}, expected 0 < value <= 1")
        check_int(self.top_k, f"{where}.top_k", minimum=-1)
        check_int(self.max_new_tokens, f"{where}.max_new_tokens", allow_none=True)
        check_int(self.seed, f"{where}.seed", minimum=0)
        check_int(self.sampling_seed, f"{where}.sampling_seed", minimum=0, allow_none=True)
        if self.template is not None:
            from r1mega.data.templates import TEMPLATE_NAMES

            check(self.template in TEMPLATE_NAMES, f"{where}.template",
                  f"got {self.template!r}, expected one of {', '.join(TEMPLATE_NAMES)}")
        check(isinstance(self.correct_threshold, (int, float)) and 0 < self.correct_threshold <= 1,
              f"{where}.correct_threshold", f"got {self.correct_threshold!r}, expected 0 < value <= 1")
        check_int(self.batch_prompts, f"{where}.batch_prompts")
        check(isinstance(self.output, str) and self.output.strip() != "" and "/" not in self.output,
              f"{where}.output", f"got {self.output!r}, expected a file name")


def eval_config_from(data: Any, where: str = "eval") -> EvalConfig:
    """An :class:`EvalConfig` from an instance, another dataclass with the same fields, or a mapping."""
    from r1mega.config.schema import build

    if isinstance(data, EvalConfig):
        out = dataclasses.replace(data)
    elif dataclasses.is_dataclass(data) and not isinstance(data, type):
        out = build(EvalConfig, dataclasses.asdict(data), where)
    elif data is None:
        out = EvalConfig()
    elif isinstance(data, Mapping):
        out = build(EvalConfig, dict(data), where)
    else:
        raise ConfigError(where, f"got {data!r}, expected a mapping of eval settings")
    out.validate(where)
    return out


def load_eval_config(cfg=None, env: Optional[Mapping[str, str]] = None) -> EvalConfig:
    """The eval settings of a run config (see the module docstring for where they come from)."""
    env = os.environ if env is None else env
    section = getattr(cfg, "eval", None) if cfg is not None else None
    if section is not None:
        return eval_config_from(section, "eval")
    path = env.get(ENV_VAR)
    if path:
        from r1mega.config.loader import read_yaml

        return eval_config_from(read_yaml(path), f"{path}")
    return eval_config_from(None)


__all__ = ["EvalConfig", "ENV_VAR", "eval_config_from", "load_eval_config"]
