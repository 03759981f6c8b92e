"""Loading: YAML + includes + dotted overrides -> typed RunConfig, and back to YAML."""
import sys
import types

import pytest

from r1mega.config import ConfigError, RunConfig, dump_config, load_config, read_yaml
from r1mega.config.model import ModelConfig


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_validate():
    cfg = load_config(None, world_size=1)
    assert isinstance(cfg, RunConfig)
    assert cfg.rollout.stop == ["</answer>"]
    assert cfg.run_dir == "runs/r1mega"


def test_override_types_follow_annotations():
    cfg = load_config(None, [
        "grpo.group_size=4",            # int
        "optimizer.lr=1e-4",            # float without a dot (a string in YAML 1.1)
        "logging.tensorboard=false",    # bool
        "checkpoint.keep_last=null",    # Optional[int] -> None
        "rollout.stop=[\"</answer>\",\"x\"]",  # list
        "name=123",                     # str keeps the text as typed
        "model.rope_scaling={type: yarn, factor: 4}",  # dict
        "optimizer.total_steps=1e3",    # int written in float notation
    ], validate=False)
    assert cfg.grpo.group_size == 4 and cfg.optimizer.lr == 1e-4 and isinstance(cfg.optimizer.lr, float)
    assert cfg.logging.tensorboard is False and cfg.checkpoint.keep_last is None
    assert cfg.rollout.stop == ["</answer>", "x"] and cfg.name == "123"
    assert cfg.model.rope_scaling == {"type": "yarn", "factor": 4}
    assert cfg.optimizer.total_steps == 1000


def test_scalar_override_for_list_field_becomes_one_element_list():
    assert load_config(None, ["rollout.stop=</answer>"], validate=False).rollout.stop == ["</answer>"]


def test_yaml_values_and_later_overrides_win(tmp_path):
    path = write(tmp_path, "run.yaml", "optimizer:\n  lr: 3e-5\n  warmup_steps: 5\ngrpo:\n  group_size: 8\n")
    cfg = load_config(path, ["grpo.group_size=2", "grpo.group_size=3"], validate=False)
    assert cfg.optimizer.lr == 3e-5 and cfg.optimizer.warmup_steps == 5 and cfg.grpo.group_size == 3


def test_base_include_is_relative_and_merges(tmp_path):
    (tmp_path / "common").mkdir()
    write(tmp_path, "common/base.yaml", "optimizer: {lr: 1.0e-3, weight_decay: 0.0}\nrollout: {stop: [a, b]}\n")
    path = write(tmp_path, "run.yaml", "base: common/base.yaml\noptimizer: {lr: 2.0e-3}\nrollout: {stop: [c]}\n")
    cfg = load_config(path, validate=False)
    assert cfg.optimizer.lr == 2e-3 and cfg.optimizer.weight_decay == 0.0  # mappings merge
    assert cfg.rollout.stop == ["c"]  # lists are replaced


def test_defaults_list_applies_in_order(tmp_path):
    write(tmp_path, "a.yaml", "name: a\ngrpo: {group_size: 2}\n")
    write(tmp_path, "b.yaml", "name: b\n")
    cfg = load_config(write(tmp_path, "run.yaml", "defaults: [a.yaml, b.yaml]\n"), validate=False)
    assert cfg.name == "b" and cfg.grpo.group_size == 2


def test_include_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        read_yaml(str(tmp_path / "a.yaml"))


def test_missing_include_names_including_file(tmp_path):
    path = write(tmp_path, "run.yaml", "base: nope.yaml\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(path)
    assert e.value.where == f"{path}:base" and "included file not found" in e.value.message


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["grpo.group_size=4", "rollout.stop=[\"</answer>\", \"x: y\"]", "optimizer.lr=1e-5"], world_size=1)
    again = load_config(write(tmp_path, "dump.yaml", dump_config(cfg)), world_size=1)
    assert again == cfg


@pytest.fixture
def fake_presets(monkeypatch):
    mod = types.ModuleType("r1mega.model.presets")
    mod.get_preset = lambda name: ModelConfig(preset=name, hidden_size=64, num_layers=2, first_k_dense_replace=0)
    monkeypatch.setitem(sys.modules, "r1mega.model.presets", mod)


def test_preset_then_other_model_keys_on_top(fake_presets, tmp_path):
    path = write(tmp_path, "run.yaml", "model:\n  preset: small\n  num_layers: 6\n")
    cfg = load_config(path, ["model.vocab_size=1024"], validate=False)
    assert (cfg.model.preset, cfg.model.hidden_size, cfg.model.num_layers, cfg.model.vocab_size) == ("small", 64, 6, 1024)


