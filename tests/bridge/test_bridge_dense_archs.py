"""Qwen2 / Qwen2.5, Llama 3 (rope_type llama3) and Qwen3 (dense) through the bridge, on tiny models that
transformers itself builds and initialises here (no download):

* config.json -> ModelConfig -> config.json keeps what transformers reads (class, biases, q/k norms,
  rope parameters, head_dim, tied embeddings);
* HF -> Megatron import, then Megatron log-probs == transformers' (fp32, < 1e-4) and the export back to
  HF is bit-exact, tied embeddings included; the parameter count equals the built Megatron model;
* the checks have teeth: Llama 3 without its scaling, or with Megatron's built-in frequency bands, is
  far off; Qwen2 without its biases and Qwen3 without its q/k norms are far off;
* options Megatron cannot express are one ConfigError naming the config.json key.
"""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from bridge_helpers import check_through_megatron, hf_logprobs, refused, sequences
from r1mega.bridge import from_hf_config, load_hf_weights, read_hf_config, to_hf_config
from r1mega.config.base import ConfigError
from r1mega.config.parallel import ParallelConfig
from r1mega.train.batching import lm_batch

COMMON = dict(vocab_size=500, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, dtype="float32")
# Llama 3 scaling with a short original context, so that a 160-token test sequence is past it and every band
# (kept, smoothed, divided by factor) holds some of the 16 frequencies of head_dim 32.
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
CASES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6, tie_word_embeddings=True)),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500000.0, rope_scaling=LLAMA3, head_dim=32)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(rope_theta=1e6, head_dim=64)),  # head_dim != hidden/heads
}
SEQ_LEN = 160


def _hf_config(case: str, **over):
    import transformers

    cls, _, extra = CASES[case]
    kw = {**COMMON, **extra, **over}
    rope = kw.pop("rope_scaling", None)
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": kw.pop("rope_theta"), **(rope or {})}
    return getattr(transformers, cls)(**kw)


