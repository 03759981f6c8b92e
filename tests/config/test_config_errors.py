"""Every bad config is refused up front with a ConfigError whose text says what and where."""
import pytest

from r1mega.config import ConfigError, load_config


def error(overrides=(), path=None, world_size=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides), world_size=world_size)
    return str(e.value)


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- keys and types ----------------------------------------------------------------------------
def test_unknown_key_suggests_closest():
    assert error(["grpo.grup_size=16"]) == "grpo.grup_size: unknown key; did you mean 'group_size'?"


def test_unknown_section_suggests_closest():
    assert error(["grpoo.x=1"]) == "grpoo: unknown section; did you mean 'grpo'?"


def test_unknown_key_without_close_match_lists_valid_keys():
    assert error(["logging.zzz=1"]).startswith("logging.zzz: unknown key; valid keys: tensorboard, tensorboard_dir,")


def test_unknown_key_in_yaml_file(tmp_path):
    assert error(path=write(tmp_path, "rollout:\n  temprature: 0.6\n")) == \
        "rollout.temprature: unknown key; did you mean 'temperature'?"


def test_wrong_type_names_field_value_and_type():
    assert error(["optimizer.lr=abc"]) == "optimizer.lr: got 'abc', expected a float"


def test_wrong_type_int_in_yaml(tmp_path):
    assert error(path=write(tmp_path, "grpo:\n  group_size: 2.5\n")) == "grpo.group_size: got 2.5, expected an integer"


def test_wrong_type_bool():
    assert error(["logging.tensorboard=maybe"]) == "logging.tensorboard: got 'maybe', expected a bool (true/false)"


def test_wrong_type_optional():
    assert error(["checkpoint.keep_last=all"]) == "checkpoint.keep_last: got 'all', expected an integer or null"


def test_wrong_type_section_not_mapping(tmp_path):
    assert error(path=write(tmp_path, "optimizer: 3\n")) == "optimizer: got 3, expected a mapping"


def test_value_outside_choices():
    assert error(["rollout.engine=sglang"]) == "rollout.engine: got 'sglang', expected one of 'vllm', 'megatron'"


def test_cpu_threads_must_be_positive():
    assert error(["cpu_threads=0"]) == "cpu_threads: got 0, expected a whole number >= 1 or null"
    stage = error(["pipeline.stages=[{name: pre, kind: pretrain, steps: 1, overrides: {cpu_threads: -2}}]"])
    assert stage == "stage 'pre': cpu_threads: got -2, expected a whole number >= 1 or null"


def test_cpu_threads_are_applied_per_stage_and_restored():
    import torch

    from r1mega.platform.device import _DEFAULT_THREADS, set_cpu_threads

    cfg = load_config(None, ["cpu_threads=2", "pipeline.stages=[{name: a, kind: pretrain, steps: 1, overrides: "
                             "{cpu_threads: 1}}, {name: b, kind: pretrain, steps: 1}]"])
    try:
        set_cpu_threads(cfg.for_stage("a").cpu_threads)
        assert torch.get_num_threads() == 1
        set_cpu_threads(cfg.for_stage("b").cpu_threads)
        assert torch.get_num_threads() == 2
        set_cpu_threads(None)
        assert torch.get_num_threads() == _DEFAULT_THREADS
    finally:
        set_cpu_threads(None)


def test_override_without_equals():
    assert error(["grpo.group_size"]).startswith("override 'grpo.group_size': expected KEY=VALUE")


# ---- files -------------------------------------------------------------------------------------
def test_config_file_missing(tmp_path):
    assert error(path=str(tmp_path / "nope.yaml")) == f"{tmp_path}/nope.yaml: config file not found"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "grpo:\n  group_size: 4\n  bad: [1, 2\nrollout: {}\n")
    msg = error(path=path)
    assert msg.startswith(f"{path}:4: YAML syntax error:"), msg


def test_yaml_duplicate_key(tmp_path):
    path = write(tmp_path, "optimizer:\n  lr: 1.0e-3\n  lr: 2.0e-3\n")
    assert error(path=path) == f"{path}:3: YAML syntax error: duplicate key 'lr'"


def test_yaml_top_level_not_a_mapping(tmp_path):
    path = write(tmp_path, "- model\n- grpo\n")
    assert error(path=path) == f"{path}: the top level must be a mapping of sections (model:, grpo:, ...), got a list"


def test_missing_tokenizer_path(tmp_path):
    assert error([f"data.tokenizer_path={tmp_path}/tok.json"]) == f"data.tokenizer_path: file not found: '{tmp_path}/tok.json'"


