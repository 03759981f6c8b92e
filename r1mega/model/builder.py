"""Build a Megatron-Core GPTModel from a :class:`~r1mega.config.model.ModelConfig`.

DeepSeek-V3 architecture -> ``MLATransformerConfig`` (multi-latent attention, DeepSeekMoE with
shared + routed experts, sigmoid router with aux-loss-free expert bias, group-limited routing,
multi-token prediction); ``arch: dense`` -> a GQA + SwiGLU GPT (Llama, with Llama 3 RoPE scaling; Qwen2's
q/k/v biases; Qwen3's per-head q/k RMSNorm); ``arch: qwen3_moe`` -> the same attention with softmax-routed
experts (DeepSeek-V2 is ``deepseek_v3`` with softmax routing).

Layer specs: Transformer Engine specs (with the FP8 options) when TE and CUDA are present, local
Megatron-Core specs otherwise; the same ModelConfig either way. The platform layer decides which.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F

from r1mega import platform
from r1mega.config.base import ConfigError
from r1mega.config.model import ModelConfig
from r1mega.config.parallel import ParallelConfig

VOCAB_PAD_MULTIPLE = 128
"""The embedding is padded to a multiple of this, independent of TP, so that checkpoints reshard
between TP sizes without changing shapes (TP must divide the padded vocab)."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def padded_vocab_size(vocab_size: int, tensor_parallel: int = 1) -> int:
    padded = -(-vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
    if padded % tensor_parallel:
        raise ConfigError("parallel.tensor_parallel",
                          f"{tensor_parallel} does not divide the padded vocabulary {padded}")
    return padded


def _moe_kwargs(m: ModelConfig, p: ParallelConfig) -> dict:
    if not m.is_moe:
        return {}
    if m.scoring_func == "sigmoid" and m.num_experts_per_tok > 1 and not m.norm_topk_prob:
        raise ConfigError("model.norm_topk_prob", "Megatron's sigmoid router always renormalises the top-k "
                          "weights; norm_topk_prob=False is only supported with scoring_func='softmax'")
    balancing = m.aux_loss_type if m.seq_aux_loss_coeff > 0 else "none"
    groups = m.n_group if (m.n_group or 1) > 1 else None
    return dict(
        num_moe_experts=m.n_routed_experts,
        moe_layer_freq=[1 if k == "moe" else 0 for k in m.layer_kinds()],
        moe_ffn_hidden_size=m.moe_intermediate_size,
        moe_shared_expert_intermediate_size=(m.n_shared_experts * m.moe_intermediate_size) or None,
        moe_router_topk=m.num_experts_per_tok,
        moe_router_score_function=m.scoring_func,
        # softmax: top-k of the full softmax (DeepSeek-V2, norm_topk_prob off), or the softmax over the top-k
        # logits, which is the renormalised top-k of the full softmax (Qwen3-MoE's norm_topk_prob)
        moe_router_pre_softmax=m.scoring_func == "softmax" and not m.norm_topk_prob,
        moe_router_topk_scaling_factor=m.routed_scaling_factor,
        moe_router_num_groups=groups,
        moe_router_group_topk=m.topk_group if groups else None,
        moe_router_enable_expert_bias=m.expert_bias,
        moe_router_bias_update_rate=m.expert_bias_update_rate,
        moe_router_load_balancing_type=balancing,
        moe_aux_loss_coeff=m.seq_aux_loss_coeff,
        moe_router_dtype="fp32",
        moe_token_dispatcher_type=p.moe_token_dispatcher,
        moe_grouped_gemm=platform.have_transformer_engine(),
    )


def _rope_kwargs(m: ModelConfig) -> dict:
    if m.rope_scaling is None:
        return dict(rope_type="rope", rotary_base=m.rope_theta)
    s = m.rope_scaling
    return dict(rope_type="yarn", rotary_base=m.rope_theta, rotary_scaling_factor=s["factor"],
                original_max_position_embeddings=s.get("original_max_position_embeddings", 4096),
                beta_fast=s.get("beta_fast", 32), beta_slow=s.get("beta_slow", 1),
                mscale=s.get("mscale", 1.0), mscale_all_dim=s.get("mscale_all_dim", 0.0))


def _fp8_kwargs(m: ModelConfig) -> dict:
    if m.fp8 is None or not platform.have_transformer_engine():
        return {}
    return dict(fp8=m.fp8, fp8_recipe=m.fp8_recipe, fp8_margin=m.fp8_margin,
                first_last_layers_bf16=(m.fp8_bf16_first_layers + m.fp8_bf16_last_layers) > 0,
                num_layers_at_start_in_bf16=m.fp8_bf16_first_layers,
                num_layers_at_end_in_bf16=m.fp8_bf16_last_layers)


def _recompute_kwargs(m: ModelConfig, p: ParallelConfig, grouped_gemm: bool) -> dict:
    """``parallel.recompute`` as Megatron's recompute options. 'selective' is the module set ``r1mega plan``
    assumes, less what Megatron refuses for this model: ``mla_up_proj`` needs MLA, ``moe_act`` grouped-GEMM
    experts (Transformer Engine). None of these modules holds a router: only 'full' re-runs the routing."""
    if p.recompute == "full":
        return dict(recompute_granularity="full", recompute_method=p.recompute_method,
                    recompute_num_layers=p.recompute_num_layers)
    if p.recompute == "selective":
        modules = ["core_attn", "layernorm"] + ["mla_up_proj"] * m.mla + ["moe_act"] * (m.is_moe and grouped_gemm)
        return dict(recompute_granularity="selective", recompute_modules=modules)
    return {}


def transformer_config(m: ModelConfig, p: ParallelConfig, **extra):
    """The Megatron TransformerConfig (MLATransformerConfig for DeepSeek-V3) for our configs."""
    from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

    m.validate()
    dtype = _DTYPES[m.params_dtype]
    common = dict(
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.intermediate_size,
        num_attention_heads=m.num_attention_heads, normalization="RMSNorm", layernorm_epsilon=m.rms_norm_eps,
        add_bias_linear=False, gated_linear_unit=True, activation_func=F.silu,
        hidden_dropout=0.0, attention_dropout=0.0, init_method_std=m.init_std,
        tensor_model_parallel_size=p.tensor_parallel, pipeline_model_parallel_size=p.pipeline_parallel,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline, context_parallel_size=p.context_parallel,
        num_layers_in_first_pipeline_stage=p.num_layers_in_first_pipeline_stage,
        num_layers_in_last_pipeline_stage=p.num_layers_in_last_pipeline_stage,
        expert_model_parallel_size=p.expert_parallel, expert_tensor_parallel_size=p.expert_tensor_parallel,
        sequence_parallel=p.sequence_parallel, params_dtype=dtype, pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        bias_activation_fusion=False, masked_softmax_fusion=False, bias_dropout_fusion=False,
        apply_rope_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False,
    )
    common.update(platform.megatron_config_overrides())
    common.update(_fp8_kwargs(m))
    moe = _moe_kwargs(m, p)
    common.update(_recompute_kwargs(m, p, moe.get("moe_grouped_gemm", False)))
    common.update(extra)
    if not m.mla:  # GQA: dense, or with Qwen3-MoE's routed experts
        kv = m.num_key_value_heads or m.num_attention_heads
        return TransformerConfig(**common, **moe, num_query_groups=kv,
                                 kv_channels=m.head_dim or m.hidden_size // m.num_attention_heads,
                                 add_qkv_bias=m.qkv_bias, qk_layernorm=m.qk_norm)
    return MLATransformerConfig(
        **common, **moe, **_rope_kwargs(m),
        q_lora_rank=m.q_lora_rank, kv_lora_rank=m.kv_lora_rank, qk_head_dim=m.qk_nope_head_dim,
        qk_pos_emb_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim, qk_layernorm=True,
        rotary_interleaved=False,
        mtp_num_layers=m.num_nextn_predict_layers or None, mtp_loss_scaling_factor=m.mtp_loss_scaling_factor,
    )


def _dense_rope_kwargs(m: ModelConfig) -> dict:
    """GPTModel's RoPE arguments for a dense model: Llama 3 scaling switched on with its factor."""
    if m.mla or m.rope_scaling is None:
        return {}
    return dict(rope_scaling=True, rope_scaling_factor=float(m.rope_scaling["factor"]))


def _apply_llama3_bands(model, m: ModelConfig) -> None:
    """Megatron's RotaryEmbedding applies Llama 3 scaling with its ``factor`` but fixed bands
    (``low_freq_factor`` 1, ``high_freq_factor`` 4, ``original_max_position_embeddings`` 8192, the
    published Llama 3.x values): redo it from the unscaled frequencies with the config's bands, through
    the same Megatron method, so any Llama 3 config (and a tiny test model) gets exactly its own."""
    rot = getattr(model, "rotary_pos_emb", None)
    if m.mla or m.rope_scaling is None or rot is None:
        return
    s, dim = m.rope_scaling, m.head_dim or m.hidden_size // m.num_attention_heads
    base = 1.0 / (int(m.rope_theta) ** (torch.arange(0, dim, 2, dtype=torch.float32, device=rot.inv_freq.device) / dim))
    rot.inv_freq = rot._apply_scaling(base, factor=float(s["factor"]), low_freq_factor=float(s["low_freq_factor"]),
                                      high_freq_factor=float(s["high_freq_factor"]),
                                      original_max_position_embeddings=float(s["original_max_position_embeddings"]))


def _layer_specs(config, use_te: bool, vp_stage: Optional[int]):
    from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_decoder_block_spec, get_gpt_decoder_layer_specs,
                                                          get_gpt_mtp_block_spec)

    block = get_gpt_decoder_block_spec(config, use_transformer_engine=use_te, normalization="RMSNorm",
                                       vp_stage=vp_stage)
    mtp = None
    if config.mtp_num_layers:
        # MTP layers copy the spec of the model's last decoder layer (an MoE layer for DeepSeek-V3).
        last_layer = get_gpt_decoder_layer_specs(config, use_te, normalization="RMSNorm")[-1]
        mtp = get_gpt_mtp_block_spec(config, last_layer, use_transformer_engine=use_te, vp_stage=vp_stage)
    return block, mtp


