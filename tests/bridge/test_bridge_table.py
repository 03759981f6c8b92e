"""The mapping table on its own: names both ways, shapes, layouts and their TP sharding, config.json."""
from __future__ import annotations

import pytest
import torch

from r1mega.bridge import BridgeError, from_hf_config, mapping_table, to_hf_config
from r1mega.bridge.table import canonical_name, from_hf, full_to_shard, shards_to_full, to_hf
from r1mega.config.base import ConfigError
from r1mega.model.presets import get_preset

TINY = get_preset("tiny", vocab_size=500)
DENSE = get_preset("tiny-dense")
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 32, "beta_slow": 1,
        "mscale": 0.707, "mscale_all_dim": 1.0}


def test_deepseek_v3_names_and_shapes():
    t = mapping_table(TINY)
    hf = t.hf_shapes()
    assert hf["model.embed_tokens.weight"] == (500, 128) and t.megatron("output_layer.weight").shape == (512, 128)
    assert hf["model.layers.0.mlp.gate_proj.weight"] == (384, 128)  # dense first layer
    assert hf["model.layers.1.self_attn.q_b_proj.weight"] == (4 * 96, 64)
    assert hf["model.layers.1.self_attn.kv_a_proj_with_mqa.weight"] == (576, 128)
    assert hf["model.layers.1.self_attn.kv_b_proj.weight"] == (4 * 64, 512)
    assert hf["model.layers.1.mlp.gate.e_score_correction_bias"] == (8,)
    assert hf["model.layers.3.mlp.experts.7.down_proj.weight"] == (128, 96)
    assert hf["model.layers.3.mlp.shared_experts.up_proj.weight"] == (96, 128)
    # MTP depth 1 is HF layer num_layers (=4), DeepSeek layout
    for n in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "mlp.experts.5.gate_proj.weight"):
        assert f"model.layers.4.{n}" in hf
    assert t.megatron("mtp.layers.0.final_layernorm.weight").hf == ("model.layers.4.shared_head.norm.weight",)
    assert t.megatron("mtp.layers.0.transformer_layer.mlp.router.expert_bias").hf == ("model.layers.4.mlp.gate.e_score_correction_bias",)
    assert set(t.mtp_copies) == {"model.layers.4.embed_tokens.weight", "model.layers.4.shared_head.head.weight"}
    e, i = t.hf("model.layers.2.mlp.experts.3.up_proj.weight")
    assert (e.megatron, i, e.expert, e.layer, e.layout) == ("decoder.layers.2.mlp.experts.local_experts.3.linear_fc1.weight", 1, 3, 2, "glu")
    assert len(mapping_table(TINY, include_mtp=False).hf_shapes()) == len(hf) - (4 + 9 + 2 + 3 + 8 * 3)  # MTP: its own 4 + one MoE layer
    with pytest.raises(BridgeError, match="decoder.layers.9.foo"):
        t.megatron("decoder.layers.9.foo")


def test_dense_names_and_qkv_split():
    t = mapping_table(DENSE)
    e = t.megatron("decoder.layers.0.self_attention.linear_qkv.weight")
    assert e.hf == tuple(f"model.layers.0.self_attn.{x}_proj.weight" for x in "qkv") and e.shape == (256, 128)
    # Megatron interleaves per query group: [q(2 heads), k, v] x 2 groups, head_dim 32
    rows = torch.arange(256.0)[:, None].expand(256, 128)
    q, k, v = to_hf(e, rows, DENSE)
    group = lambda g, a, b: torch.arange(g * 128 + a, g * 128 + b, dtype=torch.float32)  # noqa: E731
    assert torch.equal(q[:, 0], torch.cat([group(0, 0, 64), group(1, 0, 64)]))
    assert torch.equal(k[:, 0], torch.cat([group(0, 64, 96), group(1, 64, 96)]))
    assert torch.equal(v[:, 0], torch.cat([group(0, 96, 128), group(1, 96, 128)]))
    assert torch.equal(from_hf(e, [q, k, v], DENSE), rows)


