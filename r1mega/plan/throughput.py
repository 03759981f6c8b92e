"""A simple step-time proxy of one colocated GRPO step, used to RANK layouts that fit.

step = generation + log-prob passes + training + refit + colocation swaps, every part written
out in docs/planner.md ("Throughput proxy"). It is a proxy: utilisation, bandwidths and
latencies are guesses (PlanInputs / Hardware), routing is assumed balanced, every sequence is
assumed to run to seq_len, overlap of communication with compute is ignored (all comm exposed).
Differences between layouts (pipeline bubble, TP and EP traffic, recompute, DP traffic) are what
the ranking relies on; absolute seconds are indicative only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .inputs import Layout, PlanInputs
from .memory import ACT_BYTES, GenMemory, StageMemory, bytes_per_param, counts, microbatches, routed_tokens

# FLOPs per activated parameter per token of one training pass: forward 2 + backward 4, plus one
# more forward (2) under full recompute; selective recompute re-runs norms, MLA up-projections
# and the expert activation: a few percent (0.2).
TRAIN_COEF = {"none": 6.0, "selective": 6.2, "full": 8.0}
CPU_ADAM_PARAMS_PER_S = 1e9   # CPU Adam throughput per GPU's share of host cores (offload)
GEMM_HALF_SIZE = 128          # a GEMM whose smallest dimension is this runs at half the big-GEMM rate


def gemm_efficiency(smallest_dim: float) -> float:
    """Relative speed of a GEMM with this smallest dimension: x / (x + 128)."""
    return smallest_dim / (smallest_dim + GEMM_HALF_SIZE) if smallest_dim > 0 else 1.0


def gemm_efficiencies(inp: PlanInputs, layout: Layout) -> tuple[float, float]:
    """(non-expert, routed-expert) GEMM efficiency of one microbatch.

    non-expert: smallest of the tokens T and the TP-sliced width min(h, I) / TP;
    experts: smallest of the rows per local expert (routed token copies / (E / EP)),
    the ETP-sliced expert width I_e / ETP and h."""
    m = inp.model
    T = inp.micro_batch * inp.seq_len / layout.cp
    dense = gemm_efficiency(min(T, min(m.hidden_size, m.intermediate_size) / layout.tp))
    if not m.is_moe:
        return dense, 1.0
    rows = routed_tokens(m, T, layout.tp, layout.etp) / (m.n_routed_experts / layout.ep)
    return dense, gemm_efficiency(min(rows, m.moe_intermediate_size / layout.etp, m.hidden_size))


@dataclass
class StepTime:
    generation: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0
    logprob: float = 0.0
    train: float = 0.0
    train_compute: float = 0.0
    tp_comm: float = 0.0
    ep_comm: float = 0.0
    pp_comm: float = 0.0
    bubble_fraction: float = 0.0
    dp_comm: float = 0.0
    optimizer: float = 0.0
    refit: float = 0.0
    swap: float = 0.0
    total: float = 0.0
    tokens_per_s_per_gpu: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def attention_flops_per_token_layer(inp: PlanInputs) -> float:
    """Forward score + value FLOPs per token per layer, causal (average context seq/2):
    2 * heads * (d_qk + d_v) * seq / 2."""
    m = inp.model
    if not m.mla:
        hd = m.head_dim or m.hidden_size // m.num_attention_heads
        dqk = dv = hd
    else:
        dqk, dv = m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim
    return m.num_attention_heads * (dqk + dv) * inp.seq_len


def _span_bw(inp: PlanInputs, span: int) -> float:
    """Bytes/s of a collective over ``span`` consecutive ranks: NVLink inside a node, else IB."""
    hw = inp.hw
    return (hw.nvlink_gbps if span <= inp.gpus_per_node else hw.ib_gbps) * 1e9


def _a2a_seconds(inp: PlanInputs, layout: Layout, nbytes: float) -> float:
    """All-to-all over the EP group (ETP*EP consecutive ranks): one latency (inter-node if the
    group spans nodes) + the (EP-1)/EP share that leaves a GPU, split into NVLink peers (EP ranks
    on the node) and IB peers (the rest)."""
    ep, node = layout.ep, inp.gpus_per_node
    if ep == 1:
        return 0.0
    local = min(ep, max(1, node // layout.etp))
    on, off = (local - 1) / ep, (ep - local) / ep
    hw = inp.hw
    lat = (hw.lat_inter_us if off else hw.lat_intra_us) * 1e-6
    return lat + nbytes * (on / (hw.nvlink_gbps * 1e9) + off / (hw.ib_gbps * 1e9))


def _stage_microbatch_seconds(inp: PlanInputs, layout: Layout, st: StageMemory, coef: float,
                              tp_ops: int, a2a_ops: int, p2p_ops: int) -> tuple[float, float, float, float]:
    """(compute, TP comm, EP comm, PP comm) seconds of one microbatch on one stage."""
    m, hw = inp.model, inp.hw
    peak = hw.peak_tflops * 1e12 * (2 if inp.fp8 else 1)
    tokens = inp.micro_batch * inp.seq_len
    n_layers = st.layers + st.mtp_layers
    eff_dense, eff_exp = gemm_efficiencies(inp, layout)
    dense_flops = coef * (st.flops_params - st.flops_expert) * tokens
    dense_flops += coef / 2 * attention_flops_per_token_layer(inp) * n_layers * tokens
    expert_flops = coef * st.flops_expert * tokens
    compute = (dense_flops / eff_dense + expert_flops / eff_exp) / (layout.tp * layout.cp * peak * inp.mfu)
    T = tokens / layout.cp
    t = layout.tp
    tp = 0.0
    if t > 1:  # sequence-parallel all-gathers / reduce-scatters of [T, h] per layer
        per_op = hw.lat_intra_us * 1e-6 + ACT_BYTES * T * m.hidden_size * (t - 1) / t / (hw.nvlink_gbps * 1e9)
        tp = n_layers * tp_ops * per_op
    ep = 0.0
    n_moe = st.moe_layers + (st.mtp_layers if m.is_moe else 0)
    if m.is_moe and n_moe:
        g = 1 if inp.fp8 else ACT_BYTES
        send = g * T / t * m.num_experts_per_tok * m.hidden_size
        ep = n_moe * a2a_ops * _a2a_seconds(inp, layout, send)
    pp = 0.0
    if layout.pp > 1:
        pp = p2p_ops * ACT_BYTES * T / t * m.hidden_size / _span_bw(inp, inp.gpus // layout.pp + 1)
    return compute, tp, ep, pp


def generation_seconds(inp: PlanInputs, gen: GenMemory) -> tuple[float, float]:
    """(prefill, decode) seconds of the rollout.

    prefill = 2 * N_act * prompt_tokens * rollouts / (GPUs * peak * mfu_prefill)
    decode  = waves * response_len * step, step = max(memory, compute) + TP latency, with
      memory  = (dense weights + expert weights * touched + KV read) / (HBM * hbm_efficiency),
      touched = 1 - (1 - k/E)^concurrency (share of experts a decode step reads),
      KV read = concurrency * (prompt + response/2) * KV bytes per token,
      compute = 2 * N_act * concurrency / (rollout_TP * peak * mfu_prefill),
      latency = 2 all-reduces per layer (intra-node or inter-node latency by rollout_TP)."""
    m, hw = inp.model, inp.hw
    c = counts(m)
    n_act = c.activated - c.embedding
    peak = hw.peak_tflops * 1e12 * (2 if inp.fp8 else 1)
    prefill = 2 * n_act * inp.prompt_tokens * inp.rollouts / (inp.gpus * peak * inp.mfu_prefill)
    touched = 1.0
    if m.is_moe:
        touched = 1 - (1 - m.num_experts_per_tok / m.n_routed_experts) ** gen.concurrency
    kv_read = gen.concurrency * (inp.prompt_tokens + inp.response_tokens / 2) * gen.kv_per_token
    read = gen.weights - gen.expert_weights + gen.expert_weights * touched + kv_read
    mem = read / (hw.hbm_tbps * 1e12 * inp.hbm_efficiency)
    compute = 2 * n_act * gen.concurrency / (gen.rollout_tp * peak * inp.mfu_prefill)
    lat = 0.0
    if gen.rollout_tp > 1:
        us = hw.lat_intra_us if gen.rollout_tp <= inp.gpus_per_node else hw.lat_inter_us
        lat = 2 * m.num_layers * us * 1e-6
    decode = gen.waves * inp.response_tokens * (max(mem, compute) + lat)
    return prefill, decode


def step_time(inp: PlanInputs, layout: Layout, stages: list[StageMemory], gen: GenMemory) -> StepTime:
    hw = inp.hw
    st = StepTime()
    st.prefill, st.decode = generation_seconds(inp, gen)
    st.generation = st.prefill + st.decode
    pp = layout.pp
    full = layout.recompute == "full"

    # training: 1F1B, (m + pp - 1) slots of the slowest stage's microbatch time
    m_train = microbatches(inp, layout)
    coef = TRAIN_COEF[layout.recompute]
    per = [_stage_microbatch_seconds(inp, layout, s, coef, 12 if full else 8, 6 if full else 4, 2) for s in stages]
    slow = max(range(len(stages)), key=lambda i: sum(per[i]))
    slots = m_train + pp - 1
    st.train_compute, st.tp_comm, st.ep_comm, st.pp_comm = (x * slots for x in per[slow])
    st.bubble_fraction = (pp - 1) / slots
    pipeline = sum(per[slow]) * slots

    # DP: reduce-scatter of the grads + all-gather of the params (all-reduce without dist opt)
    wb, gb, ob = bytes_per_param(inp)
    world = inp.gpus
    d_dense, d_exp = world // (layout.tp * layout.pp), layout.edp(world)
    bw = _span_bw(inp, world // layout.pp)
    per_param = (gb + wb) if inp.distributed_optimizer else 2 * gb
    dp = max((s.params_dense * per_param * (d_dense - 1) / d_dense
              + s.params_expert * per_param * (d_exp - 1) / d_exp) / bw for s in stages)
    # optimizer step: the local shard, ~32 bytes of HBM traffic per parameter (or CPU Adam)
    shard = max((s.params_dense / d_dense + s.params_expert / d_exp) if inp.distributed_optimizer
                else (s.params_dense + s.params_expert) for s in stages)
    if inp.optimizer_offload:
        opt = shard * (gb + wb) / (hw.pcie_gbps * 1e9) + shard / CPU_ADAM_PARAMS_PER_S
    else:
        opt = shard * 32 / (hw.hbm_tbps * 1e12 * inp.hbm_efficiency)
    st.dp_comm = dp * inp.minibatches
    st.optimizer = opt * inp.minibatches
    st.train = (pipeline + dp + opt) * inp.minibatches

    # log-prob passes (old policy, reference): forward only over all rollouts
    if inp.logprob_passes:
        m_lp = max(1, inp.rollouts // (layout.dp(world) * inp.micro_batch))
        fwd = max(sum(_stage_microbatch_seconds(inp, layout, s, 2.0, 4, 2, 1)) for s in stages)
        st.logprob = inp.logprob_passes * fwd * (m_lp + pp - 1)
        if inp.ref_model == "cpu":
            st.logprob += 2 * max(s.terms["weights"] for s in stages) / (hw.pcie_gbps * 1e9)

    # refit: every GPU receives its vLLM shard; colocation swaps over PCIe
    st.refit = gen.weights / _span_bw(inp, max(gen.rollout_tp, world))
    pcie = hw.pcie_gbps * 1e9
    if inp.sleep_mode:
        st.swap += 2 * gen.weights / pcie
    if inp.trainer_offload:
        st.swap += 2 * max(s.terms["weights"] + s.terms["optimizer"] for s in stages) / pcie
    st.total = st.generation + st.logprob + st.train + st.refit + st.swap
    st.tokens_per_s_per_gpu = inp.rollouts * inp.seq_len / st.total / world
    return st