def test_missing_dataset_path(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    msg = error([f"data.train_paths=[{tmp_path}/a.jsonl, {tmp_path}/b.jsonl]"])
    assert msg == f"data.train_paths[1]: file not found: '{tmp_path}/b.jsonl'"


def test_missing_init_checkpoint(tmp_path):
    msg = error([f"pipeline.stages=[{{name: sft, kind: sft, steps: 1, init_from: {tmp_path}/ckpt}}]"])
    assert msg == f"stage 'sft': init_from: checkpoint not found: '{tmp_path}/ckpt' (neither a path nor an earlier stage)"


def test_init_from_a_later_stage():
    msg = error(["pipeline.stages=[{name: a, kind: sft, steps: 1, init_from: b}, {name: b, kind: sft, steps: 1}]"])
    assert msg == "stage 'a': init_from: stage 'b' does not run before this one"


def test_stage_path_reference_to_unknown_stage():
    msg = error(["pipeline.stages=[{name: a, kind: sft, steps: 1}]", "data.train_paths=[stage:rs/out.jsonl]"])
    assert msg == "stage 'a': data.train_paths[0]: 'stage:rs/out.jsonl' refers to stage 'rs', which is not in the pipeline"


# ---- parallel layout ---------------------------------------------------------------------------
def test_tp_must_divide_attention_heads():
    assert error(["parallel.tensor_parallel=3", "parallel.sequence_parallel=true"]) == \
        "parallel.tensor_parallel: 3 does not divide model.num_attention_heads=4 (each TP rank needs whole heads)"


def test_tp_must_divide_kv_heads_for_dense_gqa():
    msg = error(["model.arch=dense", "model.n_routed_experts=0", "model.num_attention_heads=8",
                 "model.num_key_value_heads=2", "model.hidden_size=256", "parallel.tensor_parallel=4"])
    assert msg == "parallel.tensor_parallel: 4 does not divide model.num_key_value_heads=2"


def test_vocab_not_divisible_by_tp_is_fine():
    cfg = load_config(None, ["model.vocab_size=577", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true"],
                      world_size=2)
    assert cfg.model.vocab_size == 577


def test_ep_must_divide_routed_experts():
    assert error(["parallel.expert_parallel=3"]) == \
        "parallel.expert_parallel: 3 does not divide model.n_routed_experts=8 (each EP rank needs whole experts)"


def test_moe_with_tp_needs_sequence_parallel():
    assert error(["parallel.tensor_parallel=2"]) == ("parallel.sequence_parallel: must be true for a MoE model with "
                                                     "tensor_parallel=2 (Megatron-Core refuses MoE + TP without sequence parallelism)")


def test_world_size_not_divisible_by_tp_pp_cp():
    msg = error(["parallel.tensor_parallel=2", "parallel.sequence_parallel=true", "parallel.pipeline_parallel=2"], world_size=6)
    assert msg == "parallel: world size 6 cannot be split as TP*PP*CP*DP: TP*PP*CP = 2*2*1 = 4 does not divide it"


def test_world_size_not_equal_to_tp_pp_cp_dp():
    msg = error(["parallel.data_parallel=2"], world_size=4)
    assert msg == "parallel.data_parallel: world size 4 != TP*PP*CP*DP = 1*1*1*2 = 2"


def test_expert_layout_must_fit_world():
    msg = error(["parallel.expert_parallel=4", "parallel.expert_tensor_parallel=1"], world_size=2)
    assert msg == "parallel.expert_parallel: world size 2 is not divisible by ETP*EP*PP = 1*4*1 = 4"


def test_global_batch_must_split_over_data_parallel():
    assert error(["optimizer.global_batch_size=6", "optimizer.micro_batch_size=2"], world_size=2) == \
        "optimizer.global_batch_size: 6 is not a multiple of micro_batch_size*DP = 2*2 = 4"


# ---- pipeline ----------------------------------------------------------------------------------
def test_stage_kind_outside_choices():
    msg = error(["pipeline.stages=[{name: a, kind: rl}]"])
    assert msg.startswith("pipeline.stages[a].kind: got 'rl', expected one of 'pretrain', 'sft', 'grpo'")


def test_training_stage_needs_steps():
    assert error(["pipeline.stages=[{name: a, kind: sft}]"]) == "pipeline.stages[a].steps: missing: a sft stage needs a number of steps"


def test_duplicate_stage_names():
    msg = error(["pipeline.stages=[{name: a, kind: eval}, {name: a, kind: eval}]"])
    assert msg == "pipeline.stages[1].name: duplicate stage name 'a'"


def test_unknown_key_in_stage_overrides():
    msg = error(["pipeline.stages=[{name: a, kind: sft, steps: 1, overrides: {optimizer: {lrr: 1}}}]"])
    assert msg == "pipeline.stages[a].overrides.optimizer.lrr: unknown key; did you mean 'lr'?"


def test_stage_errors_are_prefixed_with_the_stage():
    msg = error(["pipeline.stages=[{name: a, kind: sft, steps: 1, overrides: {optimizer: {lr: -1}}}]"])
    assert msg == "stage 'a': optimizer.lr: got -1.0, expected a positive number"


def test_grpo_stage_rollout_temperature_must_match():
    msg = error(["pipeline.stages=[{name: rl, kind: grpo, steps: 1}]", "rollout.temperature=0.6"])
    assert msg.startswith("stage 'rl': rollout.temperature: 0.6 differs from grpo.temperature=1.0")


def test_the_built_in_tokenizer_must_fit_the_model():
    assert error(["data.tokenizer_vocab_size=640"]) == (
        "data.tokenizer_vocab_size: 640 tokens do not fit model.vocab_size=512; set model.vocab_size to at least "
        "that, or use a smaller built-in tokenizer")
    assert error(["data.tokenizer_vocab_size=600"]).startswith("data.tokenizer_vocab_size: got 600, expected a multiple of 64")
    assert load_config(None, ["data.tokenizer_vocab_size=640", "model.vocab_size=640"]).data.tokenizer_vocab_size == 640