@pytest.mark.parametrize("name,dim", [("decoder.layers.0.mlp.linear_fc1.weight", 0),
                                      ("decoder.layers.1.self_attention.linear_proj.weight", 1),
                                      ("embedding.word_embeddings.weight", 0)])
def test_tp_shards_round_trip(name, dim):
    e = mapping_table(TINY).megatron(name)
    full = torch.randn(e.shape)
    shards = [full_to_shard(e, full, dim, r, 2) for r in range(2)]
    assert torch.equal(shards_to_full(e, shards, dim), full)
    assert torch.equal(from_hf(e, to_hf(e, full, TINY), TINY)[:500], full[:500])


def test_glu_shards_hold_gate_and_up_halves():
    e = mapping_table(TINY).megatron("decoder.layers.0.mlp.linear_fc1.weight")
    full = torch.arange(768.0)[:, None]
    s1 = full_to_shard(e, full, 0, 1, 2)  # rank 1: gate rows 192..383, then up rows 576..767
    assert torch.equal(s1[:, 0], torch.cat([torch.arange(192.0, 384), torch.arange(576.0, 768)]))


def test_canonical_names_global_layer_expert_and_te_aliases():
    assert canonical_name("decoder.layers.1.mlp.experts.local_experts.2.linear_fc2.weight", {1: 3}, 1, 4) == \
        "decoder.layers.3.mlp.experts.local_experts.6.linear_fc2.weight"
    assert canonical_name("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight", {0: 0}, 0, 0) == \
        "decoder.layers.0.input_layernorm.weight"
    assert canonical_name("decoder.layers.0.mlp.experts.linear_fc1.weight3", {0: 5}, 1, 4) == \
        "decoder.layers.5.mlp.experts.local_experts.7.linear_fc1.weight"


@pytest.mark.parametrize("m", [TINY, get_preset("tiny", rope_scaling=YARN), DENSE, get_preset("deepseek-v3")],
                         ids=["tiny", "yarn", "dense", "deepseek-v3"])
def test_hf_config_round_trip(m):
    back = from_hf_config(to_hf_config(m))
    for f in ("arch", "vocab_size", "hidden_size", "num_layers", "q_lora_rank", "kv_lora_rank", "rope_scaling",
              "n_group", "topk_group", "num_nextn_predict_layers", "expert_bias", "routed_scaling_factor", "rms_norm_eps"):
        assert getattr(back, f) == getattr(m, f), f


def test_hf_config_has_what_transformers_and_vllm_read():
    from transformers import DeepseekV3Config

    d = to_hf_config(get_preset("tiny", rope_scaling=YARN))
    assert d["architectures"] == ["DeepseekV3ForCausalLM"] and d["model_type"] == "deepseek_v3"
    assert (d["n_group"], d["topk_group"], d["num_nextn_predict_layers"], d["topk_method"]) == (2, 1, 1, "noaux_tc")
    assert (d["scoring_func"], d["rope_interleave"], d["rope_theta"], d["first_k_dense_replace"]) == ("sigmoid", True, 10000.0, 1)
    assert d["rope_scaling"]["type"] == "yarn" and d["kv_lora_rank"] + d["qk_rope_head_dim"] == 576
    c = DeepseekV3Config(**{k: v for k, v in d.items() if k != "architectures"})
    assert c.rope_parameters["rope_type"] == "yarn" and c.rope_parameters["factor"] == 4.0
    assert c.n_routed_experts == 8 and c.num_experts_per_tok == 2 and c.routed_scaling_factor == 2.5


@pytest.mark.parametrize("change,where", [({"hidden_act": "gelu"}, "hidden_act"), ({"rope_interleave": False}, "rope_interleave"),
                                          ({"model_type": "gpt2"}, "model_type"),
                                          ({"rope_scaling": {"type": "linear", "factor": 2}}, "rope_scaling")])
def test_hf_config_refuses_what_megatron_cannot_express(change, where):
    with pytest.raises(ConfigError, match=where):
        from_hf_config({**to_hf_config(TINY), **change})
