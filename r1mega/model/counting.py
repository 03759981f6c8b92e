"""Parameter counts from a ModelConfig alone (no model built): per layer, total and activated.

The counts follow the modules Megatron builds (and the Hugging Face checkpoint names): MLA
projections and their norms, dense SwiGLU or DeepSeekMoE (router + shared + routed experts),
embedding and output head (counted separately), final norm, and MTP layers (counted separately;
in Megatron they share the embedding and output head with the main model, the Hugging Face
checkpoint stores copies). The expert score bias is a buffer, not a parameter: reported apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from r1mega.config.model import ModelConfig


@dataclass
class LayerCount:
    index: int
    kind: str  # "dense" or "moe"
    attention: int
    norms: int
    mlp_total: int
    mlp_activated: int
    router: int = 0
    shared_experts: int = 0
    routed_expert: int = 0  # one routed expert
    routed_experts: int = 0  # all routed experts

    @property
    def total(self) -> int:
        return self.attention + self.norms + self.mlp_total

    @property
    def activated(self) -> int:
        return self.attention + self.norms + self.mlp_activated


@dataclass
class ModelCount:
    layers: list[LayerCount]
    embedding: int
    output_head: int
    final_norm: int
    mtp: int
    mtp_activated: int
    expert_bias_buffers: int
    extras: dict = field(default_factory=dict)

    @property
    def decoder(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def total(self) -> int:
        """All parameters of the main model (embedding and head included, MTP excluded)."""
        return self.embedding + self.decoder + self.final_norm + self.output_head

    @property
    def activated(self) -> int:
        """Parameters one token uses (embedding and head included, MTP excluded)."""
        return self.embedding + sum(layer.activated for layer in self.layers) + self.final_norm + self.output_head

    def summary(self) -> dict:
        return {"total": self.total, "activated": self.activated, "embedding": self.embedding,
                "output_head": self.output_head, "decoder": self.decoder, "final_norm": self.final_norm,
                "mtp": self.mtp, "mtp_activated": self.mtp_activated, "total_with_mtp": self.total + self.mtp,
                "activated_without_embedding": self.activated - self.embedding,
                "expert_bias_buffers": self.expert_bias_buffers}

    def to_dict(self) -> dict:
        layers = [{**asdict(l), "total": l.total, "activated": l.activated} for l in self.layers]
        return {**self.summary(), "layers": layers}


def attention_params(m: ModelConfig) -> tuple[int, int]:
    """(projection params, attention-internal norm params) of one attention block."""
    h, nh = m.hidden_size, m.num_attention_heads
    if not m.mla:
        hd = m.head_dim or h // nh
        kv = m.num_key_value_heads or nh
        bias = (nh + 2 * kv) * hd if m.qkv_bias else 0  # Qwen2's q/k/v biases
        return h * (nh + 2 * kv) * hd + bias + nh * hd * h, 2 * hd if m.qk_norm else 0  # Qwen3's q/k norms
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    if m.q_lora_rank:
        q, q_norm = h * m.q_lora_rank + m.q_lora_rank * nh * qk, m.q_lora_rank
    else:
        q, q_norm = h * nh * qk, 0
    kv_down = h * (m.kv_lora_rank + m.qk_rope_head_dim)
    kv_up = m.kv_lora_rank * nh * (m.qk_nope_head_dim + m.v_head_dim)
    out = nh * m.v_head_dim * h
    return q + kv_down + kv_up + out, q_norm + m.kv_lora_rank


def _swiglu(h: int, i: int) -> int:
    return 3 * h * i


def layer_count(m: ModelConfig, index: int, kind: str) -> LayerCount:
    attn, attn_norms = attention_params(m)
    norms = 2 * m.hidden_size + attn_norms
    h = m.hidden_size
    if kind == "dense":
        mlp = _swiglu(h, m.intermediate_size)
        return LayerCount(index, kind, attn, norms, mlp, mlp)
    router = m.n_routed_experts * h
    shared = _swiglu(h, m.n_shared_experts * m.moe_intermediate_size) if m.n_shared_experts else 0
    one = _swiglu(h, m.moe_intermediate_size)
    routed = m.n_routed_experts * one
    return LayerCount(index, kind, attn, norms, router + shared + routed,
                      router + shared + m.num_experts_per_tok * one,
                      router=router, shared_experts=shared, routed_expert=one, routed_experts=routed)


def count_parameters(m: ModelConfig, vocab_size: int | None = None) -> ModelCount:
    """Counts for ``m``; ``vocab_size`` overrides the vocabulary (e.g. the TP-padded one)."""
    v = vocab_size or m.vocab_size
    h = m.hidden_size
    layers = [layer_count(m, i, kind) for i, kind in enumerate(m.layer_kinds())]
    embedding = v * h
    head = 0 if m.tie_word_embeddings else v * h
    mtp = mtp_act = 0
    if m.num_nextn_predict_layers:
        last = layers[-1]
        # enorm + hnorm + eh_proj (2h -> h) + one transformer layer + its final norm
        per = 2 * h + 2 * h * h + h
        mtp = m.num_nextn_predict_layers * (per + last.total)
        mtp_act = m.num_nextn_predict_layers * (per + last.activated)
    bias = 0
    if m.is_moe and m.expert_bias:
        moe_layers = sum(1 for l in layers if l.kind == "moe")
        if m.num_nextn_predict_layers and layers[-1].kind == "moe":
            moe_layers += m.num_nextn_predict_layers
        bias = moe_layers * m.n_routed_experts
    return ModelCount(layers, embedding, head, h, mtp, mtp_act, bias)