def test_real_tiny_preset_if_present():
    pytest.importorskip("r1mega.model.presets")
    cfg = load_config(None, ["model.preset=tiny", "model.num_layers=2"], validate=False)
    assert cfg.model.preset == "tiny" and cfg.model.num_layers == 2


def test_presets_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "r1mega.model.presets", None)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.preset=tiny"], validate=False)
    assert e.value.where == "model.preset" and "model presets are unavailable" in e.value.message


PIPELINE = """
name: demo
pipeline:
  run_dir: {run_dir}
  stages:
    - {{name: pre, kind: pretrain, steps: 10}}
    - name: sft
      kind: sft
      steps: 5
      init_from: pre
      save_interval: 2
      overrides: {{optimizer: {{lr: 1.0e-5}}, data: {{train_paths: ["stage:pre/samples.jsonl"]}}}}
    - name: student
      kind: distill
      steps: 3
      overrides: {{model: {{preset: small, num_layers: 3}}}}
"""


def test_stage_overrides_and_paths(fake_presets, tmp_path):
    run_dir = str(tmp_path / "run")
    cfg = load_config(write(tmp_path, "p.yaml", PIPELINE.format(run_dir=run_dir)), ["model.hidden_size=256"], world_size=1)
    sft = cfg.for_stage("sft")
    assert sft.optimizer.lr == 1e-5 and cfg.optimizer.lr == 3e-4
    assert sft.checkpoint.save_interval == 2 and cfg.checkpoint.save_interval == 100
    assert cfg.stage_dir("sft") == f"{run_dir}/sft"
    assert cfg.resolve_path(sft.data.train_paths[0]) == f"{run_dir}/pre/samples.jsonl"
    student = cfg.for_stage("student").model  # a preset in stage overrides starts the model afresh
    assert (student.preset, student.hidden_size, student.num_layers) == ("small", 64, 3)


def test_override_list_element_by_name_and_index(fake_presets, tmp_path):
    path = write(tmp_path, "p.yaml", PIPELINE.format(run_dir=tmp_path))
    cfg = load_config(path, ["pipeline.stages.sft.steps=7", "pipeline.stages.0.steps=8",
                             "pipeline.stages.sft.overrides.optimizer.lr=2e-5"], validate=False)
    assert cfg.stage("sft").steps == 7 and cfg.stage("pre").steps == 8
    assert cfg.for_stage("sft").optimizer.lr == 2e-5


def test_select_stage():
    cfg = load_config(None, ["pipeline.stages=[{name: only, kind: sft, steps: 1}]"], validate=False)
    assert cfg.select_stage().name == "only"


R1_PIPELINE = """
name: tiny-r1
model:
  preset: tiny
optimizer: {lr: 1e-3, warmup_steps: 5, global_batch_size: 16}
data: {tasks: [arith], seq_length: 512}
rollout: {max_new_tokens: 128, kv_cache_memory_bytes: 1e9}
grpo: {group_size: 8, prompts_per_step: 4}
pipeline:
  run_dir: RUN_DIR
  stages:
    - {name: pretrain, kind: pretrain, steps: 200}
    - name: r1_zero
      kind: grpo
      init_from: pretrain
      steps: 50
      overrides: {optimizer: {lr: 1e-5, decay_style: constant}}
    - {name: cold_start, kind: sft, init_from: pretrain, steps: 100}
    - {name: reasoning_rl, kind: grpo, init_from: cold_start, steps: 50, overrides: {rewards: {preset: r1_stage2}}}
    - {name: rejection_sampling, kind: rejection_sampling, init_from: reasoning_rl}
    - name: sft2
      kind: sft
      init_from: pretrain
      steps: 100
      overrides: {data: {train_paths: ["stage:rejection_sampling/samples.jsonl"]}}
    - {name: all_rl, kind: grpo, init_from: sft2, steps: 50}
    - name: distill
      kind: distill
      steps: 100
      overrides: {model: {preset: tiny-dense}, data: {train_paths: ["stage:rejection_sampling/samples.jsonl"]}}
    - {name: eval, kind: eval, init_from: all_rl}
"""


def test_full_r1_pipeline_example(tmp_path):
    pytest.importorskip("r1mega.model.presets")
    cfg = load_config(write(tmp_path, "r1.yaml", R1_PIPELINE.replace("RUN_DIR", str(tmp_path))), world_size=1)
    assert [s.kind for s in cfg.pipeline.stages][:3] == ["pretrain", "grpo", "sft"]
    assert cfg.rollout.kv_cache_memory_bytes == 10**9 and cfg.for_stage("r1_zero").optimizer.lr == 1e-5
    assert cfg.for_stage("distill").model.arch == "dense" and cfg.for_stage("eval").model.preset == "tiny"