def build_model(m: ModelConfig, p: ParallelConfig, mtp: Optional[bool] = None, **config_extra) -> list:
    """Build this rank's model chunks (one per virtual pipeline stage; one without interleaving).

    Requires Megatron's parallel_state to be initialised (``r1mega.platform.distributed.init_model_parallel``).
    ``mtp=False`` builds without the multi-token-prediction layers (pure log-prob/inference models).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    platform.init()
    if mtp is False:
        m = dataclasses.replace(m, num_nextn_predict_layers=0)
    config = transformer_config(m, p, **config_extra)
    use_te = platform.have_transformer_engine()
    vocab = padded_vocab_size(m.vocab_size, p.tensor_parallel)
    chunks = []
    for vp in range(p.virtual_pipeline or 1):
        vp_stage = vp if p.virtual_pipeline else None
        block, mtp_spec = _layer_specs(config, use_te, vp_stage)
        first = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        last = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        model = GPTModel(
            config=config, transformer_layer_spec=block, vocab_size=vocab,
            max_sequence_length=m.max_position_embeddings, pre_process=first, post_process=last,
            share_embeddings_and_output_weights=m.tie_word_embeddings,
            position_embedding_type="rope", rotary_base=int(m.rope_theta),
            mtp_block_spec=mtp_spec if last else None, vp_stage=vp_stage, **_dense_rope_kwargs(m),
        )
        _apply_llama3_bands(model, m)
        model.to(platform.device())
        chunks.append(model)
    return chunks
