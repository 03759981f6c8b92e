"""Model presets with the exact public shapes (from each model's published config.json).

``tiny`` is sized for a 2-core CPU and obeys vLLM-CPU's limits so it can be served too:
attention head sizes from {32, 64, 80, 96, 112, 128, ...} and, for MLA,
``kv_lora_rank + qk_rope_head_dim <= 576``: vLLM-CPU's MLA kernels need exactly 576, and the rollout
engine serves a smaller latent zero-padded up to it (``r1mega.platform.vllm_settings.mla_latent_pad``;
see ../shared/notes/platform.md).
"""
from __future__ import annotations

import dataclasses

from r1mega.config.base import ConfigError
from r1mega.config.model import ModelConfig

_YARN_V3 = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
_YARN_V2 = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
            "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
# What every dense preset shares: no experts (first_k_dense_replace = num_layers), no MTP, BF16, as a
# published checkpoint imports.
_DENSE = dict(arch="dense", n_routed_experts=0, num_nextn_predict_layers=0, params_dtype="bfloat16")

# What the Qwen3 MoE models share (128 experts, softmax top-8 renormalised, no shared expert, every layer MoE,
# GQA with 4 KV heads of 128 and q/k norms, their vocabulary, rope and context).
_QWEN3_MOE = dict(
    arch="qwen3_moe", vocab_size=151936, num_key_value_heads=4, head_dim=128, qk_norm=True,
    max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None,
    first_k_dense_replace=0, n_routed_experts=128, n_shared_experts=0, num_experts_per_tok=8,
    scoring_func="softmax", norm_topk_prob=True, routed_scaling_factor=1.0, n_group=1, topk_group=1,
    expert_bias=False, seq_aux_loss_coeff=1e-3, aux_loss_type="aux_loss", num_nextn_predict_layers=0,
    params_dtype="bfloat16")

