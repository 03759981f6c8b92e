"""Per-GPU memory of a colocated GRPO step: Megatron trainer + vLLM engine on the same GPUs.

All results are bytes per GPU. Parameter counts come from ``r1mega.model.counting``; this module
only decides which GPU holds which share and how many bytes each share costs. Every formula is
written out in docs/planner.md (sections named in the comments below).

Notation: h hidden, V vocabulary (padded to a multiple of 128*TP as Megatron does), L layers,
t = TP, T = micro_batch * seq_len / CP tokens of one microbatch on one CP rank, a = 2 bytes of a
BF16 activation, g = bytes of an activation saved as a GEMM input (1 under FP8, else 2),
k = experts per token, E = routed experts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from r1mega.config.model import ModelConfig
from r1mega.model.counting import LayerCount, ModelCount, count_parameters

from .inputs import GIB, Layout, PlanInputs

if TYPE_CHECKING:
    from .generation import GenMemory

ACT_BYTES = 2  # BF16 activations


# --------------------------------------------------------------------------------------------
# Parameters per GPU  (docs/planner.md "Parameters per GPU")
# --------------------------------------------------------------------------------------------

def padded_vocab(vocab: int, tp: int, multiple: int = 128) -> int:
    """Megatron pads the vocabulary to a multiple of make_vocab_size_divisible_by (128) * TP."""
    step = multiple * tp
    return -(-vocab // step) * step


def mla_latent_down_params(m: ModelConfig) -> int:
    """Parameters of the MLA down-projections (q_down h x q_lora, kv_down h x (kv_lora + rope)).

    Megatron builds them 'duplicated' (replicated on every TP rank), vLLM as ReplicatedLinear."""
    if not m.mla:
        return 0
    return m.hidden_size * ((m.q_lora_rank or 0) + m.kv_lora_rank + m.qk_rope_head_dim)


@dataclass(frozen=True)
class LayerShare:
    """One decoder layer's parameters held by one GPU: non-expert ('dense') and routed-expert."""
    dense: float
    expert: float


def layer_share(m: ModelConfig, layer: LayerCount, tp: int, ep: int, etp: int) -> LayerShare:
    """TP-sharded: attention projections except the latent down-projections, dense FFN, shared
    experts. Replicated over TP: norms, latent down-projections, router. Routed experts: split
    over EP (whole experts) and ETP (each expert's FFN)."""
    latent = mla_latent_down_params(m)
    dense = (layer.attention - latent) / tp + latent + layer.norms
    if layer.kind == "dense":
        return LayerShare(dense + layer.mlp_total / tp, 0.0)
    return LayerShare(dense + layer.router + layer.shared_experts / tp, layer.routed_experts / (ep * etp))


_COUNT_CACHE: dict = {}


def counts(m: ModelConfig, vocab: int | None = None) -> ModelCount:
    """count_parameters(m, vocab), memoised on the config's values (the search asks often)."""
    key = (repr(m), vocab or m.vocab_size)
    if key not in _COUNT_CACHE:
        if len(_COUNT_CACHE) > 256:
            _COUNT_CACHE.clear()
        _COUNT_CACHE[key] = count_parameters(m, vocab_size=vocab)
    return _COUNT_CACHE[key]


def mtp_extra_params(m: ModelConfig, c: ModelCount) -> tuple[float, float]:
    """(eh_proj params, norm params) of the MTP modules beyond their transformer layers:
    eh_proj is 2h -> h (TP-sharded), the norms (enorm, hnorm, final) are replicated."""
    n = m.num_nextn_predict_layers
    if not n:
        return 0.0, 0.0
    extra = c.mtp - n * c.layers[-1].total
    eh = n * 2 * m.hidden_size * m.hidden_size
    return float(eh), float(extra - eh)


def gqa_kv_params(m: ModelConfig) -> int:
    """Parameters of one GQA layer's K and V projections (weights + Qwen2's biases): 2 * kv * d * (h + bias).
    0 for MLA."""
    if m.mla:
        return 0
    hd = m.head_dim or m.hidden_size // m.num_attention_heads
    kv = m.num_key_value_heads or m.num_attention_heads
    return 2 * kv * hd * (m.hidden_size + (1 if m.qkv_bias else 0))


