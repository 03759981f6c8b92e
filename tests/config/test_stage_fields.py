"""No config field silently ignored (r1mega.config.stage_fields): a field set by the user that the stage kinds
of the pipeline do not read is a config error naming the field, the stage and its kind; and the settings the
engine cannot honour (grpo.reward_granularity process, parallel.context_parallel > 1 without Transformer
Engine) are refused."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from r1mega.config import ConfigError, RunConfig, dump_config, load_config
from r1mega.config.stage_fields import COMMAND_READS, READS, kinds_reading

DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "tiny" / "demo.yaml")
PRE_SFT = "pipeline.stages=[{name: pre, kind: pretrain, steps: 2}, {name: sft, kind: sft, steps: 1}]"
PRE = "pipeline.stages=[{name: pre, kind: pretrain, steps: 2}]"


def error(*overrides, world_size=None, path=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides), world_size=world_size)
    return str(e.value)


def leaf_paths(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


# ------------------------------------------------------------------------------------------ the table
def test_every_field_has_an_entry_and_every_entry_a_field():
    """A new config field needs a decision here (which kinds read it); a misspelt entry would never match."""
    leaves = [p for p in leaf_paths(RunConfig) if not p.startswith("pipeline.")]
    assert [p for p in leaves if kinds_reading(p) is None] == []
    assert set(COMMAND_READS) <= set(READS)
    for key in READS:
        obj = RunConfig()
        for part in key.split("."):
            assert hasattr(obj, part), key
            obj = getattr(obj, part)


def test_most_specific_entry_wins():
    assert kinds_reading("optimizer.lr") == ("pretrain", "sft", "grpo", "reward_model", "distill")
    assert "grpo" not in kinds_reading("optimizer.global_batch_size")
    assert kinds_reading("rewards.format.mode") == ("grpo", "rejection_sampling", "eval")
    assert kinds_reading("checkpoint.async_save") == ()


# ---------------------------------------------------------------------------------- hostile configs
def test_override_a_kind_does_not_read(tmp_path):
    """The dsv2/dsv3 examples' eval stage set rollout.temperature: eval samples with eval.temperature."""
    stages = f"pipeline.stages=[{{name: ev, kind: eval, init_from: {tmp_path}, overrides: {{rollout: {{temperature: 0.6}}}}}}]"
    assert error(stages) == (
        "pipeline.stages[ev] (eval): rollout.temperature is set in its overrides but eval stages do not read it; it "
        "is read by grpo stages (eval stages sample with eval.temperature, rejection_sampling stages with "
        "rejection.temperature)")
    fixed = stages.replace("rollout", "eval")
    assert load_config(None, [fixed]).stage("ev").overrides == {"eval": {"temperature": 0.6}}


def test_nested_override_and_any_value(tmp_path):
    """An override names the field whatever its value (even the default): it is meant for that stage."""
    stages = "pipeline.stages=[{name: sft, kind: sft, steps: 1, overrides: {rewards: {format: {mode: strict}}}}]"
    assert error(stages) == ("pipeline.stages[sft] (sft): rewards.format.mode is set in its overrides but sft "
                             "stages do not read it; it is read by grpo, rejection_sampling, eval stages")


def test_top_level_field_of_a_one_stage_pipeline():
    assert error(PRE, "data.difficulties=[1]") == (
        "pipeline.stages[pre] (pretrain): data.difficulties is set but pretrain stages do not read it; it is read by "
        "grpo, rejection_sampling stages (eval stages use eval.difficulties, reward_model stages "
        "reward_model.difficulties)")


def test_top_level_field_no_stage_reads():
    assert error(PRE_SFT, "grpo.group_size=4") == (
        "grpo.group_size: is set but no stage of the pipeline reads it (stages: pre (pretrain), sft (sft)); it is "
        "read by grpo stages")
    assert error(PRE_SFT, "checkpoint.async_save=true") == (
        "checkpoint.async_save: is set but no stage of the pipeline reads it (stages: pre (pretrain), sft (sft)); "
        "nothing in r1mega reads it yet; remove it")


def test_top_level_field_read_by_one_stage_passes():
    cfg = load_config(None, [PRE_SFT, "data.corpus={qa_weight: 1.0}"])
    assert cfg.data.corpus == {"qa_weight": 1.0}  # read by the pretrain stage, not the sft one: fine


def test_the_default_value_is_not_set(tmp_path):
    """A printed config (`r1mega config show`) spells out every default and loads again."""
    load_config(None, [PRE, "grpo.group_size=16", "rollout.temperature=1.0"])  # the defaults
    text = dump_config(load_config(DEMO))
    assert "group_size: 8" in text and "async_save: false" in text and "log_interval: 1" in text
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    assert load_config(str(path)).to_dict() == load_config(DEMO).to_dict()


