"""Which config fields each stage kind reads, and the check that no field set by the user is ignored.

:data:`READS` is the contract: for every section, field or nested field of :class:`RunConfig` (a dotted
path), the stage kinds whose code reads it. The most specific entry wins (``optimizer.global_batch_size``
over ``optimizer``). It was made by reading the stages' code (``r1mega/train/entry.py`` for pretrain/sft/
distill, ``r1mega/pipeline/{grpo,rejection,reward_model}.py``, ``r1mega/eval/``); a change there that reads
or stops reading a field changes this table too.

:func:`check_stage_fields` runs from :meth:`RunConfig.validate`, before any heavy work, on a config with
pipeline stages:

* a field in a stage's ``overrides`` that its kind does not read is an error (whatever its value);
* a top-level field set by the user (its value differs from the default: a config printed by
  ``r1mega config show``, which spells out every default, passes too) that no stage of the pipeline
  reads is an error, unless a command that works on any stage reads it (:data:`COMMAND_READS`: the eval
  and rollout sections, data.max_samples) and no stage reads its section;
* ``steps``, ``save_interval`` and ``keep_last`` on a stage that trains nothing are errors.

The error names the field, the stage and its kind, e.g.
``pipeline.stages[eval] (eval): rollout.temperature is set in its overrides but eval stages do not read it``.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

from .base import ConfigError
from .stage import KINDS, TRAINING_KINDS, StageConfig

ALL = KINDS
TRAINING = TRAINING_KINDS
GENERATING = ("grpo", "rejection_sampling", "eval")
NONE: tuple = ()  # nothing reads it yet
FILE_PROMPTS = ("grpo", "rejection_sampling", "eval")  # prompt datasets from files (issue 17)

READS: dict[str, tuple] = {
    "name": ALL, "device": ALL, "cpu_threads": ALL,
    "model": ALL,  # every kind builds the Megatron model (eval and rejection sampling to load the checkpoint)
    "parallel": ALL,
    "parallel.distributed_optimizer": TRAINING, "parallel.overlap_grad_reduce": TRAINING,
    # activation recompute of the training forward (frozen engines never recompute)
    "parallel.recompute": TRAINING, "parallel.recompute_method": TRAINING, "parallel.recompute_num_layers": TRAINING,
    "optimizer": TRAINING,
    # GRPO's batch is grpo.prompts_per_step x group_size rollouts; it reads micro_batch_size and the schedule
    "optimizer.global_batch_size": ("pretrain", "sft", "distill", "reward_model"),
    "data.tokenizer_path": ALL, "data.tokenizer_vocab_size": ALL, "data.seq_length": ALL, "data.seed": ALL,
    "data.train_paths": ("sft", "distill") + FILE_PROMPTS,
    "data.eval_paths": FILE_PROMPTS,
    "data.sources": FILE_PROMPTS, "data.eval_sources": FILE_PROMPTS,  # eval: held-out rows of the training sources
    "data.heldout_fraction": FILE_PROMPTS,
    # prompt rendering (hf_chat: the tokenizer's chat template, also for SFT prompts); eval: unless eval.template
    "data.template": FILE_PROMPTS + ("sft", "distill", "reward_model"),  # reward_model: its preference pairs
    "data.system_prompt": FILE_PROMPTS + ("sft", "distill"), "data.think_prefill": FILE_PROMPTS + ("sft", "distill"),
    "data.tasks": ("grpo", "rejection_sampling"),
    "data.difficulties": ("grpo", "rejection_sampling"),
    "data.zh_prompt_fraction": ("grpo", "rejection_sampling"),
    "data.zh_prompt_tasks": ("grpo", "rejection_sampling"),
    "data.corpus": ("pretrain",),
    "data.split": NONE, "data.shuffle": NONE, "data.num_workers": NONE,
    "data.max_samples": NONE,  # only `r1mega generate` (see COMMAND_READS)
    "rollout": GENERATING,
    "rollout.temperature": ("grpo",), "rollout.top_p": ("grpo",), "rollout.top_k": ("grpo", "rejection_sampling"),
    "rollout.mismatch_threshold": GENERATING,  # grpo's before-update check; every vLLM refit's probe check
    "rollout.router_replay": ("grpo",),  # MoE routing replay of the GRPO step's trainer forwards
    # only GRPO has a trainer with gradients and optimizer state alive while it generates (rejection sampling
    # and eval hold a frozen model's weights, the vLLM engine's own share of the plan)
    "rollout.offload_trainer": ("grpo",),
    "grpo": ("grpo",),
    "rewards.preset": ("grpo",),  # rejection sampling scores with r1_stage2, eval with accuracy + format
    "rewards.weights": ("grpo", "rejection_sampling"),
    "rewards.format": GENERATING, "rewards.math": GENERATING, "rewards.code": GENERATING,
    "rewards.gym": GENERATING, "rewards.pool": GENERATING,
    "rewards.language": GENERATING,  # eval: the report's language consistency of the eval samples
    "rewards.overlong": ("grpo",), "rewards.reward_model": ("grpo",), "rewards.model_reward": ("grpo",),
    "logging": TRAINING,
    "logging.log_interval": ("pretrain", "sft", "distill", "reward_model"),  # GRPO logs every iteration
    "logging.level": NONE,
    "checkpoint": TRAINING,
    "checkpoint.format": NONE, "checkpoint.async_save": NONE,
    "eval": ("eval",),
    "rejection": ("rejection_sampling",),
    "reward_model": ("reward_model",),
    "distill": ("distill",),
}

# Top-level fields that commands working on any stage read (`r1mega eval --stage NAME` evaluates a training
# stage's checkpoint; `r1mega generate` samples from any stage): allowed where no stage of the pipeline reads
# that entry at all (the config then sets them for the command), checked as usual where one does.
COMMAND_READS = {"eval": "r1mega eval", "rollout": "r1mega eval, r1mega generate", "data.max_samples": "r1mega generate"}

# What to use instead, shown with the error.
HINTS = {
    "rollout.temperature": "eval stages sample with eval.temperature, rejection_sampling stages with "
                           "rejection.temperature",
    "rollout.top_p": "eval stages use eval.top_p, rejection_sampling stages rejection.top_p",
    "rollout.top_k": "eval stages use eval.top_k",
    "optimizer.global_batch_size": "a GRPO step trains on grpo.prompts_per_step x grpo.group_size rollouts, "
                                   "grpo.minibatch_size of them per optimizer update",
    "data.difficulties": "eval stages use eval.difficulties, reward_model stages reward_model.difficulties",
    "data.tasks": "eval stages use eval.benchmarks",
    "rewards.preset": "rejection sampling always scores with r1_stage2 (rewards.weights still applies), eval "
                      "grades accuracy + format",
    "logging.log_interval": "GRPO stages log every iteration",
}

STAGE_TRAINING_FIELDS = ("steps", "save_interval", "keep_last")


def _entry(path: str, table: dict) -> Optional[str]:
    """The most specific key of ``table`` that is ``path`` or one of its parents, else None."""
    parts = path.split(".")
    return next((key for key in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if key in table), None)


def kinds_reading(path: str) -> Optional[tuple]:
    """The stage kinds that read the dotted ``path`` (its most specific entry in READS); None when the
    table has no entry for it (a field added without a table entry: treated as read by every kind)."""
    key = _entry(path, READS)
    return None if key is None else READS[key]


def reads(kind: str, path: str) -> bool:
    kinds = kinds_reading(path)
    return kinds is None or kind in kinds


def changed_paths(cfg, default, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the leaf fields of ``cfg`` whose value differs from ``default``'s."""
    for f in dataclasses.fields(cfg):
        value, base = getattr(cfg, f.name), getattr(default, f.name, None)
        path = prefix + f.name
        if dataclasses.is_dataclass(value) and type(value) is type(base):
            yield from changed_paths(value, base, path + ".")
        elif value != base:
            yield path


