"""The model config from the init checkpoint or an HF config.json, and checkpoint shape checks that compare
only the fields the architecture uses (r1mega/config/model_source.py)."""
from __future__ import annotations

import dataclasses
import json
import types

import pytest

from r1mega.config import ConfigError, load_config
from r1mega.config.model import ModelConfig
from r1mega.config.model_source import shape_mismatches
from r1mega.model.presets import get_preset

DENSE = dataclasses.replace(get_preset("tiny-dense"), num_layers=3, hidden_size=96, num_attention_heads=6,
                            num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e5)


def _checkpoint(root, model: ModelConfig):
    step = root / "step_00000000"
    step.mkdir(parents=True)
    (step / "r1mega_meta.json").write_text(json.dumps({"step": 0, "model": dataclasses.asdict(model)}))
    (root / "latest").write_text(step.name)
    return root


def _cfg(tmp_path, init, model_keys=(), stages_extra=""):
    overrides = [f"pipeline.run_dir={tmp_path / 'run'}",
                 "pipeline.stages=[{name: rl, kind: grpo, steps: 2, init_from: " + str(init) + "},"
                 " {name: ev, kind: eval, init_from: rl}" + stages_extra + "]", *model_keys]
    return load_config(None, overrides)


def test_model_comes_from_the_checkpoint(tmp_path):
    """No preset and no shape fields: each stage's model is the checkpoint's (and the eval stage that
    initialises from the GRPO stage gets the same), with the user's own model keys on top."""
    ckpt = _checkpoint(tmp_path / "ckpt", DENSE)
    cfg = _cfg(tmp_path, ckpt, ["model.max_position_embeddings=2048"])
    for name in ("rl", "ev"):
        m = cfg.for_stage(name).model
        assert (m.arch, m.num_layers, m.hidden_size, m.num_key_value_heads, m.tie_word_embeddings, m.rope_theta) == \
            ("dense", 3, 96, 2, True, 1e5)
        assert m.max_position_embeddings == 2048


def test_a_preset_that_does_not_fit_is_one_line_naming_the_fields(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", DENSE)
    with pytest.raises(ConfigError) as e:  # the MoE default model against a dense checkpoint: arch, only
        _cfg(tmp_path, ckpt, ["model.preset=tiny"])
    assert str(e.value) == (f"pipeline.stages[rl].init_from: checkpoint {ckpt} does not fit the model: arch: checkpoint "
                            "'dense' vs model 'deepseek_v3' (leave out model.preset and the shape fields to take the "
                            "model from the checkpoint)")
    with pytest.raises(ConfigError, match=r"fit the model: hidden_size: checkpoint 96 vs model 128; num_layers: "
                                          r"checkpoint 3 vs model 4; tie_word_embeddings: checkpoint True vs model False \("):
        _cfg(tmp_path, ckpt, ["model.preset=tiny-dense", "model.num_key_value_heads=2", "model.num_attention_heads=6"])


def test_dense_checkpoints_are_not_compared_on_moe_fields():
    """The reported failure: a dense model refused for first_k_dense_replace / n_routed_experts it does not have."""
    saved = dataclasses.asdict(DENSE)
    now = {**saved, "first_k_dense_replace": 1, "n_routed_experts": 8, "kv_lora_rank": 512}
    assert shape_mismatches(saved, now) == []
    assert shape_mismatches(saved, {**now, "num_key_value_heads": 3}) == ["num_key_value_heads: checkpoint 2 vs model 3"]
    moe = dataclasses.asdict(get_preset("tiny"))
    assert shape_mismatches(moe, {**moe, "n_routed_experts": 4}) == ["n_routed_experts: checkpoint 8 vs model 4"]
    # None and the explicit value of the same shape are the same
    assert shape_mismatches({**saved, "num_key_value_heads": None, "num_attention_heads": 6},
                            {**saved, "num_key_value_heads": 6, "num_attention_heads": 6}) == []


def test_checkpoint_manager_uses_the_same_comparison(tmp_path):
    from r1mega.train.checkpoint import CheckpointError, CheckpointManager

    meta = {"model": dataclasses.asdict(DENSE)}
    fits = types.SimpleNamespace(model_cfg=dataclasses.replace(DENSE, n_routed_experts=8, first_k_dense_replace=1))
    CheckpointManager._check_compatible(fits, meta, tmp_path)
    with pytest.raises(CheckpointError, match="num_layers: checkpoint 3 vs model 5$"):
        CheckpointManager._check_compatible(types.SimpleNamespace(model_cfg=dataclasses.replace(DENSE, num_layers=5)),
                                            meta, tmp_path)


def test_model_from_an_hf_config(tmp_path):
    from r1mega.bridge import to_hf_config, write_hf_config

    write_hf_config(to_hf_config(DENSE), tmp_path / "hf")
    cfg = load_config(None, [f"model.hf_config={tmp_path / 'hf'}", "model.params_dtype=bfloat16"])
    m = cfg.model
    assert (m.arch, m.num_layers, m.hidden_size, m.num_key_value_heads, m.tie_word_embeddings) == ("dense", 3, 96, 2, True)
    assert m.params_dtype == "bfloat16"  # the user's key on top
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(ConfigError, match=r"^model\.hf_config: .*config\.json: config\.json:model_type: 'gpt2' is not supported"):
        load_config(None, [f"model.hf_config={tmp_path / 'bad'}"])
    with pytest.raises(ConfigError, match=r"^model\.hf_config: .*nope.*no such config\.json"):
        load_config(None, [f"model.hf_config={tmp_path / 'nope'}"])


def test_reward_model_stage_refuses_hf_chat():
    with pytest.raises(ConfigError, match=r"data\.template: 'hf_chat': a reward_model stage writes its synthetic"):
        load_config(None, ["data.template=hf_chat", "pipeline.stages=[{name: rm, kind: reward_model, steps: 2}]"])
