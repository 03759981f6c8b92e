"""The step-time model of one colocated GRPO step: ranks layouts and predicts tokens/s/GPU.

step = generation + log-prob passes + training + refit + colocation swaps, every part written
out in docs/planner.md ("Step-time model"). Its constants (PlanInputs: utilisations, per-layer
overheads, MoE imbalance, all-to-all efficiency) are calibrated on NeMo-RL v0.6's published H100
runs (docs/planner.md "Calibration": DeepSeek-V3, Qwen3-235B-A22B, Qwen3-30B-A3B within 30%).
Communication is counted as exposed (no overlap); responses have a mean length (the tokens that
are trained and counted) and a cap (how long the last decode runs).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .inputs import Layout, PlanInputs
from .generation import GenMemory
from .memory import ACT_BYTES, StageMemory, bytes_per_param, counts, routed_tokens

# FLOPs per activated parameter per token of one training pass: forward 2 + backward 4, plus one
# more forward (2) under full recompute; selective recompute re-runs norms, MLA up-projections
# and the expert activation: a few percent (0.2).
TRAIN_COEF = {"none": 6.0, "selective": 6.2, "full": 8.0}
CPU_ADAM_PARAMS_PER_S = 1e9   # CPU Adam throughput per GPU's share of host cores (offload)
GEMM_HALF_SIZE = 128          # a GEMM whose smallest dimension is this runs at half the big-GEMM rate


def gemm_efficiency(smallest_dim: float) -> float:
    """Relative speed of a GEMM with this smallest dimension: x / (x + 128)."""
    return smallest_dim / (smallest_dim + GEMM_HALF_SIZE) if smallest_dim > 0 else 1.0


def allreduce_seconds(inp: PlanInputs, ranks: int, nbytes: float) -> float:
    """One all-reduce of ``nbytes`` over ``ranks`` consecutive GPUs: a latency (inside a node; across
    nodes the inter-node latency per two nodes crossed, as a ring's hops grow with the nodes) plus
    the ring's 2 (n-1)/n bytes over NVLink or InfiniBand."""
    if ranks <= 1:
        return 0.0
    hw, node = inp.hw, inp.gpus_per_node
    if ranks <= node:
        lat, bw = hw.lat_intra_us, hw.nvlink_gbps
    else:
        lat, bw = hw.lat_inter_us * -(-ranks // node) / 2, hw.ib_gbps
    return lat * 1e-6 + 2 * (ranks - 1) / ranks * nbytes / (bw * 1e9)


def packed_microbatches(inp: PlanInputs, seqs: int, dp: int, mbs: int) -> int:
    """Microbatches of ``seqs`` rollouts per DP rank: with sequence packing the mean-length rollouts
    fill bins of mbs * seq_len tokens (NeMo-RL's and Megatron's packed THD batches), else one
    microbatch per mbs sequences."""
    if inp.sequence_packing:
        return max(1, math.ceil(seqs * inp.mean_seq_tokens / (inp.seq_len * mbs) / dp))
    return max(1, seqs // (dp * mbs))


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
    moe_overhead: float = 0.0
    bubble_fraction: float = 0.0
    microbatches: int = 0
    dp_comm: float = 0.0
    optimizer: float = 0.0
    refit: float = 0.0
    swap: float = 0.0
    total: float = 0.0
    decode_steps: float = 0.0
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
    on the node) and IB peers (the rest), at a2a_efficiency of the links' bandwidth."""
    ep, node = layout.ep, inp.gpus_per_node
    if ep == 1:
        return 0.0
    local = min(ep, max(1, node // layout.etp))
    on, off = (local - 1) / ep, (ep - local) / ep
    hw = inp.hw
    lat = (hw.lat_inter_us if off else hw.lat_intra_us) * 1e-6
    return lat + nbytes * (on / (hw.nvlink_gbps * 1e9) + off / (hw.ib_gbps * 1e9)) / inp.a2a_efficiency


def _stage_microbatch_seconds(inp: PlanInputs, layout: Layout, st: StageMemory, coef: float,
                              tp_ops: int, a2a_ops: int, p2p_ops: int,
                              mbs: int = 0) -> tuple[float, float, float, float, float]:
    """(compute, TP comm, EP comm, PP comm, MoE overhead) seconds of one microbatch on one stage.
    The routed experts' FLOPs and all-to-all bytes are those of the busiest EP rank (x moe_imbalance);
    each MoE layer pays moe_layer_ms per all-to-all pair (routing, permutation, host sync)."""
    m, hw = inp.model, inp.hw
    peak = hw.peak_tflops * 1e12 * (2 if inp.fp8 else 1)
    tokens = (mbs or inp.micro_batch) * inp.seq_len
    n_layers = st.layers + st.mtp_layers
    eff_dense, eff_exp = gemm_efficiencies(inp, layout)
    dense_flops = coef * (st.flops_params - st.flops_expert) * tokens
    dense_flops += coef / 2 * attention_flops_per_token_layer(inp) * n_layers * tokens
    expert_flops = coef * st.flops_expert * tokens * (inp.moe_imbalance if layout.ep > 1 else 1.0)
    compute = (dense_flops / eff_dense + expert_flops / eff_exp) / (layout.tp * layout.cp * peak * inp.mfu)
    T = tokens / layout.cp
    t = layout.tp
    tp = 0.0
    if t > 1:  # sequence-parallel all-gathers / reduce-scatters of [T, h] per layer
        per_op = hw.lat_intra_us * 1e-6 + ACT_BYTES * T * m.hidden_size * (t - 1) / t / (hw.nvlink_gbps * 1e9)
        tp = n_layers * tp_ops * per_op
    ep = moe = 0.0
    n_moe = st.moe_layers + (st.mtp_layers if m.is_moe else 0)
    if m.is_moe and n_moe:
        g = 1 if inp.fp8 else ACT_BYTES
        send = g * T / t * m.num_experts_per_tok * m.hidden_size * inp.moe_imbalance
        ep = n_moe * a2a_ops * _a2a_seconds(inp, layout, send)
        moe = n_moe * a2a_ops / 2 * inp.moe_layer_ms * 1e-3
    pp = 0.0
    if layout.pp > 1:
        pp = p2p_ops * ACT_BYTES * T / t * m.hidden_size / _span_bw(inp, inp.gpus // layout.pp + 1)
    return compute, tp, ep, pp, moe


def generation_seconds(inp: PlanInputs, gen: GenMemory) -> tuple[float, float, float]:
    """(prefill, decode, decode steps) seconds of the rollout; every engine runs its share at once.

    prefill = 2 * N_act * prompt_tokens * rollouts / (GPUs * peak * mfu_prefill)
    An engine holds S sequences, at most c at once; responses have mean mu and cap M:
      steps   = M when S <= c (the longest response decides), else S*mu/c + (M - mu) (full
                batches, then the tail); live = S*mu / steps sequences on average
      decode  = max(memory, compute) + steps * [L * (2 all-reduces + decode_layer_us)
                + (nodes the engine spans - 1) * engine_node_ms]
      memory  = [steps * (dense weights + expert weights * touched(live)) + S*mu * KV read] / (HBM * hbm_efficiency)
      touched(n) = 1 - (1 - k/E)^n (share of experts a step with n sequences reads)
      KV read = (prompt + mu/2) * KV bytes per token (the mean context a decoded token attends to)
      compute = S*mu * 2 * N_act / (rollout_TP * peak * mfu_prefill)
      all-reduce of live * h bf16 values over rollout_TP GPUs (allreduce_seconds)."""
    m, hw = inp.model, inp.hw
    c = counts(m)
    n_act = c.activated - c.embedding
    peak = hw.peak_tflops * 1e12 * (2 if inp.fp8 else 1)
    prefill = 2 * n_act * inp.prompt_tokens * inp.rollouts / (inp.gpus * peak * inp.mfu_prefill)
    S, conc = gen.seqs_per_engine, gen.concurrency
    mu, cap = inp.mean_response_tokens, inp.response_tokens
    steps = cap if S <= conc else S * mu / conc + (cap - mu)
    token_steps = S * mu
    live = token_steps / steps
    touched = 1.0
    if m.is_moe:
        touched = 1 - (1 - m.num_experts_per_tok / m.n_routed_experts) ** live
    weights = gen.weights - gen.expert_weights + gen.expert_weights * touched
    kv_read = token_steps * (inp.prompt_tokens + mu / 2) * gen.kv_per_token
    mem = (steps * weights + kv_read) / (hw.hbm_tbps * 1e12 * inp.hbm_efficiency)
    compute = token_steps * 2 * n_act / (gen.rollout_tp * peak * inp.mfu_prefill)
    per_layer = 2 * allreduce_seconds(inp, gen.rollout_tp, live * m.hidden_size * ACT_BYTES) + inp.decode_layer_us * 1e-6
    nodes = -(-gen.rollout_tp // inp.gpus_per_node)
    decode = max(mem, compute) + steps * (m.num_layers * per_layer + (nodes - 1) * inp.engine_node_ms * 1e-3)
    return prefill, decode, steps


def step_time(inp: PlanInputs, layout: Layout, stages: list[StageMemory], gen: GenMemory) -> StepTime:
    hw = inp.hw
    st = StepTime()
    st.prefill, st.decode, st.decode_steps = generation_seconds(inp, gen)
    st.generation = st.prefill + st.decode
    pp = layout.pp
    full = layout.recompute == "full"
    world = inp.gpus
    dp_size = layout.dp(world)

    # training: 1F1B, (m + pp - 1) slots of the slowest stage's microbatch time, per optimizer step
    m_train = packed_microbatches(inp, inp.minibatch_seqs, dp_size, inp.micro_batch)
    coef = TRAIN_COEF[layout.recompute]
    per = [_stage_microbatch_seconds(inp, layout, s, coef, 12 if full else 8, 6 if full else 4, 2) for s in stages]
    slow = max(range(len(stages)), key=lambda i: sum(per[i]))
    slots = m_train + pp - 1
    st.microbatches = m_train
    st.train_compute, st.tp_comm, st.ep_comm, st.pp_comm, st.moe_overhead = (
        x * slots * inp.minibatches for x in per[slow])
    st.bubble_fraction = (pp - 1) / slots
    pipeline = sum(per[slow]) * slots

    # DP: reduce-scatter of the grads + all-gather of the params (all-reduce without dist opt)
    wb, gb, ob = bytes_per_param(inp)
    d_dense, d_exp = world // (layout.tp * layout.pp), layout.edp(world)
    bw = _span_bw(inp, world // layout.pp)
    per_param = (gb + wb) if inp.distributed_optimizer else 2 * gb
    dp = max((s.params_dense * per_param * (d_dense - 1) / d_dense
              + s.params_expert * per_param * (d_exp - 1) / d_exp) / bw for s in stages)
    # optimizer step: the local shard, ~32 bytes of HBM traffic per parameter at 80% of HBM (or CPU Adam)
    shard = max((s.params_dense / d_dense + s.params_expert / d_exp) if inp.distributed_optimizer
                else (s.params_dense + s.params_expert) for s in stages)
    if inp.optimizer_offload:
        opt = shard * (gb + wb) / (hw.pcie_gbps * 1e9) + shard / CPU_ADAM_PARAMS_PER_S
    else:
        opt = shard * 32 / (hw.hbm_tbps * 1e12 * 0.8)
    st.dp_comm = dp * inp.minibatches
    st.optimizer = opt * inp.minibatches
    st.train = (pipeline + dp + opt) * inp.minibatches

    # log-prob passes (old policy, reference): forward only over all rollouts
    if inp.logprob_passes:
        m_lp = packed_microbatches(inp, inp.rollouts, dp_size, inp.logprob_mbs)
        fwd = max(sum(_stage_microbatch_seconds(inp, layout, s, 2.0, 4, 2, 1, inp.logprob_mbs)) for s in stages)
        st.logprob = inp.logprob_passes * fwd * (m_lp + pp - 1)
        if inp.ref_model == "cpu":
            st.logprob += 2 * max(s.terms["weights"] for s in stages) / (hw.pcie_gbps * 1e9)

    # refit: every GPU receives its vLLM shard, a many-to-many reshuffle (at the all-to-all efficiency);
    # colocation swaps over PCIe
    st.refit = gen.weights / (_span_bw(inp, max(gen.rollout_tp, world)) * inp.a2a_efficiency)
    pcie = hw.pcie_gbps * 1e9
    if inp.sleep_mode:
        st.swap += 2 * gen.weights / pcie
    if inp.trainer_offload:
        st.swap += 2 * max(s.terms["weights"] + s.terms["optimizer"] for s in stages) / pcie
    st.total = st.generation + st.logprob + st.train + st.refit + st.swap
    st.tokens_per_s_per_gpu = inp.rollouts * inp.mean_seq_tokens / st.total / world
    return st
