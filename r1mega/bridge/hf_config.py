"""ModelConfig <-> Hugging Face ``config.json``.

DeepSeek-V3 (``arch: deepseek_v3``) <-> ``DeepseekV3ForCausalLM`` in the published format
(``rope_theta`` + legacy ``rope_scaling``; transformers 5 and vLLM read it), dense students
(``arch: dense``) <-> ``LlamaForCausalLM`` (no biases, like the Megatron dense builder).
Settings Megatron cannot express raise :class:`~r1mega.config.base.ConfigError` naming the key.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional

from r1mega.config.base import ConfigError
from r1mega.config.model import ModelConfig

_TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _yarn(rope: Optional[dict]) -> Optional[dict]:
    if not rope:
        return None
    kind = rope.get("type", rope.get("rope_type"))
    if kind in (None, "default"):
        return None
    if kind != "yarn":
        raise ConfigError("config.json:rope_scaling", f"rope type {kind!r} is not supported (only yarn or none)")
    keys = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
    return {"type": "yarn", **{k: rope[k] for k in keys if k in rope}}


def _routing_note(m: ModelConfig) -> None:
    groups = m.n_group or 1
    if m.is_moe and groups > 1 and m.num_experts_per_tok // (m.topk_group or 1) != 2:
        warnings.warn(f"group-limited routing: Hugging Face/vLLM score a group by its top-2 experts, Megatron by its "
                      f"top-(num_experts_per_tok // topk_group) = top-{m.num_experts_per_tok // (m.topk_group or 1)}: "
                      "routing differs between the two", stacklevel=3)


def to_hf_config(m: ModelConfig, dtype: Optional[str] = None, extra: Optional[dict] = None) -> dict:
    """The ``config.json`` dict for a ModelConfig (``extra`` merged on top, e.g. token ids)."""
    m.validate()
    dtype = dtype or m.params_dtype
    common = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                  num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads, hidden_act="silu",
                  max_position_embeddings=m.max_position_embeddings, rms_norm_eps=m.rms_norm_eps,
                  rope_theta=m.rope_theta, initializer_range=m.init_std, tie_word_embeddings=m.tie_word_embeddings,
                  attention_bias=False, attention_dropout=0.0, use_cache=True, torch_dtype=_TORCH_DTYPES[dtype])
    if m.arch == "dense":
        cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", **common,
                   num_key_value_heads=m.num_key_value_heads or m.num_attention_heads,
                   head_dim=m.head_dim or m.hidden_size // m.num_attention_heads, mlp_bias=False, rope_scaling=None)
        return {**cfg, **(extra or {})}
    if m.is_moe and m.scoring_func != "sigmoid":
        raise ConfigError("model.scoring_func", "only sigmoid routing (DeepSeek-V3) exports to DeepseekV3ForCausalLM")
    _routing_note(m)
    cfg = dict(
        architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", **common,
        num_key_value_heads=m.num_attention_heads, moe_intermediate_size=m.moe_intermediate_size,
        n_shared_experts=m.n_shared_experts, n_routed_experts=m.n_routed_experts,
        routed_scaling_factor=m.routed_scaling_factor, kv_lora_rank=m.kv_lora_rank, q_lora_rank=m.q_lora_rank,
        qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim, qk_nope_head_dim=m.qk_nope_head_dim,
        topk_method="noaux_tc" if m.expert_bias else "greedy", n_group=m.n_group or 1, topk_group=m.topk_group or 1,
        num_experts_per_tok=m.num_experts_per_tok, moe_layer_freq=1,
        first_k_dense_replace=m.first_k_dense_replace if m.is_moe else m.num_layers,
        norm_topk_prob=m.norm_topk_prob, scoring_func=m.scoring_func, aux_loss_alpha=m.seq_aux_loss_coeff,
        seq_aux=True, rope_scaling=dict(m.rope_scaling) if m.rope_scaling else None, rope_interleave=True,
        num_nextn_predict_layers=m.num_nextn_predict_layers)
    return {**cfg, **(extra or {})}


def _get(d: dict, key: str, default=None, required: bool = True):
    if key in d:
        return d[key]
    if required and default is None:
        raise ConfigError(f"config.json:{key}", "missing")
    return default


def from_hf_config(d: dict, params_dtype: Optional[str] = None) -> ModelConfig:
    """A ModelConfig from a ``config.json`` dict (DeepSeek-V3 family or Llama-like dense)."""
    mt = d.get("model_type")
    if mt not in ("llama", "mistral", "deepseek_v3"):  # before any other field: the architecture decides them
        raise ConfigError("config.json:model_type", f"{mt!r} is not supported (deepseek_v3, llama, mistral)")
    dtype = params_dtype or _TORCH_DTYPES.get(str(d.get("torch_dtype", d.get("dtype"))), "float32")
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError("config.json:hidden_act", f"{d['hidden_act']!r} is not supported (only silu)")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise ConfigError("config.json:attention_bias", "biases are not supported by the Megatron builder")
    rope = d.get("rope_scaling") or d.get("rope_parameters")
    theta = d.get("rope_theta", (d.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    common = dict(vocab_size=_get(d, "vocab_size"), hidden_size=_get(d, "hidden_size"),
                  num_layers=_get(d, "num_hidden_layers"), intermediate_size=_get(d, "intermediate_size"),
                  num_attention_heads=_get(d, "num_attention_heads"),
                  max_position_embeddings=_get(d, "max_position_embeddings"),
                  rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
                  tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                  init_std=float(d.get("initializer_range", 0.02)), params_dtype=dtype)
    if mt in ("llama", "mistral"):
        if _yarn(rope) is not None:
            raise ConfigError("config.json:rope_scaling", "rope scaling is not supported for dense models")
        m = ModelConfig(arch="dense", **common, num_key_value_heads=d.get("num_key_value_heads"),
                        head_dim=d.get("head_dim"), n_routed_experts=0, first_k_dense_replace=common["num_layers"],
                        num_nextn_predict_layers=0)
        m.validate()
        return m
    if d.get("rope_interleave", True) is False:
        raise ConfigError("config.json:rope_interleave", "False is not supported (Megatron MLA and vLLM use interleaved rope)")
    if d.get("moe_layer_freq", 1) != 1:
        raise ConfigError("config.json:moe_layer_freq", f"{d['moe_layer_freq']} is not supported (only 1)")
    method = d.get("topk_method", "noaux_tc")
    if method not in ("noaux_tc", "greedy", "group_limited_greedy"):
        raise ConfigError("config.json:topk_method", f"{method!r} is not supported")
    n_routed = d.get("n_routed_experts") or 0
    m = ModelConfig(
        arch="deepseek_v3", **common,
        q_lora_rank=d.get("q_lora_rank"), kv_lora_rank=_get(d, "kv_lora_rank"),
        qk_nope_head_dim=_get(d, "qk_nope_head_dim"), qk_rope_head_dim=_get(d, "qk_rope_head_dim"),
        v_head_dim=_get(d, "v_head_dim"), rope_scaling=_yarn(rope),
        first_k_dense_replace=d.get("first_k_dense_replace", 0) if n_routed else common["num_layers"],
        n_routed_experts=n_routed, n_shared_experts=d.get("n_shared_experts") or 0,
        moe_intermediate_size=d.get("moe_intermediate_size") or 1, num_experts_per_tok=d.get("num_experts_per_tok") or 1,
        scoring_func=d.get("scoring_func", "sigmoid"), norm_topk_prob=bool(d.get("norm_topk_prob", True)),
        routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)), n_group=d.get("n_group") or 1,
        topk_group=d.get("topk_group") or 1, expert_bias=method == "noaux_tc",
        seq_aux_loss_coeff=float(d.get("aux_loss_alpha", 0.0)),
        num_nextn_predict_layers=int(d.get("num_nextn_predict_layers", 0)))
    m.validate()
    _routing_note(m)
    return m


def read_hf_config(hf_dir: str | os.PathLike) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise ConfigError("config.json", f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError("config.json", f"{path} is not valid JSON ({e})") from None


def write_hf_config(cfg: dict, out_dir: str | os.PathLike) -> Path:
    path = Path(out_dir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return path
