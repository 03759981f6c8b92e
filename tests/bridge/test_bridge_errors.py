"""Bad Hugging Face input is refused before any weight is read or any model is built, with a
message naming the tensor (and file)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from r1mega import tools_convert
from r1mega.bridge import BridgeError, mapping_table, open_checkpoint, to_hf_config, write_hf_config
from r1mega.model.presets import get_preset

TINY = get_preset("tiny", vocab_size=500)


def _tensors(m=TINY) -> dict:
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(s, generator=g) for n, s in mapping_table(m).hf_shapes().items()}


def _write(d: Path, tensors: dict, cfg: dict | None = None, shards: int = 2) -> Path:
    """``shards`` safetensors files + index + config.json."""
    d.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        f = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(d / f))
        weight_map.update({n: f for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    write_hf_config(cfg or to_hf_config(TINY), d)
    return d


def test_a_good_directory_passes(tmp_path):
    open_checkpoint(_write(tmp_path, _tensors()), TINY, include_mtp=True)


def test_missing_shard_listed_in_the_index(tmp_path):
    d = _write(tmp_path, _tensors())
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(BridgeError, match=r"missing: model-00002-of-00002\.safetensors \(holds e\.g\. 'model\."):
        open_checkpoint(d, TINY, include_mtp=True)


def test_index_names_a_tensor_its_shard_does_not_hold(tmp_path):
    d = _write(tmp_path, _tensors())
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors" \
        if idx["weight_map"]["model.norm.weight"].startswith("model-00002") else "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(BridgeError, match=r"tensor 'model.norm.weight' to model-0000\d-of-00002.safetensors, but"):
        open_checkpoint(d, TINY, include_mtp=True)


def test_config_that_does_not_fit_the_weights_names_tensor_expected_and_got(tmp_path):
    small = get_preset("tiny", vocab_size=500, q_lora_rank=32)
    d = _write(tmp_path, _tensors(), cfg=to_hf_config(small))
    with pytest.raises(BridgeError) as e:
        open_checkpoint(d, small, include_mtp=True)
    msg = str(e.value)
    assert "tensor 'model.layers.0.self_attn.q_a_proj.weight' in model-0000" in msg
    assert "expected shape (32, 128) (from config.json), got (64, 128)" in msg


def test_unknown_tensor_name(tmp_path):
    t = _tensors()
    t["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(384)
    with pytest.raises(BridgeError, match=r"unknown tensor 'model.layers.0.self_attn.q_proj.bias' in model-0000\d"):
        open_checkpoint(_write(tmp_path, t), TINY, include_mtp=True)


def test_missing_tensor(tmp_path):
    t = _tensors()
    del t["model.layers.2.mlp.experts.5.down_proj.weight"]
    with pytest.raises(BridgeError, match=r"missing tensors: model.layers.2.mlp.experts.5.down_proj.weight"):
        open_checkpoint(_write(tmp_path, t), TINY, include_mtp=True)


def test_float8_weight_without_its_scale(tmp_path):
    t = _tensors()
    t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"].to(torch.float8_e4m3fn)
    cfg = {**to_hf_config(TINY), "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    with pytest.raises(BridgeError, match=r"'model.layers.0.mlp.down_proj.weight' in .* is float8 without .*_scale_inv"):
        open_checkpoint(_write(tmp_path, t, cfg), TINY, include_mtp=True, quantization_config=cfg["quantization_config"])


def test_converter_reports_bad_input_before_building_the_model(tmp_path, monkeypatch, capsys):
    import r1mega.train.engine as engine_mod

    t = _tensors()
    t["model.layers.1.mlp.gate.weight"] = torch.zeros(8, 64)
    d = _write(tmp_path / "hf", t)

    def no_engine(*a, **k):
        raise AssertionError("the model was built before the input was validated")

    monkeypatch.setattr(engine_mod, "TrainEngine", no_engine)
    rc = tools_convert.main(["hf-to-megatron", "--hf", str(d), "--out", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "tensor 'model.layers.1.mlp.gate.weight'" in err and "expected shape (8, 128)" in err and "got (8, 64)" in err
    assert not (tmp_path / "ckpt").exists()