def test_a_command_field_passes_at_the_top_level_only(tmp_path):
    """data.max_samples is read by `r1mega generate` (any stage), by no stage kind; `r1mega eval --stage pre`
    evaluates a training stage with the eval and rollout sections: allowed where no stage reads those sections,
    checked where one does (an eval stage samples with eval.temperature, never rollout.temperature)."""
    assert load_config(None, [PRE, "data.max_samples=4"]).data.max_samples == 4
    cfg = load_config(None, [PRE, "eval.k=4", "rollout.engine=megatron", "rollout.temperature=0.6"])
    assert (cfg.eval.k, cfg.rollout.engine) == (4, "megatron")
    with_eval = f"pipeline.stages=[{{name: pre, kind: pretrain, steps: 2}}, {{name: ev, kind: eval, init_from: pre}}]"
    assert error(with_eval, "rollout.temperature=0.6") == (
        "rollout.temperature: is set but no stage of the pipeline reads it (stages: pre (pretrain), ev (eval)); it "
        "is read by grpo stages (eval stages sample with eval.temperature, rejection_sampling stages with "
        "rejection.temperature)")
    assert error("pipeline.stages=[{name: pre, kind: pretrain, steps: 2, overrides: {data: {max_samples: 4}}}]") \
        .startswith("pipeline.stages[pre] (pretrain): data.max_samples is set in its overrides but pretrain stages "
                    "do not read it; nothing in r1mega reads it yet")


@pytest.mark.parametrize("field", ["steps: 3", "save_interval: 5", "keep_last: 1"])
def test_training_fields_on_a_stage_that_trains_nothing(tmp_path, field):
    name = field.split(":")[0]
    assert error(f"pipeline.stages=[{{name: ev, kind: eval, init_from: {tmp_path}, {field}}}]") == (
        f"pipeline.stages[ev] (eval): {name} is set but eval stages train nothing and do not read it; it is read "
        "by pretrain, sft, grpo, reward_model, distill stages")


# ------------------------------------------------------------------------------------ GRPO batches
def test_grpo_stages_do_not_check_a_global_batch_they_never_read():
    """The demo's R1-Zero runs as 2 processes with the top-level global batch 16 of microbatches 16: a pretrain
    stage could not split it over 2 ranks, a GRPO step (8 prompts x 8) can."""
    load_config(DEMO, [], world_size=1)
    assert error("pipeline.stages.r1_zero.overrides.optimizer.global_batch_size=64", path=DEMO).startswith(
        "pipeline.stages[r1_zero] (grpo): optimizer.global_batch_size is set in its overrides but grpo stages do not "
        "read it; it is read by pretrain, sft, distill, reward_model stages (a GRPO step trains on")


def test_grpo_prompts_split_over_the_data_parallel_ranks():
    assert error("grpo.prompts_per_step=3", path=DEMO, world_size=1) == ("stage 'r1_zero': grpo.prompts_per_step: 3 prompts do not split over 2 data-parallel "
                            "ranks (each rank trains on whole groups)")


# ------------------------------------------------------------------ settings the engine cannot honour
def test_process_reward_granularity_is_refused():
    assert error("grpo.reward_granularity=process") == (
        "grpo.reward_granularity: got 'process', but the GRPO stage has no per-step rewards: its rule rewards and the "
        "reward model score whole completions, so it always uses outcome advantages; use 'outcome' (process "
        "supervision exists only as r1mega.algorithms.process_advantages)")
    assert load_config(None, ["grpo.reward_granularity=outcome"]).grpo.reward_granularity == "outcome"


def test_context_parallel_without_transformer_engine_is_refused():
    """(The CP rules that apply with TE: tests/config/test_context_parallel_config.py.)"""
    msg = ("parallel.context_parallel: got 2: context parallelism needs Transformer Engine attention (Megatron's "
           "local attention cannot split a sequence over ranks), and Transformer Engine is not usable on this machine "
           "(it needs CUDA); use 1")
    assert error("parallel.context_parallel=2") == msg


def test_context_parallel_without_transformer_engine_is_refused_for_a_distill_stage():
    """The one error for every stage kind, logit distillation included."""
    assert error("pipeline.stages.distill.overrides.parallel.context_parallel=2", path=DEMO).startswith(
        "stage 'distill': parallel.context_parallel: got 2: context parallelism needs Transformer Engine attention")