@torch.no_grad()
def _hf_model(case: str, path):
    """transformers' own model of the case, with unit-scale activations (far-from-uniform log-probs), saved."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = getattr(transformers, CASES[case][1])(_hf_config(case)).eval()
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        p.copy_(0.5 * noise if name.endswith("bias") else 1.0 + 0.2 * noise if p.dim() == 1
                else 0.3 * noise if "embed_tokens" in name else noise / math.sqrt(p.shape[1]))
    model.save_pretrained(path)
    return model


def _megatron(hf_dir):
    from r1mega.train.engine import TrainEngine

    m = from_hf_config(read_hf_config(hf_dir))
    engine = TrainEngine(m, ParallelConfig(), None, mtp=False)
    load_hf_weights(engine, m, ParallelConfig(), hf_dir)
    return m, engine


def _diff(ours, theirs, batch) -> float:
    mask = batch["loss_mask"].bool()
    return (ours - theirs)[mask].abs().max().item()


@pytest.mark.parametrize("case", list(CASES))
def test_hf_config_round_trip(case, tmp_path):
    _hf_config(case).save_pretrained(tmp_path)
    src = read_hf_config(tmp_path)
    m = from_hf_config(src)
    assert (m.arch, m.qkv_bias, m.qk_norm) == ("dense", case == "qwen2", case == "qwen3")
    assert m.rope_scaling == (LLAMA3 if case == "llama3" else None)
    assert m.tie_word_embeddings == (case == "qwen2") and m.rope_theta == CASES[case][2]["rope_theta"]
    out = to_hf_config(m)
    assert out["architectures"] == [CASES[case][1]] and out["model_type"] == src["model_type"]
    assert to_hf_config(from_hf_config(out)) == out
    import transformers

    back = transformers.AutoConfig.for_model(**{k: v for k, v in out.items() if k != "architectures"})
    theirs = _hf_config(case)
    for key in ("rope_parameters", "num_key_value_heads", "tie_word_embeddings", "layer_types", "attention_bias",
                "sliding_window"):
        assert getattr(back, key, None) == getattr(theirs, key, None), key
    head_dim = [getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads for c in (back, theirs)]
    assert head_dim[0] == head_dim[1]


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_model_through_megatron(case, tmp_path):
    hf = _hf_model(case, tmp_path / "hf")
    m, engine = _megatron(tmp_path / "hf")
    check_through_megatron(case, hf, tmp_path / "hf", m, engine, SEQ_LEN)
    # a tied Qwen2 has no lm_head.weight, as transformers saved it
    assert ("lm_head.weight" in load_file(str(tmp_path / "hf" / "model.safetensors"))) == (case != "qwen2")


def test_the_parity_checks_have_teeth(tmp_path, monkeypatch):
    """Each architecture's feature moves log-probs by far more than the parity bound: Llama 3 without its
    scaling or with Megatron's built-in bands (8192 original positions), Qwen2 without its q/k/v biases,
    Qwen3 without its q/k norms."""
    import transformers

    from r1mega.bridge.local import local_params
    from r1mega.bridge.table import from_hf, mapping_table
    from r1mega.model import builder
    from r1mega.train.engine import TrainEngine

    batch = lm_batch(sequences(500, n=2, length=SEQ_LEN))
    llama = _hf_model("llama3", tmp_path / "llama3")
    _, engine = _megatron(tmp_path / "llama3")
    plain = transformers.LlamaForCausalLM(_hf_config("llama3", rope_scaling=None)).eval()
    plain.load_state_dict(llama.state_dict())
    off = {"llama3 unscaled": _diff(engine.logprobs(batch), hf_logprobs(plain, batch), batch)}
    monkeypatch.setattr(builder, "_apply_llama3_bands", lambda model, m: None)
    _, fixed_bands = _megatron(tmp_path / "llama3")
    off["llama3 megatron default bands"] = _diff(fixed_bands.logprobs(batch), hf_logprobs(llama, batch), batch)
    monkeypatch.undo()
    for case, field in (("qwen2", "qkv_bias"), ("qwen3", "qk_norm")):
        hf = _hf_model(case, tmp_path / case)
        without = dataclasses.replace(from_hf_config(read_hf_config(tmp_path / case)), **{field: False})
        engine = TrainEngine(without, ParallelConfig(), None, mtp=False)
        sd = load_file(str(tmp_path / case / "model.safetensors"))
        with torch.no_grad():
            for p in local_params(engine, mapping_table(without, include_mtp=False)):
                p.tensor.copy_(from_hf(p.entry, [sd[n] for n in p.entry.hf], without))
        off[f"{case} without {field}"] = _diff(engine.logprobs(batch), hf_logprobs(hf, batch), batch)
    print("max |log-prob diff| without the feature:", {k: round(v, 3) for k, v in off.items()})
    assert all(v > 0.1 for v in off.values()), off


@pytest.mark.parametrize("case,change,key,what", [
    ("qwen2", {"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window", "sliding-window attention"),
    ("qwen2", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types", "sliding-window attention"),
    ("qwen3", {"attention_bias": True}, "attention_bias", "not supported for qwen3"),
    ("llama3", {"model_type": "mistral", "sliding_window": 4096}, "sliding_window", "sliding-window attention"),
    ("llama3", {"attention_bias": True}, "attention_bias", "not supported for llama"),
    ("llama3", {"mlp_bias": True}, "mlp_bias", "not supported for llama"),
    ("llama3", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling", "'linear' is not supported"),
    ("qwen2", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling", "'yarn' is not supported"),
    ("llama3", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 64}},
     "rope_scaling.low_freq_factor", "missing"),
    ("llama3", {"rope_scaling": {**LLAMA3, "low_freq_factor": 4.0}}, "rope_scaling.high_freq_factor",
     "expected more than low_freq_factor"),
    ("qwen2", {"model_type": "qwen2_vl"}, "model_type", "'qwen2_vl' is not supported"),
])
def test_unsupported_options_are_one_line_naming_the_key(case, change, key, what):
    cfg = {**to_hf_config(from_hf_config(_hf_config(case).to_dict())), **change}
    if "rope_scaling" in change:
        cfg.pop("rope_parameters", None)
    refused(cfg, key, what)


def test_model_config_refuses_what_no_hf_architecture_has():
    from r1mega.model.presets import get_preset

    with pytest.raises(ConfigError, match=r"model\.qk_norm: qkv_bias \(Qwen2\) and qk_norm \(Qwen3\) together"):
        get_preset("tiny-dense", qkv_bias=True, qk_norm=True).validate()
    with pytest.raises(ConfigError, match=r"model\.qkv_bias: is for dense attention"):
        get_preset("tiny", qkv_bias=True).validate()
    with pytest.raises(ConfigError, match=r"model\.rope_scaling: got .*expected None or a dict with rope_type: llama3"):
        get_preset("tiny-dense", rope_scaling={"type": "yarn", "factor": 4.0}).validate()


def test_converter_refuses_a_sliding_window_qwen2_before_reading_weights(tmp_path, monkeypatch, capsys):
    import r1mega.bridge as bridge
    from r1mega import tools_convert

    _hf_model("qwen2", tmp_path / "hf")
    capsys.readouterr()  # transformers' save progress
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "use_sliding_window": True}))

    def no_read(*a, **k):
        raise AssertionError("a weight was read before config.json was validated")

    monkeypatch.setattr(bridge, "open_checkpoint", no_read)
    rc = tools_convert.main(["hf-to-megatron", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "config.json:use_sliding_window" in err[0], err
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_qwen2_converter_round_trip_through_tp2_is_bit_exact(tmp_path):
    """transformers' tied Qwen2 -> `convert hf-to-megatron --tp 2` (torchrun, 2 processes: every q/k/v bias
    split by query group over the two ranks) -> `convert megatron-to-hf` at one rank (Megatron's resharding)
    and at TP2 (the bias shards gathered): every tensor bit-exact, the same model config, transformers'
    logits identical."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import transformers

    root = Path(__file__).resolve().parents[2]
    tool, bin_ = root / "tools" / "convert_checkpoint.py", Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    src_model = _hf_model("qwen2", tmp_path / "hf")
    for cmd in ([str(bin_ / "torchrun"), "--standalone", "--nproc-per-node", "2", str(tool), "hf-to-megatron",
                 "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"), "--tp", "2"],
                [sys.executable, str(tool), "megatron-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")],
                [str(bin_ / "torchrun"), "--standalone", "--nproc-per-node", "2", str(tool), "megatron-to-hf",
                 "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back_tp2"), "--tp", "2"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        print(proc.stdout.strip().splitlines()[-1])
    src = load_file(str(tmp_path / "hf" / "model.safetensors"))
    for d in ("back", "back_tp2"):
        back = load_file(str(tmp_path / d / "model.safetensors"))
        assert sorted(back) == sorted(src) and "lm_head.weight" not in back
        assert [k for k in src if not (torch.equal(src[k], back[k]) and src[k].dtype == back[k].dtype)] == [], d
    cfg = read_hf_config(tmp_path / "back")
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert to_hf_config(from_hf_config(cfg)) == to_hf_config(from_hf_config(read_hf_config(tmp_path / "hf")))
    transformers.logging.set_verbosity_error()
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(src_model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_missing_and_unknown_bias_tensors_are_named_before_any_weight_is_read(tmp_path):
    """A Qwen2 directory without one k_proj bias, or with an o_proj bias (Qwen2 has none), is refused by the
    directory check, which reads only the safetensors headers."""
    from safetensors.torch import save_file

    from r1mega.bridge import BridgeError, open_checkpoint

    _hf_model("qwen2", tmp_path / "hf")
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    m = from_hf_config(read_hf_config(tmp_path / "hf"))
    for name, change, pattern in (
            ("missing", lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"),
             r"missing tensors: model\.layers\.1\.self_attn\.k_proj\.bias"),
            ("unknown", lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": torch.zeros(128)}),
             r"unknown tensor 'model\.layers\.0\.self_attn\.o_proj\.bias' in model\.safetensors")):
        t = dict(tensors)
        change(t)
        d = tmp_path / name
        d.mkdir()
        save_file(t, str(d / "model.safetensors"))
        (d / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
        with pytest.raises(BridgeError, match=pattern):
            open_checkpoint(d, m, False)


# The architecture fields of published config.json files (abridged: token ids, transformers_version etc. left out).
PUBLISHED = {
    "Qwen2.5-Math-1.5B": ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
                           "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                           "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                           "max_window_layers": 21, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
                           "use_sliding_window": False, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                           "vocab_size": 151936}, 1.54e9),
    "Llama-3.1-8B": ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
                      "mlp_bias": False, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                      "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                      "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
                      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                      "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 128256}, 8.03e9),
    "Qwen3-8B": ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
                  "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                  "max_position_embeddings": 40960, "max_window_layers": 36, "rms_norm_eps": 1e-06,
                  "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "use_sliding_window": False,
                  "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 151936}, 8.19e9),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_import(name):
    """The paper's students' config.json import as the right dense family, with their published totals (1%)."""
    from r1mega.model.counting import count_parameters

    cfg, total = PUBLISHED[name]
    m = from_hf_config(cfg)
    assert (m.arch, m.params_dtype, m.qkv_bias, m.qk_norm) == ("dense", "bfloat16", name.startswith("Qwen2"),
                                                                name.startswith("Qwen3"))
    assert m.rope_scaling == ({**cfg["rope_scaling"]} if cfg.get("rope_scaling") else None)
    assert to_hf_config(m)["architectures"] == cfg["architectures"]
    assert abs(count_parameters(m).total / total - 1) < 0.01, count_parameters(m).total


@pytest.mark.parametrize("name, preset", [("Qwen3-8B", "qwen3-8b"), ("Llama-3.1-8B", "llama-3.1-8b")])
def test_dense_presets_equal_their_published_config_import(name, preset):
    """`model.preset: qwen3-8b` is the very model `model.hf_config: <Qwen3-8B>/config.json` gives (every field)."""
    from r1mega.model.presets import get_preset

    assert dataclasses.replace(get_preset(preset), preset=None) == from_hf_config(PUBLISHED[name][0])


def test_qwen2_5_1_5b_preset_is_the_math_model_shape_with_its_own_rope():
    """Qwen2.5-Math-1.5B is Qwen2.5-1.5B's shape with a 4K context at RoPE base 1e4; every other field agrees."""
    from r1mega.model.presets import get_preset

    math = from_hf_config(PUBLISHED["Qwen2.5-Math-1.5B"][0])
    base = get_preset("qwen2.5-1.5b", rope_theta=10000.0, max_position_embeddings=4096)
    assert dataclasses.replace(base, preset=None) == math
