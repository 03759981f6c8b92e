"""Model architecture: a DeepSeek-V3-style MoE (or dense) GPT built on Megatron-Core.

Field names follow the Hugging Face ``DeepseekV3Config`` where one exists, so presets read like
the published ``config.json`` files; ``r1mega/model/builder.py`` maps them to Megatron's
``MLATransformerConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import ConfigError, check, check_choice, check_positive, doc


@dataclass
class ModelConfig:
    preset: Optional[str] = doc(None, "Name of the preset these values came from (informational; set by presets).")
    hf_config: Optional[str] = doc(None, "A Hugging Face config.json (or its directory): the model fields come from it, other model.* keys apply on top (r1mega/config/model_source.py). Without a preset or hf_config, a stage whose init_from is a checkpoint takes that checkpoint's model.")
    arch: str = doc("deepseek_v3", "Architecture family: 'deepseek_v3' (MLA + DeepSeekMoE; DeepSeek-V2 with scoring_func softmax), 'dense' (GQA + SwiGLU, distillation students) or 'qwen3_moe' (GQA with q/k norms + softmax-routed experts, no shared expert).")
    vocab_size: int = doc(512, "Vocabulary size (the tokenizer's size; padded for TP by the builder).")
    hidden_size: int = doc(128, "Model width.")
    num_layers: int = doc(4, "Transformer layers (MTP layers not included).")
    intermediate_size: int = doc(256, "FFN hidden size of dense layers (the first_k_dense_replace layers, or all layers when dense).")
    num_attention_heads: int = doc(4, "Attention heads.")
    num_key_value_heads: Optional[int] = doc(None, "KV heads for GQA attention (dense, qwen3_moe; None = num_attention_heads). Ignored by MLA.")
    head_dim: Optional[int] = doc(None, "Head size for GQA attention (dense, qwen3_moe; None = hidden_size / heads). Ignored by MLA.")
    qkv_bias: bool = doc(False, "Dense attention: biases on the q/k/v projections, none on the output projection (Qwen2 / Qwen2.5; exports as Qwen2ForCausalLM).")
    qk_norm: bool = doc(False, "GQA attention: per-head RMSNorm on queries and keys before RoPE (Qwen3, exports as Qwen3ForCausalLM; always on for qwen3_moe).")
    max_position_embeddings: int = doc(1024, "Longest sequence the RoPE tables are built for.")
    rms_norm_eps: float = doc(1e-6, "RMSNorm epsilon.")
    tie_word_embeddings: bool = doc(False, "Share input embedding and output layer weights.")
    init_std: float = doc(0.02, "Std of the normal weight initialisation.")
    # Multi-latent attention
    q_lora_rank: Optional[int] = doc(None, "Query low-rank dimension (None = full-rank q projection, as DeepSeek-V2-Lite).")
    kv_lora_rank: int = doc(64, "Compressed KV latent dimension.")
    qk_nope_head_dim: int = doc(32, "Per-head query/key dimension without RoPE.")
    qk_rope_head_dim: int = doc(32, "Per-head query/key dimension carrying RoPE (shared across heads for keys).")
    v_head_dim: int = doc(32, "Per-head value dimension.")
    rope_theta: float = doc(10000.0, "RoPE base.")
    rope_scaling: Optional[dict] = doc(None, "RoPE scaling, as in HF config; None = plain RoPE. MLA: YaRN {type: yarn, factor, original_max_position_embeddings, beta_fast, beta_slow, mscale, mscale_all_dim}; dense: Llama 3 {rope_type: llama3, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}.")
    # DeepSeekMoE
    first_k_dense_replace: int = doc(1, "The first k layers use a dense FFN; the rest are MoE.")
    n_routed_experts: int = doc(8, "Routed experts per MoE layer (0 = dense model).")
    n_shared_experts: int = doc(1, "Shared experts per MoE layer (always active).")
    moe_intermediate_size: int = doc(64, "FFN hidden size of each routed expert (shared experts use n_shared_experts x this).")
    num_experts_per_tok: int = doc(2, "Routed experts each token is sent to (top-k).")
    scoring_func: str = doc("sigmoid", "Router score function: 'sigmoid' (V3) or 'softmax' (V2).")
    norm_topk_prob: bool = doc(True, "Renormalise the top-k routing weights to sum to 1 (softmax: Megatron's softmax over the top-k logits; off: top-k of the full softmax, as DeepSeek-V2).")
    routed_scaling_factor: float = doc(2.5, "Multiplier on routed expert outputs.")
    n_group: Optional[int] = doc(2, "Expert groups for group-limited routing (None/1 = no grouping).")
    topk_group: Optional[int] = doc(1, "Groups each token may route into.")
    expert_bias: bool = doc(True, "Aux-loss-free load balancing: per-expert score bias ('e_score_correction_bias') updated from load.")
    expert_bias_update_rate: float = doc(1e-3, "Step size of the expert-bias update (gamma in the V3 paper).")
    seq_aux_loss_coeff: float = doc(1e-4, "Coefficient of the balance loss (alpha; 0 = off); which loss: aux_loss_type.")
    aux_loss_type: str = doc("seq_aux_loss", "Balance loss: 'seq_aux_loss' (per sequence, DeepSeek-V2/V3) or 'aux_loss' (per micro-batch, Qwen3-MoE's router_aux_loss_coef).")
    # Multi-token prediction
    num_nextn_predict_layers: int = doc(1, "Multi-token-prediction depth (0 = off).")
    mtp_loss_scaling_factor: float = doc(0.1, "Weight of the MTP loss (lambda).")
    # Precision (FP8 applies only with Transformer Engine on CUDA)
    params_dtype: str = doc("float32", "Parameter dtype: float32 (CPU default, parity tests) or bfloat16 (GPU training).")
    fp8: Optional[str] = doc(None, "FP8 format when TE+CUDA are present: None, 'e4m3' or 'hybrid'.")
    fp8_recipe: str = doc("blockwise", "FP8 scaling recipe: 'delayed', 'tensorwise', 'blockwise' (DeepSeek-V3 style 128x128) or 'mxfp8'.")
    fp8_margin: int = doc(0, "FP8 scaling margin (delayed recipe).")
    fp8_bf16_first_layers: int = doc(1, "Keep this many first layers in BF16 under FP8.")
    fp8_bf16_last_layers: int = doc(1, "Keep this many last layers in BF16 under FP8.")

    @classmethod
    def from_preset(cls, name: str, where: str = "model.preset") -> "ModelConfig":
        """The preset's ModelConfig (r1mega.model.presets); config keys given beside it apply on top."""
        try:
            from r1mega.model.presets import get_preset
        except ImportError as e:
            raise ConfigError(where, f"cannot load preset {name!r}: model presets are unavailable ({e})") from None
        try:
            return get_preset(name)
        except ConfigError as e:
            raise ConfigError(where, e.message) from None
        except (KeyError, ValueError) as e:
            raise ConfigError(where, f"unknown preset {name!r} ({e})") from None

    @property
    def is_moe(self) -> bool:
        return self.arch in ("deepseek_v3", "qwen3_moe") and self.n_routed_experts > 0

    @property
    def mla(self) -> bool:
        """Multi-latent attention (deepseek_v3); GQA attention otherwise (dense, qwen3_moe)."""
        return self.arch == "deepseek_v3"

    @property
    def num_moe_layers(self) -> int:
        return max(0, self.num_layers - self.first_k_dense_replace) if self.is_moe else 0

    def layer_kinds(self) -> list[str]:
        return ["moe" if self.is_moe and i >= self.first_k_dense_replace else "dense" for i in range(self.num_layers)]

    def validate(self, where: str = "model") -> None:
        check_choice(self.arch, ("deepseek_v3", "dense", "qwen3_moe"), f"{where}.arch")
        for name in ("vocab_size", "hidden_size", "num_layers", "intermediate_size", "num_attention_heads", "max_position_embeddings"):
            check_positive(getattr(self, name), f"{where}.{name}")
        check_choice(self.params_dtype, ("float32", "bfloat16", "float16"), f"{where}.params_dtype")
        check_choice(self.fp8, (None, "e4m3", "hybrid"), f"{where}.fp8")
        check_choice(self.fp8_recipe, ("delayed", "tensorwise", "blockwise", "mxfp8"), f"{where}.fp8_recipe")
        if not self.mla:
            check(not (self.qkv_bias and self.qk_norm), f"{where}.qk_norm",
                  "qkv_bias (Qwen2) and qk_norm (Qwen3) together match no supported Hugging Face architecture")
            if self.rope_scaling is not None:
                check_llama3_rope(self.rope_scaling, f"{where}.rope_scaling")
            kv = self.num_key_value_heads or self.num_attention_heads
            check(self.num_attention_heads % kv == 0, f"{where}.num_key_value_heads",
                  f"{kv} does not divide num_attention_heads={self.num_attention_heads}")
            if self.head_dim is None:
                check(self.hidden_size % self.num_attention_heads == 0, f"{where}.num_attention_heads",
                      f"{self.num_attention_heads} does not divide hidden_size={self.hidden_size}; set head_dim")
            if self.arch == "dense":
                return
            self._validate_qwen3_moe(where)
        else:
            self._validate_mla(where)
        if self.n_routed_experts == 0:
            return
        self._validate_routing(where)

    def _validate_qwen3_moe(self, where: str) -> None:
        """Qwen3-MoE: q/k norms, softmax top-k routing, no shared expert, no expert bias, no groups, no scaling."""
        check(self.qk_norm, f"{where}.qk_norm", "must be true for qwen3_moe (Qwen3-MoE has per-head q/k norms)")
        check_positive(self.n_routed_experts, f"{where}.n_routed_experts")
        for name, want in (("scoring_func", "softmax"), ("n_shared_experts", 0), ("expert_bias", False),
                           ("routed_scaling_factor", 1.0), ("num_nextn_predict_layers", 0)):
            check(getattr(self, name) == want, f"{where}.{name}", f"got {getattr(self, name)!r}, expected {want!r} "
                  "for qwen3_moe (Qwen3MoeForCausalLM has no other)")
        check((self.n_group or 1) == 1, f"{where}.n_group", f"got {self.n_group}, expected 1 for qwen3_moe (no group-limited routing)")
        check(0 <= self.first_k_dense_replace <= self.num_layers, f"{where}.first_k_dense_replace",
              f"got {self.first_k_dense_replace}, expected 0..num_layers={self.num_layers}")

    def _validate_mla(self, where: str) -> None:
        for name in ("qkv_bias", "qk_norm"):
            check(not getattr(self, name), f"{where}.{name}", "is for dense attention (arch: dense); MLA has no such option")
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            check_positive(getattr(self, name), f"{where}.{name}")
        if self.q_lora_rank is not None:
            check_positive(self.q_lora_rank, f"{where}.q_lora_rank")
        if self.rope_scaling is not None:
            check(isinstance(self.rope_scaling, dict) and self.rope_scaling.get("type", self.rope_scaling.get("rope_type")) == "yarn",
                  f"{where}.rope_scaling", f"got {self.rope_scaling!r}, expected None or a dict with type: yarn")
            check_positive(self.rope_scaling.get("factor", 0), f"{where}.rope_scaling.factor")
        check(0 <= self.first_k_dense_replace <= self.num_layers, f"{where}.first_k_dense_replace",
              f"got {self.first_k_dense_replace}, expected 0..num_layers={self.num_layers}")
        check(self.num_nextn_predict_layers >= 0, f"{where}.num_nextn_predict_layers", "must be >= 0")

    def _validate_routing(self, where: str) -> None:
        check_choice(self.aux_loss_type, ("seq_aux_loss", "aux_loss"), f"{where}.aux_loss_type")
        check_choice(self.scoring_func, ("sigmoid", "softmax"), f"{where}.scoring_func")
        check_positive(self.moe_intermediate_size, f"{where}.moe_intermediate_size")
        check(1 <= self.num_experts_per_tok <= self.n_routed_experts, f"{where}.num_experts_per_tok",
              f"got {self.num_experts_per_tok}, expected 1..n_routed_experts={self.n_routed_experts}")
        if self.expert_bias:
            check(self.scoring_func == "sigmoid", f"{where}.expert_bias", "the aux-loss-free expert bias needs scoring_func='sigmoid'")
        check(not (self.mla and self.scoring_func == "softmax" and self.norm_topk_prob), f"{where}.norm_topk_prob",
              "true with scoring_func='softmax' on MLA matches no Hugging Face architecture (DeepSeek-V2 takes the "
              "top-k of the full softmax unnormalised: norm_topk_prob false)")
        groups = self.n_group or 1
        if groups > 1:
            check(self.n_routed_experts % groups == 0, f"{where}.n_group",
                  f"{groups} groups do not divide n_routed_experts={self.n_routed_experts}")
            check(self.topk_group is not None and 1 <= self.topk_group <= groups, f"{where}.topk_group",
                  f"got {self.topk_group}, expected 1..n_group={groups}")
            per_group = self.n_routed_experts // groups
            check(self.num_experts_per_tok <= self.topk_group * per_group, f"{where}.num_experts_per_tok",
                  f"top-{self.num_experts_per_tok} cannot be chosen from {self.topk_group} groups of {per_group} experts")
            # Megatron ranks groups by the sum of their top-(topk // topk_group) scores; DeepSeek-V2 (transformers,
            # vLLM: softmax, no expert bias) by the best expert of each group. They agree only when that is top-1.
            check(self.scoring_func != "softmax" or self.num_experts_per_tok // self.topk_group == 1,
                  f"{where}.topk_group", f"group-limited softmax routing (DeepSeek-V2) ranks a group by its best expert, "
                  f"Megatron by the sum of its top-(num_experts_per_tok // topk_group) = top-"
                  f"{self.num_experts_per_tok // self.topk_group}: they pick different experts; supported only when "
                  f"num_experts_per_tok // topk_group == 1 (got {self.num_experts_per_tok} // {self.topk_group})")
            check(not (self.scoring_func == "softmax" and self.norm_topk_prob), f"{where}.norm_topk_prob",
                  "true with group-limited softmax routing is not supported (Megatron would rank groups by raw logits)")


LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_llama3_rope(rope, where: str) -> None:
    """Dense models take Llama 3 RoPE scaling only (the frequency bands of Llama 3.1/3.2/3.3)."""
    kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    check(kind == "llama3", where, f"got {rope!r}, expected None or a dict with rope_type: llama3 (dense models)")
    for key in LLAMA3_ROPE_KEYS:
        check(isinstance(rope.get(key), (int, float)) and not isinstance(rope.get(key), bool) and rope[key] > 0,
              f"{where}.{key}", f"got {rope.get(key)!r}, expected a positive number")
    check(rope["high_freq_factor"] > rope["low_freq_factor"], f"{where}.high_freq_factor",
          f"got {rope['high_freq_factor']}, expected more than low_freq_factor={rope['low_freq_factor']}")
