"""The vLLM engine's memory per GPU in a colocated GRPO step: its weights at the rollout TP, the KV cache of
the concurrent sequences, its workspace; vLLM's rule for a rollout TP and the automatic choice
(docs/planner.md "Generation engine"). Notation as in :mod:`.memory`."""
from __future__ import annotations

from dataclasses import dataclass

from r1mega.config.model import ModelConfig

from .inputs import GIB, PlanInputs
from .memory import counts, gqa_kv_params, has_dense_layers, mla_latent_down_params

def kv_bytes_per_token_layer(m: ModelConfig, rollout_tp: int = 1, kv_bytes: int = 2) -> float:
    """KV cache per token per layer on one GPU. MLA caches the latent (kv_lora_rank) and the
    shared RoPE key (qk_rope_head_dim), replicated on every TP rank (one latent 'head').
    Dense GQA caches K and V of its KV heads, split over TP (replicated once TP > KV heads)."""
    if not m.mla:
        nh = m.num_attention_heads
        hd = m.head_dim or m.hidden_size // nh
        kv = m.num_key_value_heads or nh
        return 2 * kv * hd * kv_bytes / min(rollout_tp, kv)
    return (m.kv_lora_rank + m.qk_rope_head_dim) * kv_bytes


@dataclass
class GenMemory:
    rollout_tp: int
    engines: int
    seqs_per_engine: int
    concurrency: int
    waves: int
    weights: float                  # bytes per GPU
    expert_weights: float           # the routed-expert part of ``weights``
    kv_cache: float
    workspace: float
    kv_per_token: float             # all layers, one GPU

    def to_dict(self) -> dict:
        return {"rollout_tp": self.rollout_tp, "engines": self.engines, "seqs_per_engine": self.seqs_per_engine,
                "concurrency": self.concurrency, "waves": self.waves,
                "weights_gib": self.weights / GIB, "kv_cache_gib": self.kv_cache / GIB,
                "workspace_gib": self.workspace / GIB, "kv_bytes_per_token": self.kv_per_token}


def gen_memory(inp: PlanInputs, rollout_tp: int) -> GenMemory:
    """vLLM weights at the rollout TP + KV cache of the concurrent sequences + forward workspace.

    weights  = (total - replicated - kv) / rollout_TP + replicated + kv / min(rollout_TP, n_kv), at
               2 bytes (1 with FP8); MTP is not loaded (no speculative decoding). Replicated: norms
               (Qwen3's q/k norms included), router, MLA latent down-projections; kv = the GQA K/V
               projections, whose heads vLLM replicates once rollout_TP > n_kv. With expert
               parallelism (rollout_ep) vLLM spreads whole experts over the same ranks instead of
               slicing each one: the same bytes per GPU.
    kv_cache = concurrency * seq_len (rounded up to 16-token blocks) * L * kv_bytes_per_token_layer
    workspace = 2 * C * (6h + k*h + 3*max(I, (k + shared)*I_e) / rollout_TP) + 4 * concurrency * V
               (C = max_num_batched_tokens: hidden-size buffers, fused-MoE intermediates,
               full-vocabulary fp32 logits of the sampler; I only when the model has dense layers)."""
    m = inp.model
    c = counts(m)
    wb = 1 if inp.fp8 else 2
    n_moe = sum(1 for l in c.layers if l.kind == "moe")
    router = sum(l.router for l in c.layers)
    replicated = sum(l.norms for l in c.layers) + len(c.layers) * mla_latent_down_params(m) + router + c.final_norm
    kv_proj = len(c.layers) * gqa_kv_params(m)
    sharded = c.total - replicated - kv_proj
    experts = sum(l.routed_experts for l in c.layers)
    n_kv = 1 if m.mla else (m.num_key_value_heads or m.num_attention_heads)
    weights = wb * (sharded / rollout_tp + replicated + kv_proj / min(rollout_tp, n_kv))
    expert_weights = wb * experts / rollout_tp
    engines = max(1, inp.gpus // rollout_tp)
    per_engine = -(-inp.rollouts // engines)
    conc = min(per_engine, inp.max_num_seqs)
    waves = -(-per_engine // conc)
    kvb = 1 if inp.kv_cache_dtype == "fp8" else 2
    per_tok = kv_bytes_per_token_layer(m, rollout_tp, kvb) * m.num_layers
    seq_blocks = -(-inp.seq_len // 16) * 16
    kv = conc * seq_blocks * per_tok
    h, k = m.hidden_size, (m.num_experts_per_tok if m.is_moe else 0)
    ffn = max(m.intermediate_size if has_dense_layers(m) else 0,
              (k + (m.n_shared_experts if m.is_moe else 0)) * m.moe_intermediate_size)
    chunk = min(inp.max_num_batched_tokens, conc * inp.seq_len)
    workspace = 2 * chunk * (6 * h + k * h + 3 * ffn / rollout_tp) + 4 * conc * m.vocab_size
    return GenMemory(rollout_tp, engines, per_engine, conc, waves, weights, expert_weights, kv, workspace, per_tok)


def rollout_tp_error(m: ModelConfig, rollout_tp: int) -> str | None:
    """vLLM's rule for a TP size: it divides the attention heads, and for GQA the KV heads divide
    it or it divides them (KV heads are split, or each replicated on rollout_TP / n_kv ranks)."""
    if m.num_attention_heads % rollout_tp:
        return f"attention heads {m.num_attention_heads} % rollout TP {rollout_tp} != 0"
    if not m.mla:
        kv = m.num_key_value_heads or m.num_attention_heads
        if kv % rollout_tp and rollout_tp % kv:
            return f"KV heads {kv} and rollout TP {rollout_tp}: neither divides the other"
    return None


def auto_rollout_tp(inp: PlanInputs) -> int:
    """Smallest power-of-two rollout TP (dividing the GPU count, valid for vLLM) whose engine
    (weights + KV + workspace + reserve) fits one GPU; the largest valid one if none fits."""
    m = inp.model
    cands = [t for t in (2 ** i for i in range(0, 12)) if t <= inp.gpus and inp.gpus % t == 0
             and rollout_tp_error(m, t) is None]
    for t in cands:
        g = gen_memory(inp, t)
        if g.weights + g.kv_cache + g.workspace + inp.reserve_gib * GIB <= inp.mem_gib * GIB:
            return t
    return cands[-1] if cands else 1