def has_dense_layers(m: ModelConfig) -> bool:
    """Whether any decoder layer has a dense FFN (qwen3_moe has none: its intermediate_size is unused)."""
    return "dense" in m.layer_kinds()


# --------------------------------------------------------------------------------------------
# Activations  (docs/planner.md "Activations")
# --------------------------------------------------------------------------------------------

# Tags of saved tensors that each recompute mode drops. "selective" follows Megatron-Core's
# recompute_modules = [core_attn, layernorm, mla_up_proj, moe_act] (core_attn is a no-op with
# flash attention, which never stores the s x s scores).
_SELECTIVE_DROPS = {"ln_out", "mla_up", "moe_act"}


def _attention_tensors(m: ModelConfig, T: float, t: int, a: float, g: float) -> list[tuple[float, str]]:
    h, nh = m.hidden_size, m.num_attention_heads
    out = [(a * T / t * h, "keep"),          # input_layernorm input (sequence-parallel shard)
           (g * T / t * h, "ln_out")]        # its output: input of the first GEMMs
    if not m.mla:
        hd = m.head_dim or h // nh
        kv = m.num_key_value_heads or nh
        if m.qk_norm:                                       # Qwen3: per-head q/k RMSNorm inputs
            out.append((a * T * (nh + kv) * hd / t, "keep"))
        out += [(a * T * (nh + 2 * kv) * hd / t, "keep"),   # q, k, v (flash-attention inputs)
                (g * T * nh * hd / t, "keep"),              # attention output = out-proj input
                (4 * T * nh / t, "keep")]                   # softmax log-sum-exp (fp32)
        return out
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    if m.q_lora_rank:
        out += [(a * T / t * m.q_lora_rank, "keep"),          # q latent (q_layernorm input)
                (g * T / t * m.q_lora_rank, "keep")]          # normed q latent = q_up input
    out += [(a * T / t * (m.kv_lora_rank + m.qk_rope_head_dim), "keep"),  # kv latent + rope key
            (g * T / t * m.kv_lora_rank, "keep"),                         # normed kv latent = kv_up input
            (a * T * nh / t * (2 * qk + m.v_head_dim), "mla_up"),         # q, k, v after up-proj + RoPE
            (g * T * nh / t * m.v_head_dim, "keep"),                      # attention output = out-proj input
            (4 * T * nh / t, "keep")]                                     # softmax log-sum-exp (fp32)
    return out


def _dense_mlp_tensors(h: int, inter: int, T: float, t: int, a: float, g: float) -> list[tuple[float, str]]:
    return [(a * T / t * h, "keep"),            # pre_mlp_layernorm input
            (g * T / t * h, "ln_out"),          # its output = fc1 input
            (a * T * 2 * inter / t, "keep"),    # fc1 output (gate and up) = SwiGLU input
            (g * T * inter / t, "keep")]        # SwiGLU output = fc2 input


def routed_tokens(m: ModelConfig, T: float, t: int, etp: int) -> float:
    """Token copies one GPU's routed experts process per microbatch, balanced routing:
    each rank routes its T/t sequence-parallel tokens to k experts; an expert-TP group of ETP
    ranks all see the tokens of the group, so n = ETP * k * T / t."""
    return etp * m.num_experts_per_tok * T / t


def _moe_tensors(m: ModelConfig, T: float, t: int, etp: int, a: float, g: float) -> list[tuple[float, str]]:
    h, E, ie = m.hidden_size, m.n_routed_experts, m.moe_intermediate_size
    n = routed_tokens(m, T, t, etp)
    out = [(a * T / t * h, "keep"),             # pre_mlp_layernorm input
           (g * T / t * h, "ln_out"),           # its output: router, shared-expert and dispatch input
           (8 * T / t * E, "keep")]             # router logits + scores (fp32)
    if m.n_shared_experts:
        i_s = m.n_shared_experts * ie
        out += [(a * T * 2 * i_s / t, "keep"), (g * T * i_s / t, "keep")]
    out += [(g * n * h, "keep"),                # dispatched tokens = expert fc1 input
            (a * n * 2 * ie / etp, "keep"),     # expert fc1 output
            (g * n * ie / etp, "moe_act"),      # expert SwiGLU output = fc2 input
            (a * n * h, "keep")]                # expert fc2 output (probability-weighted combine)
    return out