def override_paths(overrides: dict, default, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the leaf fields a stage's ``overrides`` mapping sets (mappings are followed into
    config sections; a dict-valued field such as data.corpus is one leaf)."""
    for key, value in overrides.items():
        target = getattr(default, str(key), None)
        path = f"{prefix}{key}"
        if isinstance(value, dict) and dataclasses.is_dataclass(target):
            yield from override_paths(value, target, path + ".")
        else:
            yield path


def _readers(path: str, kinds: tuple) -> str:
    hint = HINTS.get(path)
    if not kinds:
        text = "nothing in r1mega reads it yet; remove it"
    else:
        text = f"it is read by {', '.join(kinds)} stages"
    return text + (f" ({hint})" if hint else "")


def _stage_error(st: StageConfig, path: str, how: str) -> ConfigError:
    kinds = kinds_reading(path) or ()
    return ConfigError(f"pipeline.stages[{st.name}] ({st.kind})",
                       f"{path} is set{how} but {st.kind} stages do not read it; {_readers(path, kinds)}")


def _left_to_a_command(path: str, stages) -> bool:
    """``path`` is read by a command that works on any stage (COMMAND_READS) and by no stage of the pipeline
    through its COMMAND_READS entry (the whole rollout section, say): the config sets it for the command."""
    key = _entry(path, COMMAND_READS)
    return key is not None and not any(st.kind in READS[key] for st in stages)


def check_stage_fields(cfg) -> None:
    """Refuse fields set by the user that the stage kinds of ``cfg``'s pipeline do not read (see the module
    docstring). A config without stages is not checked (it has no stage kind)."""
    from .run import RunConfig

    stages = cfg.pipeline.stages
    if not stages:
        return
    default = RunConfig()
    for st in stages:
        if st.kind not in TRAINING_KINDS:
            for name in STAGE_TRAINING_FIELDS:
                if getattr(st, name) is not None:
                    raise ConfigError(f"pipeline.stages[{st.name}] ({st.kind})",
                                      f"{name} is set but {st.kind} stages train nothing and do not read it; "
                                      f"it is read by {', '.join(TRAINING_KINDS)} stages")
        for path in override_paths(st.overrides, default):
            if not reads(st.kind, path):
                raise _stage_error(st, path, " in its overrides")
    for path in changed_paths(cfg, default):
        if path.startswith("pipeline.") or any(reads(st.kind, path) for st in stages):
            continue
        if _left_to_a_command(path, stages):
            continue
        if len(stages) == 1:
            raise _stage_error(stages[0], path, "")
        names = ", ".join(f"{s.name} ({s.kind})" for s in stages)
        raise ConfigError(path, f"is set but no stage of the pipeline reads it (stages: {names}); "
                                f"{_readers(path, kinds_reading(path) or ())}")


__all__ = ["READS", "HINTS", "COMMAND_READS", "kinds_reading", "reads", "changed_paths", "override_paths",
           "check_stage_fields"]
