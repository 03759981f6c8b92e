"""Reward configuration: which rule-based rewards score which task type, and how.

A sample's total reward is ``sum(weight[c] * reward_c)`` over the components configured for its task
type (``RewardsConfig.weights``, or the ``preset``), plus the optional DAPO-style overlong penalty.
Components: ``accuracy`` (math-verify / multiple-choice letter / code tests in the sandbox /
reasoning-gym scorer, by task type), ``format`` and ``language`` (consistency of the chain of thought),
and ``model``: the score of a frozen Bradley-Terry reward model (``reward_model``, trained by a
``reward_model`` stage), normalised as ``model_reward.normalize`` says. ``model`` is for the
``general`` task type (helpfulness / non-reasoning prompts, which have no rule-verifiable answer);
it is computed by the GRPO stage (a Megatron forward), not by the rule-reward pool.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from .base import ConfigError, check, check_choice, check_positive, doc

RULE_TASK_TYPES = ("math", "mcq", "code", "gym")
GENERAL = "general"  # helpfulness / non-reasoning prompts: scored by the reward model
TASK_TYPES = RULE_TASK_TYPES + (GENERAL,)
COMPONENTS = ("accuracy", "format", "language", "model")
MODEL_NORMALIZATIONS = ("sigmoid", "group_z", "raw")

# R1-Zero: accuracy + format. R1 stage 2 (reasoning RL after cold start): + language consistency.
# R1 stage 4 ("RL for all scenarios"): rule rewards for reasoning prompts, the reward model for general
# ones (no format rule there: a simple query's R1 answer has an empty <think> </think>, which the strict
# format check with require_nonempty scores 0; the reward model learned the format preference itself). Every preset scores general prompts with the reward model: a run whose prompts
# include them (data.tasks has 'nonreasoning') must name one in rewards.reward_model.
PRESETS: dict[str, dict[str, dict[str, float]]] = {
    "r1_zero": {**{t: {"accuracy": 1.0, "format": 1.0} for t in RULE_TASK_TYPES}, GENERAL: {"model": 1.0}},
    "r1_stage2": {**{t: {"accuracy": 1.0, "format": 1.0, "language": 1.0} for t in RULE_TASK_TYPES},
                  GENERAL: {"model": 1.0}},
    "r1_all_scenario": {**{t: {"accuracy": 1.0, "format": 1.0, "language": 1.0} for t in RULE_TASK_TYPES},
                        GENERAL: {"model": 1.0}},
    "accuracy_only": {**{t: {"accuracy": 1.0} for t in RULE_TASK_TYPES}, GENERAL: {"model": 1.0}},
}


@dataclass
class FormatRewardConfig:
    mode: str = doc("strict", "'strict': 1 only for exactly <think>..</think><answer>..</answer> (whole response); "
                              "'partial': mean of 4 checks (think pair, answer pair, order, nothing outside).")
    think_prefilled: bool = doc(False, "The prompt already ends with '<think>' (chat template prefill): prepend it "
                                       "to the response before checking. Derived from data.template by every stage "
                                       "(r1mega.data.templates.rewards_for_template); true on a template that does "
                                       "not prefill is an error.")
    require_nonempty: bool = doc(True, "Think and answer blocks must contain non-whitespace text.")

    def validate(self, where: str = "rewards.format") -> None:
        check_choice(self.mode, ("strict", "partial"), f"{where}.mode")


@dataclass
class MathRewardConfig:
    timeout_s: float = doc(5.0, "Hard per-call limit: the pool worker is killed and replaced after this; reward 0.")
    verify_timeout_s: int = doc(3, "math-verify's own SIGALRM timeout (whole seconds) for parse and verify.")
    max_answer_chars: int = doc(2000, "Extracted answers longer than this score 0 without being parsed.")
    max_brace_depth: int = doc(64, "Extracted answers nesting {}()[] deeper than this score 0 without being parsed.")
    mcq_letters: str = doc("ABCDEFGHIJ", "Letters accepted as multiple-choice answers; a math gold that is one of "
                                         "these letters (optionally '(B)') is graded as a choice.")
    numeric_precision: int = doc(15, "Significant digits math-verify uses when comparing numbers.")

    def validate(self, where: str = "rewards.math") -> None:
        check_positive(self.timeout_s, f"{where}.timeout_s")
        check(isinstance(self.verify_timeout_s, int) and self.verify_timeout_s >= 1, f"{where}.verify_timeout_s",
              f"got {self.verify_timeout_s!r}, expected an integer >= 1 (math-verify uses signal.alarm)")
        check(self.verify_timeout_s < self.timeout_s, f"{where}.verify_timeout_s",
              f"got {self.verify_timeout_s}, expected < timeout_s ({self.timeout_s}) so the soft limit fires first")
        check_positive(self.max_answer_chars, f"{where}.max_answer_chars")
        check_positive(self.max_brace_depth, f"{where}.max_brace_depth")
        check(bool(self.mcq_letters) and self.mcq_letters.isalpha() and self.mcq_letters.isupper(),
              f"{where}.mcq_letters", f"got {self.mcq_letters!r}, expected upper-case letters like 'ABCD'")


@dataclass
class CodeRewardConfig:
    backend: str = doc("auto", "'bwrap' (bubblewrap, required), 'rlimit' (rlimits + net namespace only: weaker, "
                               "warns) or 'auto' (bwrap if it works here, else rlimit with a loud warning).")
    python: str = doc("auto", "Interpreter run inside the sandbox; 'auto' = this interpreter if the sandbox uid can "
                              "reach it, else /usr/bin/python3.")
    sandbox_uid: int = doc(65534, "Unprivileged uid (and gid) the sandboxed program runs as when we are root.")
    wall_timeout_s: float = doc(10.0, "Wall-clock limit of one program run (all its tests); then it is killed.")
    cpu_time_s: int = doc(10, "RLIMIT_CPU seconds for the program (and each child).")
    test_timeout_s: float = doc(3.0, "Per test-case alarm inside the harness; a test that runs longer fails.")
    memory_mb: int = doc(1024, "RLIMIT_AS of the program in MiB.")
    max_processes: int = doc(16, "RLIMIT_NPROC of the program (processes + threads of the sandbox uid).")
    max_output_bytes: int = doc(1_000_000, "At most this many bytes are read from the program's stdout+stderr; "
                                           "more kills it and scores 0.")
    max_code_chars: int = doc(100_000, "Code blocks longer than this score 0 without running.")
    timeout_margin_s: float = doc(5.0, "Extra seconds the pool grants a code call beyond wall_timeout_s before "
                                       "killing the worker itself.")

    def validate(self, where: str = "rewards.code") -> None:
        check_choice(self.backend, ("auto", "bwrap", "rlimit"), f"{where}.backend")
        for name in ("wall_timeout_s", "cpu_time_s", "test_timeout_s", "memory_mb", "max_processes",
                     "max_output_bytes", "max_code_chars", "timeout_margin_s"):
            check_positive(getattr(self, name), f"{where}.{name}")
        check(isinstance(self.sandbox_uid, int) and self.sandbox_uid > 0, f"{where}.sandbox_uid",
              f"got {self.sandbox_uid!r}, expected a non-root uid (> 0)")
        check(self.memory_mb >= 64, f"{where}.memory_mb", f"got {self.memory_mb}, expected >= 64 (Python needs it)")
        check(self.max_processes >= 2, f"{where}.max_processes", f"got {self.max_processes}, expected >= 2")


@dataclass
class LanguageRewardConfig:
    target: str = doc("prompt", "Target language of the chain of thought (ISO 639-1: en, zh, ja, ko, ru, ar, fr, ...), "
                                "or 'prompt': each sample's prompt language (its prompt record's 'lang', as "
                                "DeepSeek-R1 scores the CoT against the query's language; prompt_default where a "
                                "prompt has none). It selects the accepted scripts.")
    prompt_default: str = doc("en", "With target 'prompt': the language of a prompt that does not name one.")
    scripts: list = doc([], "Override: accepted scripts (e.g. ['Latin']); empty = derived from target.")
    scope: str = doc("think", "'think': text inside <think>..</think> (else before <answer>); 'response': all of it.")
    use_langid: bool = doc(False, "Also split same-script text by language with py3langid (offline model in the "
                                  "wheel), e.g. English vs French. Only for targets it knows.")
    langid_candidates: list = doc(["en", "fr", "de", "es", "it", "pt", "nl"],
                                  "Languages langid chooses among for target-script sentences (target is added).")
    langid_min_confidence: float = doc(0.5, "Below this langid confidence a sentence keeps the benefit of the doubt "
                                            "(counted as target language).")
    empty_value: float = doc(0.0, "Reward when the chain of thought has no countable word (only math/numbers).")
    timeout_s: float = doc(5.0, "Hard per-call limit in the pool (worker killed and replaced; reward 0).")

    def validate(self, where: str = "rewards.language") -> None:
        from r1mega.rewards.scripts import KNOWN_SCRIPTS, TARGET_SCRIPTS

        check_choice(self.scope, ("think", "response"), f"{where}.scope")
        if self.scripts:
            for s in self.scripts:
                check_choice(s, tuple(sorted(KNOWN_SCRIPTS)), f"{where}.scripts")
        else:
            check(self.target == "prompt" or self.target in TARGET_SCRIPTS, f"{where}.target",
                  f"got {self.target!r}, expected 'prompt' or one of {', '.join(sorted(TARGET_SCRIPTS))} (or set scripts)")
        check(self.prompt_default in TARGET_SCRIPTS, f"{where}.prompt_default",
              f"got {self.prompt_default!r}, expected one of {', '.join(sorted(TARGET_SCRIPTS))}")
        if self.use_langid:
            from r1mega.rewards.language import langid_available

            check(langid_available(), f"{where}.use_langid", "is true but py3langid is not installed")
            check(not self.scripts, f"{where}.use_langid", "needs a target language, not a scripts override")
        check(0.0 <= self.langid_min_confidence <= 1.0, f"{where}.langid_min_confidence",
              f"got {self.langid_min_confidence!r}, expected a number in [0, 1]")
        check(0.0 <= self.empty_value <= 1.0, f"{where}.empty_value",
              f"got {self.empty_value!r}, expected a number in [0, 1]")
        check_positive(self.timeout_s, f"{where}.timeout_s")


@dataclass
class GymRewardConfig:
    timeout_s: float = doc(5.0, "Hard per-call limit for a reasoning-gym scorer (worker killed and replaced).")
    max_answer_chars: int = doc(4000, "Longer extracted answers score 0 without being scored.")

    def validate(self, where: str = "rewards.gym") -> None:
        check_positive(self.timeout_s, f"{where}.timeout_s")
        check_positive(self.max_answer_chars, f"{where}.max_answer_chars")


@dataclass
class OverlongConfig:
    enabled: bool = doc(False, "Add DAPO's soft overlong penalty: 0 up to max_tokens - cache_tokens, then linear "
                               "down to -1 at max_tokens, -1 beyond.")
    cache_tokens: int = doc(512, "L_cache: length of the soft-penalty interval before the maximum length.")
    max_tokens: Optional[int] = doc(None, "L_max; None = each sample's own max_tokens.")
    weight: float = doc(1.0, "Multiplier of the penalty in the total.")

    def validate(self, where: str = "rewards.overlong") -> None:
        check(isinstance(self.cache_tokens, int) and self.cache_tokens >= 1, f"{where}.cache_tokens",
              f"got {self.cache_tokens!r}, expected an integer >= 1")
        if self.max_tokens is not None:
            check(isinstance(self.max_tokens, int) and self.max_tokens > self.cache_tokens, f"{where}.max_tokens",
                  f"got {self.max_tokens!r}, expected an integer > cache_tokens ({self.cache_tokens})")
        check_positive(self.weight, f"{where}.weight", allow_zero=True)


@dataclass
class PoolConfig:
    num_workers: int = doc(0, "Reward worker processes; 0 = one per CPU core (at most 16).")
    start_method: str = doc("forkserver", "multiprocessing start method of the workers: forkserver, spawn or fork "
                                          "(fork is unsafe from a threaded trainer).")
    worker_memory_mb: int = doc(4096, "RLIMIT_AS of each worker in MiB (0 = unlimited): a blow-up fails that call only.")
    preload: list = doc(["r1mega.rewards.gym"], "Extra modules every worker imports (and warms up) before taking "
                                                "work, so import time is not charged to call timeouts.")

    def validate(self, where: str = "rewards.pool") -> None:
        check(isinstance(self.num_workers, int) and 0 <= self.num_workers <= 1024, f"{where}.num_workers",
              f"got {self.num_workers!r}, expected an integer in [0, 1024]")
        check_choice(self.start_method, ("forkserver", "spawn", "fork"), f"{where}.start_method")
        check_positive(self.worker_memory_mb, f"{where}.worker_memory_mb", allow_zero=True)


@dataclass
class ModelRewardConfig:
    normalize: str = doc("sigmoid", "How a reward-model score s becomes the 'model' component: 'sigmoid' "
                                    "(sigmoid(s / scale), in (0, 1) like accuracy: the Bradley-Terry probability of "
                                    "beating a score-0 response), 'group_z' ((s - mean) / (std + 1e-6) over the "
                                    "prompt's G samples) or 'raw' (s / scale).")
    scale: float = doc(1.0, "Divides the score before 'sigmoid' / 'raw' (a temperature on the reward model's logits).")
    batch_size: int = doc(64, "Sequences per reward-model forward pass on one data-parallel rank.")

    def validate(self, where: str = "rewards.model_reward") -> None:
        check_choice(self.normalize, MODEL_NORMALIZATIONS, f"{where}.normalize")
        check_positive(self.scale, f"{where}.scale")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, f"{where}.batch_size",
              f"got {self.batch_size!r}, expected an integer >= 1")


@dataclass
class RewardsConfig:
    preset: str = doc("r1_zero", "Component weights per task type: 'r1_zero' (accuracy+format), 'r1_stage2' "
                                 "(+language), 'r1_all_scenario' (r1_stage2 for reasoning, the reward model for general prompts), "
                                 "'accuracy_only'. General prompts get the reward model ('model') in every preset. "
                                 "Ignored for task types listed in weights.")
    weights: dict = doc({}, "Per task type {component: weight}, e.g. {'math': {'accuracy': 1, 'format': 0.5}}; "
                            "overrides the preset for the task types it names.")
    format: FormatRewardConfig = doc(FormatRewardConfig(), "Format reward.")
    math: MathRewardConfig = doc(MathRewardConfig(), "Math / multiple-choice accuracy.")
    code: CodeRewardConfig = doc(CodeRewardConfig(), "Code accuracy (tests in the sandbox).")
    language: LanguageRewardConfig = doc(LanguageRewardConfig(), "Language consistency of the chain of thought.")
    gym: GymRewardConfig = doc(GymRewardConfig(), "reasoning-gym tasks.")
    overlong: OverlongConfig = doc(OverlongConfig(), "DAPO-style soft overlong penalty.")
    pool: PoolConfig = doc(PoolConfig(), "Process pool the rewards run in.")
    reward_model: Optional[str] = doc(None, "Frozen Bradley-Terry reward model for the 'model' component: 'stage:NAME' "
                                            "(an earlier reward_model stage's latest checkpoint), or a checkpoint "
                                            "directory. Needed when general prompts (data.tasks: nonreasoning) are in RL.")
    model_reward: ModelRewardConfig = doc(ModelRewardConfig(), "How reward-model scores are normalised and batched.")

    def uses_model(self, task_type: str) -> bool:
        """Whether ``task_type``'s reward includes the reward-model component (non-zero weight)."""
        return bool(self.task_weights(task_type).get("model", 0.0))

    def task_weights(self, task_type: str) -> dict[str, float]:
        """The {component: weight} used for ``task_type``."""
        if task_type in self.weights:
            return {k: float(v) for k, v in self.weights[task_type].items()}
        return dict(PRESETS[self.preset][task_type])

    def validate(self, where: str = "rewards") -> None:
        check_choice(self.preset, tuple(PRESETS), f"{where}.preset")
        check(isinstance(self.weights, dict), f"{where}.weights", f"got {self.weights!r}, expected a mapping")
        for task_type, comps in self.weights.items():
            check_choice(task_type, TASK_TYPES, f"{where}.weights")
            check(isinstance(comps, dict), f"{where}.weights.{task_type}",
                  f"got {comps!r}, expected a mapping {{component: weight}}")
            for comp, w in comps.items():
                check_choice(comp, COMPONENTS, f"{where}.weights.{task_type}")
                check(isinstance(w, (int, float)) and not isinstance(w, bool), f"{where}.weights.{task_type}.{comp}",
                      f"got {w!r}, expected a number")
        check(self.reward_model is None or (isinstance(self.reward_model, str) and self.reward_model.strip() != ""),
              f"{where}.reward_model", f"got {self.reward_model!r}, expected 'stage:NAME', a checkpoint path or null")
        for f in fields(self):
            sub = getattr(self, f.name)
            if hasattr(sub, "validate"):
                sub.validate(f"{where}.{f.name}")


__all__ = ["RewardsConfig", "ModelRewardConfig", "RULE_TASK_TYPES", "GENERAL",
           "MODEL_NORMALIZATIONS", "FormatRewardConfig", "MathRewardConfig", "CodeRewardConfig", "LanguageRewardConfig",
           "GymRewardConfig", "OverlongConfig", "PoolConfig", "PRESETS", "TASK_TYPES", "COMPONENTS", "ConfigError"]