def layer_tensors(m: ModelConfig, kind: str, T: float, t: int, etp: int, g: float) -> list[tuple[float, str]]:
    a = ACT_BYTES
    att = _attention_tensors(m, T, t, a, g)
    if kind == "dense":
        return att + _dense_mlp_tensors(m.hidden_size, m.intermediate_size, T, t, a, g)
    return att + _moe_tensors(m, T, t, etp, a, g)


def layer_activation(m: ModelConfig, kind: str, T: float, t: int, etp: int, g: float, mode: str) -> tuple[float, float]:
    """(bytes saved per in-flight microbatch, bytes of the layer's full set for one microbatch)."""
    tensors = layer_tensors(m, kind, T, t, etp, g)
    full = sum(b for b, _ in tensors)
    if mode == "none":
        return full, full
    if mode == "selective":
        return sum(b for b, tag in tensors if tag not in _SELECTIVE_DROPS), full
    return ACT_BYTES * T / t * m.hidden_size, full  # full: only the layer input is checkpointed


def dispatch_buffer(m: ModelConfig, T: float, t: int, etp: int, g: float) -> float:
    """MoE dispatch transient: the permuted send buffer and the all-to-all receive buffer,
    each (routed token copies) x h: 2 * g * n * h, one layer at a time."""
    if not m.is_moe:
        return 0.0
    return 2 * g * routed_tokens(m, T, t, etp) * m.hidden_size


# --------------------------------------------------------------------------------------------
# Trainer stages and the three phases  (docs/planner.md "Trainer state", "Phases")
# --------------------------------------------------------------------------------------------

@dataclass
class StageMemory:
    index: int
    layers: int
    dense_layers: int
    moe_layers: int
    mtp_layers: int
    has_embedding: bool
    has_head: bool
    in_flight: int
    params_dense: float             # per GPU, non-expert
    params_expert: float            # per GPU, routed experts
    flops_params: float             # activated parameters of the stage's GEMMs (whole model, not per GPU)
    flops_expert: float             # the routed-expert part of flops_params
    terms: dict = field(default_factory=dict)     # bytes per GPU
    phases: dict = field(default_factory=dict)    # phase -> {term: bytes}
    host: float = 0.0               # bytes this GPU parks in host RAM at the worst moment

    def phase_total(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_total)

    @property
    def peak(self) -> float:
        return self.phase_total(self.peak_phase)

    def to_dict(self) -> dict:
        return {"index": self.index, "layers": self.layers, "dense_layers": self.dense_layers,
                "moe_layers": self.moe_layers, "mtp_layers": self.mtp_layers,
                "embedding": self.has_embedding, "head": self.has_head, "in_flight": self.in_flight,
                "params_dense": self.params_dense, "params_expert": self.params_expert,
                "terms_gib": {k: v / GIB for k, v in self.terms.items()},
                "phases_gib": {p: {k: v / GIB for k, v in t.items()} for p, t in self.phases.items()},
                "phase_totals_gib": {p: self.phase_total(p) / GIB for p in self.phases},
                "peak_phase": self.peak_phase, "peak_gib": self.peak / GIB, "host_gib": self.host / GIB}


def bytes_per_param(inp: PlanInputs) -> tuple[int, int, int]:
    """(weight, main grad, optimizer) bytes per parameter.

    weight: 2 (bf16) or 4 (fp32); FP8 training keeps this (TE holds bf16 weights, or fp8 weights
    plus their fp8 transpose). grad: Megatron DDP main grads, 4 (fp32, default) or 2 (bf16).
    optimizer: Adam = fp32 master copy (4, none when params are fp32) + two fp32 moments (8)."""
    w = 4 if inp.param_dtype == "fp32" else 2
    gr = 2 if inp.grad_dtype == "bf16" and inp.param_dtype != "fp32" else 4
    o = 8 if inp.param_dtype == "fp32" else 12
    return w, gr, o