PRESETS: dict[str, dict] = {
    # DeepSeek-V3 / R1: 671B total, ~37B activated.
    "deepseek-v3": dict(
        vocab_size=129280, hidden_size=7168, num_layers=61, intermediate_size=18432,
        num_attention_heads=128, max_position_embeddings=163840, rms_norm_eps=1e-6,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        rope_theta=10000.0, rope_scaling=_YARN_V3,
        first_k_dense_replace=3, n_routed_experts=256, n_shared_experts=1, moe_intermediate_size=2048,
        num_experts_per_tok=8, scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
        n_group=8, topk_group=4, expert_bias=True, seq_aux_loss_coeff=1e-4,
        num_nextn_predict_layers=1, params_dtype="bfloat16"),
    # DeepSeek-V2-Lite: 15.7B total, ~2.4B activated (softmax router: top-6 of the full softmax, unnormalised,
    # greedy, scaling 1.0; no q LoRA, no MTP). Exports as DeepseekV2ForCausalLM.
    "deepseek-v2-lite": dict(
        vocab_size=102400, hidden_size=2048, num_layers=27, intermediate_size=10944,
        num_attention_heads=16, max_position_embeddings=163840, rms_norm_eps=1e-6,
        q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        rope_theta=10000.0, rope_scaling=_YARN_V2,
        first_k_dense_replace=1, n_routed_experts=64, n_shared_experts=2, moe_intermediate_size=1408,
        num_experts_per_tok=6, scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=1.0,
        n_group=1, topk_group=1, expert_bias=False, seq_aux_loss_coeff=1e-3,
        num_nextn_predict_layers=0, params_dtype="bfloat16"),
    # Qwen3-30B-A3B: 30.5B total, 3.3B activated (GQA 32/4 with q/k norms, head_dim 128; 128 experts, softmax
    # top-8 renormalised, no shared expert, every layer MoE).
    "qwen3-30b-a3b": dict(
        _QWEN3_MOE, hidden_size=2048, num_layers=48, intermediate_size=6144, num_attention_heads=32,
        moe_intermediate_size=768),
    # Qwen3-235B-A22B: 235B total, 22B activated (GQA 64/4, the 30B-A3B's routing).
    "qwen3-235b-a22b": dict(
        _QWEN3_MOE, hidden_size=4096, num_layers=94, intermediate_size=12288, num_attention_heads=64,
        moe_intermediate_size=1536),
    # Dense models (GQA + SwiGLU, every layer dense), the R1 paper's distillation students and their bases;
    # each equals what its published config.json imports to (r1mega.bridge.from_hf_config).
    # Qwen2.5: biases on q/k/v (exports as Qwen2ForCausalLM); the 1.5B ties its embeddings.
    "qwen2.5-1.5b": dict(_DENSE, vocab_size=151936, hidden_size=1536, num_layers=28, first_k_dense_replace=28,
                         intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2, qkv_bias=True,
                         tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-6,
                         rope_theta=1000000.0),
    "qwen2.5-7b": dict(_DENSE, vocab_size=152064, hidden_size=3584, num_layers=28, first_k_dense_replace=28,
                       intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4, qkv_bias=True,
                       max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1000000.0),
    "qwen2.5-32b": dict(_DENSE, vocab_size=152064, hidden_size=5120, num_layers=64, first_k_dense_replace=64,
                        intermediate_size=27648, num_attention_heads=40, num_key_value_heads=8, qkv_bias=True,
                        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=1000000.0),
    # Qwen3: per-head q/k norms, head_dim 128 (not hidden / heads for every size).
    "qwen3-8b": dict(_DENSE, vocab_size=151936, hidden_size=4096, num_layers=36, first_k_dense_replace=36,
                     intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     qk_norm=True, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0),
    # Llama 3.1 / 3.3: no biases, Llama 3 RoPE frequency bands.
    "llama-3.1-8b": dict(_DENSE, vocab_size=128256, hidden_size=4096, num_layers=32, first_k_dense_replace=32,
                         intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling=_LLAMA3_ROPE),
    "llama-3.3-70b": dict(_DENSE, vocab_size=128256, hidden_size=8192, num_layers=80, first_k_dense_replace=80,
                          intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                          max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                          rope_scaling=_LLAMA3_ROPE),
    # Moonlight-16B-A3B: DeepSeek-V3 architecture at 16B scale (sigmoid router + expert bias).
    "moonlight-16b": dict(
        vocab_size=163840, hidden_size=2048, num_layers=27, intermediate_size=11264,
        num_attention_heads=16, max_position_embeddings=8192, rms_norm_eps=1e-5,
        q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        rope_theta=50000.0, rope_scaling=None,
        first_k_dense_replace=1, n_routed_experts=64, n_shared_experts=2, moe_intermediate_size=1408,
        num_experts_per_tok=6, scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.446,
        n_group=1, topk_group=1, expert_bias=True, seq_aux_loss_coeff=1e-3,
        num_nextn_predict_layers=0, params_dtype="bfloat16"),
    # CPU-sized DeepSeek-V3 shape: MLA with q LoRA, 1 dense + 3 MoE layers, group-limited
    # sigmoid routing with expert bias, MTP 1. ~2.4M parameters (+0.5M MTP).
    # init_std 0.05, not the 0.02 of large models: at hidden 128 the MLA low-rank chains
    # (x -> q/kv latent -> heads) start so small that attention learns nothing for hundreds of
    # steps (a copy task: loss 5.3 -> 4.3 in 400 steps at 0.02, -> 0.04 in 150 steps at 0.05).
    "tiny": dict(
        vocab_size=512, hidden_size=128, num_layers=4, intermediate_size=384,
        num_attention_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-6,
        q_lora_rank=64, kv_lora_rank=512, qk_nope_head_dim=32, qk_rope_head_dim=64, v_head_dim=32,
        rope_theta=10000.0, rope_scaling=None,
        first_k_dense_replace=1, n_routed_experts=8, n_shared_experts=1, moe_intermediate_size=96,
        num_experts_per_tok=2, scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
        n_group=2, topk_group=1, expert_bias=True, seq_aux_loss_coeff=1e-4,
        num_nextn_predict_layers=1, params_dtype="float32", init_std=0.05),
    # Small dense student for distillation (Qwen2/Llama-like GQA + SwiGLU).
    "tiny-dense": dict(
        arch="dense", vocab_size=512, hidden_size=128, num_layers=4, intermediate_size=384,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        rms_norm_eps=1e-6, rope_theta=10000.0, n_routed_experts=0, first_k_dense_replace=4,
        num_nextn_predict_layers=0, params_dtype="float32", init_std=0.05),
}

# Published totals used by tests and `model info` (parameters, excluding MTP).
PUBLISHED = {
    "deepseek-v3": {"total": 671e9, "activated": 37e9},
    "deepseek-v2-lite": {"total": 15.7e9, "activated": 2.4e9},
    "moonlight-16b": {"total": 16e9, "activated": 3e9},
    "qwen3-30b-a3b": {"total": 30.5e9, "activated": 3.3e9},
    "qwen3-235b-a22b": {"total": 235e9, "activated": 22e9},
    # Dense: every parameter is activated.
    "qwen2.5-1.5b": {"total": 1.54e9, "activated": 1.54e9},
    "qwen2.5-7b": {"total": 7.61e9, "activated": 7.61e9},
    "qwen2.5-32b": {"total": 32.5e9, "activated": 32.5e9},
    "qwen3-8b": {"total": 8.19e9, "activated": 8.19e9},
    "llama-3.1-8b": {"total": 8.03e9, "activated": 8.03e9},
    "llama-3.3-70b": {"total": 70.6e9, "activated": 70.6e9},
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of a preset, with field overrides applied on top."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError("model.preset", f"unknown preset {name!r} (known: {', '.join(preset_names())}){hint}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError("model", f"unknown field(s) {bad} for preset {name!r}")
    return ModelConfig(preset=name, **{**PRESETS[name], **overrides})
