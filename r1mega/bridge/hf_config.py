"""ModelConfig <-> Hugging Face ``config.json``.

DeepSeek-V3 (``arch: deepseek_v3``) <-> ``DeepseekV3ForCausalLM`` in the published format
(``rope_theta`` + legacy ``rope_scaling``; transformers 5 and vLLM read it), with softmax routing <->
``DeepseekV2ForCausalLM`` (DeepSeek-V2, V2-Lite); ``arch: qwen3_moe`` <-> ``Qwen3MoeForCausalLM``; dense models (``arch: dense``)
<-> ``LlamaForCausalLM`` (no biases; Llama 3 ``rope_scaling``), ``Qwen2ForCausalLM`` (``qkv_bias``) or
``Qwen3ForCausalLM`` (``qk_norm``); Mistral configs import as Llama.
Settings Megatron cannot express raise :class:`~r1mega.config.base.ConfigError` naming the key.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional

from r1mega.config.base import ConfigError
from r1mega.config.model import LLAMA3_ROPE_KEYS, ModelConfig, check_llama3_rope

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
    groups = m.n_group or 1  # softmax (DeepSeek-V2) group semantics are checked by ModelConfig.validate
    if m.is_moe and m.scoring_func == "sigmoid" and groups > 1 and m.num_experts_per_tok // (m.topk_group or 1) != 2:
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
    if not m.mla:
        family = dense_family(m) if m.arch == "dense" else "qwen3_moe"
        cfg = dict(architectures=[_DENSE_CLASSES[family]], model_type=family, **common,
                   num_key_value_heads=m.num_key_value_heads or m.num_attention_heads,
                   head_dim=m.head_dim or m.hidden_size // m.num_attention_heads,
                   rope_scaling={"rope_type": "llama3", **{k: m.rope_scaling[k] for k in LLAMA3_ROPE_KEYS}}
                   if m.rope_scaling else None)
        if family == "llama":
            cfg["mlp_bias"] = False
        else:  # Qwen2 has q/k/v biases by construction (no attention_bias key); both: full attention everywhere
            if family == "qwen2":
                del cfg["attention_bias"]
            cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.num_layers)
        if family == "qwen3_moe":  # the MoE layers are those after the first first_k_dense_replace
            cfg.update(num_experts=m.n_routed_experts, num_experts_per_tok=m.num_experts_per_tok,
                       moe_intermediate_size=m.moe_intermediate_size, norm_topk_prob=m.norm_topk_prob,
                       decoder_sparse_step=1, mlp_only_layers=list(range(m.first_k_dense_replace)),
                       router_aux_loss_coef=m.seq_aux_loss_coeff, output_router_logits=False)
        return {**cfg, **(extra or {})}
    _routing_note(m)
    v2 = m.is_moe and m.scoring_func == "softmax"  # DeepSeek-V2: softmax routing, greedy or group-limited top-k
    if v2:
        method = "group_limited_greedy" if (m.n_group or 1) > 1 else "greedy"
    else:
        method = "noaux_tc" if m.expert_bias else "greedy"
    cfg = dict(
        architectures=["DeepseekV2ForCausalLM" if v2 else "DeepseekV3ForCausalLM"],
        model_type="deepseek_v2" if v2 else "deepseek_v3", **common,
        num_key_value_heads=m.num_attention_heads, moe_intermediate_size=m.moe_intermediate_size,
        n_shared_experts=m.n_shared_experts, n_routed_experts=m.n_routed_experts,
        routed_scaling_factor=m.routed_scaling_factor, kv_lora_rank=m.kv_lora_rank, q_lora_rank=m.q_lora_rank,
        qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim, qk_nope_head_dim=m.qk_nope_head_dim,
        topk_method=method, n_group=m.n_group or 1, topk_group=m.topk_group or 1,
        num_experts_per_tok=m.num_experts_per_tok, moe_layer_freq=1,
        first_k_dense_replace=m.first_k_dense_replace if m.is_moe else m.num_layers,
        norm_topk_prob=m.norm_topk_prob, scoring_func=m.scoring_func, aux_loss_alpha=m.seq_aux_loss_coeff,
        seq_aux=True, rope_scaling=dict(m.rope_scaling) if m.rope_scaling else None, rope_interleave=True,
        num_nextn_predict_layers=m.num_nextn_predict_layers)
    return {**cfg, **(extra or {})}


_DENSE_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "qwen3_moe": "Qwen3MoeForCausalLM"}
_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "llama", "mistral", "qwen2", "qwen3", "qwen3_moe")


def dense_family(m: ModelConfig) -> str:
    """The Hugging Face model_type a dense ModelConfig exports as: qwen3 (q/k norm), qwen2 (q/k/v biases), llama."""
    return "qwen3" if m.qk_norm else "qwen2" if m.qkv_bias else "llama"


def _dense_rope(rope: Optional[dict]) -> Optional[dict]:
    """Llama 3 RoPE scaling (the four keys), None for plain RoPE; other types are refused."""
    kind = (rope or {}).get("rope_type", (rope or {}).get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ConfigError("config.json:rope_scaling", f"rope type {kind!r} is not supported for dense models "
                          "(only llama3 or none)")
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in rope]
    if missing:
        raise ConfigError(f"config.json:rope_scaling.{missing[0]}", "missing (llama3 scaling needs "
                          f"{', '.join(LLAMA3_ROPE_KEYS)})")
    out = {"rope_type": "llama3", **{k: rope[k] for k in LLAMA3_ROPE_KEYS}}
    check_llama3_rope(out, "config.json:rope_scaling")
    return out


def _dense_attention(d: dict, mt: str) -> dict:
    """qkv_bias / qk_norm from a dense config.json; biases and windows Megatron cannot express are refused."""
    window = d.get("use_sliding_window") or (mt == "mistral" and d.get("sliding_window"))  # Qwen: off unless used
    if window or any(t != "full_attention" for t in d.get("layer_types") or ()):
        key = ("use_sliding_window" if d.get("use_sliding_window") else "sliding_window") if window else "layer_types"
        raise ConfigError(f"config.json:{key}", f"{d[key]!r}: sliding-window attention is not supported "
                          "(full causal attention only)")
    if mt == "qwen2":  # q/k/v biases always, no o_proj bias
        return dict(qkv_bias=True)
    if mt == "qwen3_moe" and d.get("qkv_bias"):
        raise ConfigError("config.json:qkv_bias", "true is not supported for qwen3_moe")
    if d.get("attention_bias") or d.get("mlp_bias"):
        key = "attention_bias" if d.get("attention_bias") else "mlp_bias"
        raise ConfigError(f"config.json:{key}", f"true is not supported for {mt} (the Megatron builder has no "
                          "o_proj/MLP biases; Qwen2's q/k/v biases come with model_type qwen2)")
    return dict(qk_norm=mt in ("qwen3", "qwen3_moe"))


def _get(d: dict, key: str, default=None, required: bool = True):
    if key in d:
        return d[key]
    if required and default is None:
        raise ConfigError(f"config.json:{key}", "missing")
    return default


def from_hf_config(d: dict, params_dtype: Optional[str] = None) -> ModelConfig:
    """A ModelConfig from a ``config.json`` dict (DeepSeek-V3 family or Llama-like dense)."""
    mt = d.get("model_type")
    if mt not in _MODEL_TYPES:  # before any other field: the architecture decides them
        raise ConfigError("config.json:model_type", f"{mt!r} is not supported ({', '.join(_MODEL_TYPES)})")
    dtype = params_dtype or _TORCH_DTYPES.get(str(d.get("torch_dtype", d.get("dtype"))), "float32")
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError("config.json:hidden_act", f"{d['hidden_act']!r} is not supported (only silu)")
    dense = mt not in ("deepseek_v2", "deepseek_v3")
    attention = _dense_attention(d, mt) if dense else {}
    if not dense and (d.get("attention_bias") or d.get("mlp_bias")):
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
    if mt == "qwen3_moe":
        m = ModelConfig(arch="qwen3_moe", **common, **attention, rope_scaling=_dense_rope(rope),
                        num_key_value_heads=d.get("num_key_value_heads"), head_dim=d.get("head_dim"),
                        num_nextn_predict_layers=0, **_qwen3_moe_routing(d, common["num_layers"]))
        m.validate()
        return m
    if dense:
        m = ModelConfig(arch="dense", **common, **attention, rope_scaling=_dense_rope(rope),
                        num_key_value_heads=d.get("num_key_value_heads"),
                        head_dim=d.get("head_dim"), n_routed_experts=0, first_k_dense_replace=common["num_layers"],
                        num_nextn_predict_layers=0)
        m.validate()
        return m
    if d.get("rope_interleave", True) is False:
        raise ConfigError("config.json:rope_interleave", "False is not supported (Megatron MLA and vLLM use interleaved rope)")
    if d.get("moe_layer_freq", 1) != 1:
        raise ConfigError("config.json:moe_layer_freq", f"{d['moe_layer_freq']} is not supported (only 1)")
    v2 = mt == "deepseek_v2"
    method = d.get("topk_method", "greedy" if v2 else "noaux_tc")
    if method not in (("greedy", "group_limited_greedy") if v2 else ("noaux_tc", "greedy", "group_limited_greedy")):
        raise ConfigError("config.json:topk_method", f"{method!r} is not supported for {mt}")
    if v2:
        _check_v2_routing(d)
    n_routed = d.get("n_routed_experts", d.get("num_experts")) or 0
    groups = (d.get("n_group") or 1) if method != "greedy" or not v2 else 1  # V2's greedy ignores the groups
    m = ModelConfig(
        arch="deepseek_v3", **common,
        q_lora_rank=d.get("q_lora_rank"), kv_lora_rank=_get(d, "kv_lora_rank"),
        qk_nope_head_dim=_get(d, "qk_nope_head_dim"), qk_rope_head_dim=_get(d, "qk_rope_head_dim"),
        v_head_dim=_get(d, "v_head_dim"), rope_scaling=_yarn(rope),
        first_k_dense_replace=d.get("first_k_dense_replace", 0) if n_routed else common["num_layers"],
        n_routed_experts=n_routed, n_shared_experts=d.get("n_shared_experts") or 0,
        moe_intermediate_size=d.get("moe_intermediate_size") or 1, num_experts_per_tok=d.get("num_experts_per_tok") or 1,
        scoring_func="softmax" if v2 else d.get("scoring_func", "sigmoid"),
        norm_topk_prob=False if v2 else bool(d.get("norm_topk_prob", True)),
        routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)), n_group=groups,
        topk_group=(d.get("topk_group") or 1) if groups > 1 else 1, expert_bias=method == "noaux_tc",
        seq_aux_loss_coeff=float(d.get("aux_loss_alpha", 0.0)),
        num_nextn_predict_layers=int(d.get("num_nextn_predict_layers", 0)))
    m.validate()
    _routing_note(m)
    return m


def _check_v2_routing(d: dict) -> None:
    """DeepSeek-V2 routing as transformers and vLLM both run it: softmax scores, top-k of them unnormalised, times
    routed_scaling_factor (transformers' DeepseekV2 never renormalises; vLLM would with norm_topk_prob)."""
    if d.get("scoring_func", "softmax") != "softmax":
        raise ConfigError("config.json:scoring_func", f"{d['scoring_func']!r} is not supported for deepseek_v2 "
                          "(its router is softmax; sigmoid routing is deepseek_v3)")
    if d.get("norm_topk_prob"):
        raise ConfigError("config.json:norm_topk_prob", "true is not supported for deepseek_v2 (transformers' "
                          "DeepseekV2 ignores it, vLLM renormalises: the two disagree)")
    k, g = d.get("num_experts_per_tok") or 1, d.get("topk_group") or 1
    if d.get("topk_method") == "group_limited_greedy" and (d.get("n_group") or 1) > 1 and k // g != 1:
        raise ConfigError("config.json:topk_group", f"{g} with num_experts_per_tok={k}: group_limited_greedy ranks a "
                          f"group by its best expert, Megatron-Core by the sum of its top-{k // g} "
                          "(num_experts_per_tok // topk_group); they pick different experts, so this routing is "
                          "refused (supported: num_experts_per_tok // topk_group == 1, or topk_method greedy)")


def _qwen3_moe_routing(d: dict, num_layers: int) -> dict:
    """Qwen3-MoE's experts: softmax top-k (renormalised with norm_topk_prob), no shared expert, no scaling; the MoE
    layers must be all layers after a dense prefix (mlp_only_layers = [0..k-1], decoder_sparse_step 1)."""
    n = d["num_experts"] if "num_experts" in d else _get(d, "num_local_experts")  # published / transformers 5 name
    step, dense = d.get("decoder_sparse_step", 1), sorted(d.get("mlp_only_layers") or [])
    moe = [i for i in range(num_layers) if i not in dense and n > 0 and (i + 1) % step == 0]
    k = num_layers - len(moe)
    if moe != list(range(k, num_layers)):
        key = "decoder_sparse_step" if step != 1 else "mlp_only_layers"
        raise ConfigError(f"config.json:{key}", f"{d.get(key)!r}: MoE layers {moe} are not all layers after a dense "
                          "prefix (the Megatron builder takes first_k_dense_replace only)")
    if d.get("shared_expert_intermediate_size"):
        raise ConfigError("config.json:shared_expert_intermediate_size", "a shared expert is not supported for qwen3_moe")
    return dict(n_routed_experts=n, num_experts_per_tok=_get(d, "num_experts_per_tok"),
                moe_intermediate_size=_get(d, "moe_intermediate_size"), first_k_dense_replace=k,
                norm_topk_prob=bool(d.get("norm_topk_prob", False)), scoring_func="softmax", n_shared_experts=0,
                expert_bias=False, routed_scaling_factor=1.0, n_group=1, topk_group=1,
                seq_aux_loss_coeff=float(d.get("router_aux_loss_coef", 0.0)), aux_loss_type="aux_loss")


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