def microbatches(inp: PlanInputs, layout: Layout) -> int:
    """Microbatches per DP rank per optimizer step: (rollouts / minibatches) / (DP * micro_batch)."""
    return max(1, inp.minibatch_seqs // (layout.dp(inp.gpus) * inp.micro_batch))


def stage_memories(inp: PlanInputs, layout: Layout, gen: GenMemory) -> list[StageMemory]:
    m = inp.model
    world = inp.gpus
    t, pp, cp = layout.tp, layout.pp, layout.cp
    V = padded_vocab(m.vocab_size, t)
    c = counts(m, V)
    kinds = {l.kind: l for l in c.layers}
    share = {k: layer_share(m, l, t, layout.ep, layout.etp) for k, l in kinds.items()}
    wb, gb, ob = bytes_per_param(inp)
    g = 1 if inp.fp8 else 2
    T = inp.micro_batch * inp.seq_len / cp
    act = {k: layer_activation(m, k, T, t, layout.etp, g, layout.recompute) for k in kinds}
    disp = dispatch_buffer(m, T, t, layout.etp, g)
    mb = microbatches(inp, layout)
    d_dense = world // (t * pp)            # Megatron shards non-expert state over the DP x CP group
    d_exp = layout.edp(world)
    emb = V * m.hidden_size / t
    eh, mtp_norms = mtp_extra_params(m, c)
    n_mtp = m.num_nextn_predict_layers
    last_kind = c.layers[-1].kind
    out = []
    start = 0
    for i, n in enumerate(layout.stages):
        idx = range(start, start + n)
        start += n
        n_dense = sum(1 for j in idx if c.layers[j].kind == "dense")
        n_moe = n - n_dense
        first, last = i == 0, i == pp - 1
        p_dense = n_dense * share.get("dense", LayerShare(0, 0)).dense + n_moe * share.get("moe", LayerShare(0, 0)).dense
        p_exp = n_moe * share.get("moe", LayerShare(0, 0)).expert
        flops = sum(c.layers[j].activated for j in idx)
        k = m.num_experts_per_tok if m.is_moe else 0
        flops_exp = sum(k * c.layers[j].routed_expert for j in idx)
        if first:
            p_dense += emb                                 # input embedding (vocab-parallel)
        if last:
            p_dense += m.hidden_size                       # final norm
            if c.output_head or pp > 1:
                p_dense += emb                             # output head (or the tied copy)
            flops += V * m.hidden_size
            if n_mtp:
                p_dense += n_mtp * share[last_kind].dense + eh / t + mtp_norms
                p_exp += n_mtp * share[last_kind].expert
                if not first:
                    p_dense += emb                         # MTP needs the embedding on the last stage
                flops += n_mtp * (c.layers[-1].activated + 2 * m.hidden_size ** 2 + V * m.hidden_size)
                flops_exp += n_mtp * k * c.layers[-1].routed_expert
        in_flight = min(pp - i, mb)
        stored = sum(act[c.layers[j].kind][0] for j in idx) * in_flight
        working = max(act[c.layers[j].kind][1] for j in idx) if n else 0.0
        has_moe = n_moe > 0 or (last and n_mtp and last_kind == "moe")
        logits = 0.0
        if last:
            # final norm input/output + bf16 logits + the fp32 copy the loss takes, per depth
            logits = (1 + n_mtp) * (ACT_BYTES + 4) * T * V / t + (ACT_BYTES + g) * T / t * m.hidden_size
            if n_mtp:
                # MTP: its layer's saved tensors, eh_proj input (2h), one microbatch in flight
                stored += n_mtp * (act[last_kind][0] + g * T / t * 2 * m.hidden_size)
                working = max(working, act[last_kind][1])
        terms = {
            "weights": p_dense * wb + p_exp * wb,
            "grads": (p_dense + p_exp) * gb,
            "optimizer": 0.0,
            "activations": stored + working,
            "moe_dispatch": disp if has_moe else 0.0,
            "logits": logits,
        }
        opt = (p_dense * ob / d_dense + p_exp * ob / d_exp) if inp.distributed_optimizer else (p_dense + p_exp) * ob
        host_always = 0.0
        if inp.optimizer_offload:
            host_always += opt
        else:
            terms["optimizer"] = opt
        if inp.ref_model == "gpu":
            terms["ref_weights"] = terms["weights"]
        elif inp.ref_model == "cpu":
            host_always += terms["weights"]
        if inp.router_replay != "none" and n_moe:
            # routing ids of the microbatches in flight (as carried: 1 or 2 B) + one microbatch's int64
            # copy of all MoE layers + the int64 share of this stage's layers (docs/planner.md "Router replay")
            per_layer = inp.micro_batch * inp.seq_len / cp * m.num_experts_per_tok
            L = sum(1 for l in c.layers if l.kind == "moe")
            terms["routing"] = (per_layer * L * (1 if m.n_routed_experts <= 256 else 2) * in_flight
                                + per_layer * L * 8 + per_layer / t * n_moe * 8)
        st = StageMemory(i, n, n_dense, n_moe, n_mtp if last else 0, first, last, in_flight,
                         p_dense, p_exp, flops, flops_exp, terms)
        _phases(inp, st, gen)
        host_train = gen.weights if inp.sleep_mode else 0.0
        host_gen = (terms["weights"] + terms["optimizer"]) if inp.trainer_offload else 0.0
        st.host = host_always + max(host_train, host_gen)
        out.append(st)
    return out


def _phases(inp: PlanInputs, st: StageMemory, gen: GenMemory) -> None:
    """train:      trainer state + activations (+ the vLLM engine unless it sleeps)
    generation: vLLM weights + KV + workspace (+ trainer state unless offloaded)
    refit:      trainer weights + vLLM weights + staging buffer (+ the rest when not offloaded)
    every phase also pays the fixed reserve."""
    tr = st.terms
    reserve = inp.reserve_gib * GIB
    state = {k: tr[k] for k in ("weights", "grads", "optimizer", "ref_weights") if k in tr}
    train = dict(state)
    train.update(activations=tr["activations"], moe_dispatch=tr["moe_dispatch"], logits=tr["logits"])
    if "routing" in tr:
        train["routing"] = tr["routing"]
    if not inp.sleep_mode:
        train.update(gen_weights=gen.weights, kv_cache=gen.kv_cache)
    train["reserve"] = reserve
    generation = {"gen_weights": gen.weights, "kv_cache": gen.kv_cache, "gen_workspace": gen.workspace}
    if not inp.trainer_offload:
        generation.update(state)
    generation["reserve"] = reserve
    refit = {"weights": tr["weights"], "gen_weights": gen.weights, "refit_buffer": inp.refit_buffer_gib * GIB}
    if not inp.trainer_offload:
        refit.update(state)
    if not inp.sleep_mode:
        refit["kv_cache"] = gen.kv_cache
    refit["reserve"] = reserve
    st.phases = {"train": train, "generation": generation, "refit": refit}


def overflow_reasons(inp: PlanInputs, stages: list[StageMemory]) -> list[str]:
    """Why a layout does not fit: each phase that overflows on its worst stage, naming the terms
    (largest first), and host RAM when offloaded state overflows a node."""
    cap = inp.mem_gib * GIB
    reasons = []
    for phase in ("train", "generation", "refit"):
        worst = max(stages, key=lambda s: s.phase_total(phase))
        total = worst.phase_total(phase)
        if total > cap:
            terms = sorted(((v, k) for k, v in worst.phases[phase].items() if v > 0), reverse=True)
            top = terms[0][1]
            listing = ", ".join(f"{k} {v / GIB:.1f}" for v, k in terms)
            where = f" on stage {worst.index}" if len(stages) > 1 else ""
            reasons.append(f"{phase} phase{where} needs {total / GIB:.1f} GiB > {inp.mem_gib:g} GiB "
                           f"(largest term: {top} {terms[0][0] / GIB:.1f} GiB; {listing})")
    host = max(s.host for s in stages) * inp.node_gpus
    if host > inp.host_mem_gib * GIB:
        reasons.append(f"host RAM: offloaded state needs {host / GIB:.0f} GiB per node > {inp.host_mem_gib:g} GiB")
    return reasons


def fmt_gib(x: float) -> str:
    return f"{x / GIB:.1f}" if math.isfinite(x) else "inf"
