"""What the planner is asked: the model, the machine, the GRPO workload, the options; and a layout.

Everything here is plain data. The formulas live in ``memory.py`` (bytes per GPU) and
``throughput.py`` (the step-time model); ``search.py`` enumerates and ranks layouts; ``anchors.py`` holds
the published runs the step-time constants are calibrated on.
docs/planner.md documents every formula and every default below.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from r1mega.config.base import ConfigError
from r1mega.config.model import ModelConfig
from r1mega.config.parallel import RECOMPUTE

GIB = 1024 ** 3
RECOMPUTE_MODES = RECOMPUTE  # parallel.recompute's values: a plan's mode is a config's


@dataclass(frozen=True)
class Hardware:
    """One GPU kind and its cluster links. Bandwidths are achievable per-GPU figures, not peaks."""
    name: str
    mem_gib: float            # usable device memory
    peak_tflops: float        # dense BF16 tensor-core peak (FP8 = 2x)
    hbm_tbps: float           # HBM bandwidth, TB/s
    nvlink_gbps: float        # intra-node collective bandwidth per GPU, GB/s
    ib_gbps: float            # inter-node bandwidth per GPU (one NIC per GPU), GB/s
    pcie_gbps: float          # host <-> device copy bandwidth per GPU, all GPUs of a node at once, GB/s
    lat_intra_us: float       # latency of one small all-reduce inside a node, microseconds
    lat_inter_us: float       # the same across nodes


HARDWARE: dict[str, Hardware] = {
    # H100 SXM 80GB: 989 TFLOPS dense BF16, 3.35 TB/s HBM3, NVLink 4 (900 GB/s bidirectional),
    # 400 Gb/s InfiniBand per GPU; host copies: 12 GB/s per GPU while all 8 GPUs of a node offload at
    # once (pageable host memory, two GPUs per PCIe switch), not the 25+ GB/s of one pinned copy.
    "h100": Hardware("h100", 80.0, 989.0, 3.35, 360.0, 45.0, 12.0, 10.0, 40.0),
    # H200 141GB: H100 compute, 4.8 TB/s HBM3e.
    "h200": Hardware("h200", 141.0, 989.0, 4.8, 360.0, 45.0, 12.0, 10.0, 40.0),
    # A100 SXM 80GB: 312 TFLOPS BF16, 2.0 TB/s, NVLink 3, 200 Gb/s per GPU.
    "a100": Hardware("a100", 80.0, 312.0, 2.0, 240.0, 22.0, 10.0, 12.0, 45.0),
}


@dataclass
class PlanInputs:
    """A planning question. ``seq_len`` = prompt + response tokens (the training sequence)."""
    model: ModelConfig
    gpus: int
    gpu_mem_gib: Optional[float] = None      # None = the hardware's memory
    hardware: str = "h100"
    gpus_per_node: int = 8
    # workload (one GRPO step)
    seq_len: int = 1536
    prompt_len: Optional[int] = None         # None = seq_len // 4
    mean_response_len: Optional[int] = None  # mean generated tokens; None = every response runs to the cap
    prompts: int = 32
    group: int = 16
    micro_batch: int = 1
    minibatches: int = 1                     # optimizer steps per rollout batch
    logprob_micro_batch: Optional[int] = None  # sequences per log-prob microbatch (None = micro_batch)
    sequence_packing: bool = True            # train/log-prob microbatches packed to micro_batch * seq_len tokens
    # training options
    recompute: str = "auto"                  # none | selective | full | auto (best that fits)
    param_dtype: str = "bf16"                # bf16 | fp32
    grad_dtype: str = "fp32"                 # Megatron DDP main grads: fp32 (default) | bf16
    fp8: bool = False                        # FP8 training GEMMs + FP8 generation weights
    distributed_optimizer: bool = True
    optimizer_offload: bool = False          # Adam master weights + moments on the CPU
    ref_model: str = "cpu"                   # where the KL reference weights live: cpu | gpu | none
    logprob_passes: int = 2                  # forward-only passes per step (old policy + reference)
    # colocated vLLM engine
    rollout_tp: Optional[int] = None         # None = smallest power of two whose engine fits
    rollout_ep: bool = False                 # vLLM enable_expert_parallel (same bytes per GPU)
    kv_cache_dtype: str = "bf16"             # bf16 | fp8
    max_num_seqs: int = 256                  # vLLM concurrency cap per engine
    max_num_batched_tokens: int = 8192       # vLLM prefill chunk (sizes the forward workspace)
    sleep_mode: bool = True                  # vLLM offloads weights + frees KV while training
    trainer_offload: bool = True             # trainer moves weights/optimizer to CPU while generating
    refit_buffer_gib: float = 2.0            # staging buffer of the train -> vLLM weight update
    router_replay: str = "none"              # none | r2 | r3: routing ids carried to the trainer (MoE)
    # budget
    reserve_gib: float = 4.0                 # CUDA contexts, NCCL buffers, allocator fragmentation
    host_mem_gib: float = 1800.0             # host RAM per node available for offloaded state
    search_cp: tuple = (1,)                  # context-parallel sizes the search tries
    # step-time model constants, calibrated on NeMo-RL v0.6's H100 runs (docs/planner.md "Calibration")
    mfu: float = 0.2                         # training GEMM FLOPs utilisation (large GEMMs)
    mfu_prefill: float = 0.3                 # vLLM prefill / decode compute utilisation
    hbm_efficiency: float = 0.6              # fraction of HBM bandwidth a vLLM decode step achieves
    decode_layer_us: float = 40.0            # fixed cost per layer per decode step (kernel launches, small ops)
    engine_node_ms: float = 10.0             # per decode step and node beyond the first an engine spans
    moe_imbalance: float = 1.3               # busiest EP rank's routed tokens / the mean (frozen router, no aux loss)
    a2a_efficiency: float = 0.5              # achieved fraction of link bandwidth in the EP all-to-all
    moe_layer_ms: float = 1.0                # per MoE layer and pass: routing, permutation, token-count host sync

    @property
    def hw(self) -> Hardware:
        if self.hardware not in HARDWARE:
            raise ConfigError("plan.hardware", f"unknown GPU {self.hardware!r} (known: {', '.join(HARDWARE)})")
        return HARDWARE[self.hardware]

    @property
    def mem_gib(self) -> float:
        return self.gpu_mem_gib if self.gpu_mem_gib is not None else self.hw.mem_gib

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_len if self.prompt_len is not None else self.seq_len // 4

    @property
    def response_tokens(self) -> int:
        return self.seq_len - self.prompt_tokens

    @property
    def mean_response_tokens(self) -> float:
        """Mean generated tokens per rollout (the cap when not given)."""
        return self.mean_response_len if self.mean_response_len is not None else self.response_tokens

    @property
    def mean_seq_tokens(self) -> float:
        """Mean tokens of one rollout: prompt + mean response (what tokens/s/GPU counts)."""
        return self.prompt_tokens + self.mean_response_tokens

    @property
    def logprob_mbs(self) -> int:
        return self.logprob_micro_batch if self.logprob_micro_batch is not None else self.micro_batch

    @property
    def rollouts(self) -> int:
        """Sequences per GRPO step (prompts x group)."""
        return self.prompts * self.group

    @property
    def minibatch_seqs(self) -> int:
        return self.rollouts // self.minibatches

    @property
    def node_gpus(self) -> int:
        return min(self.gpus, self.gpus_per_node)

    def validate(self) -> None:
        def pos(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"plan.{name}", f"got {v!r}, expected an integer >= 1")
        for name in ("gpus", "gpus_per_node", "seq_len", "prompts", "group", "micro_batch", "minibatches",
                     "max_num_seqs", "max_num_batched_tokens"):
            pos(name)
        if self.logprob_micro_batch is not None:
            pos("logprob_micro_batch")
        self.hw  # noqa: B018 (raises on an unknown name)
        if not 0 <= self.prompt_tokens < self.seq_len:
            raise ConfigError("plan.prompt_len", f"got {self.prompt_tokens}, expected 0 <= prompt < seq_len={self.seq_len}")
        if self.mean_response_len is not None and not 1 <= self.mean_response_len <= self.response_tokens:
            raise ConfigError("plan.mean_response_len", f"got {self.mean_response_len}, expected 1 <= mean response "
                              f"<= the response cap {self.response_tokens} (seq_len - prompt_len)")
        if self.rollouts % self.minibatches:
            raise ConfigError("plan.minibatches", f"{self.minibatches} does not divide prompts*group = {self.rollouts}")
        if self.recompute not in RECOMPUTE_MODES + ("auto",):
            raise ConfigError("plan.recompute", f"got {self.recompute!r}, expected {', '.join(RECOMPUTE_MODES)} or auto")
        for name, choices in (("param_dtype", ("bf16", "fp32")), ("grad_dtype", ("fp32", "bf16")),
                              ("ref_model", ("cpu", "gpu", "none")), ("kv_cache_dtype", ("bf16", "fp8")),
                              ("router_replay", ("none", "r2", "r3"))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"plan.{name}", f"got {getattr(self, name)!r}, expected one of {', '.join(choices)}")
        if self.mem_gib <= 0:
            raise ConfigError("plan.gpu_mem_gib", f"got {self.mem_gib}, expected > 0")
        if self.rollout_tp is not None:
            pos("rollout_tp")
        for name in ("mfu", "mfu_prefill", "hbm_efficiency", "a2a_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"plan.{name}", f"got {getattr(self, name)}, expected a fraction in (0, 1]")
        if self.moe_imbalance < 1:
            raise ConfigError("plan.moe_imbalance", f"got {self.moe_imbalance}, expected >= 1 (busiest rank / mean)")
        for name in ("decode_layer_us", "moe_layer_ms", "engine_node_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"plan.{name}", f"got {getattr(self, name)}, expected >= 0")

    def replace(self, **kw) -> "PlanInputs":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class Layout:
    """A Megatron training layout. ``stages`` = decoder layers per pipeline stage (resolved split)."""
    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int = 1
    cp: int = 1
    stages: tuple = ()
    recompute: str = "full"

    def dp(self, world: int) -> int:
        return world // (self.tp * self.pp * self.cp)

    def edp(self, world: int) -> int:
        """Expert-data-parallel size: world / (ETP * EP * PP)."""
        return world // (self.etp * self.ep * self.pp)

    @property
    def sequence_parallel(self) -> bool:
        return self.tp > 1

    @property
    def first(self) -> Optional[int]:
        return self.stages[0] if self.stages else None

    @property
    def last(self) -> Optional[int]:
        return self.stages[-1] if self.stages else None

    def short(self) -> str:
        s = f"tp={self.tp},pp={self.pp},ep={self.ep},etp={self.etp}"
        if self.cp != 1:
            s += f",cp={self.cp}"
        if self.pp > 1 and self.stages and len(set(self.stages)) > 1:
            s += f",first={self.stages[0]},last={self.stages[-1]}"
        return s

    def megatron_args(self, world: int) -> dict:
        """The Megatron-Core settings this layout means (TransformerConfig / parallel_state names)."""
        d = {"tensor_model_parallel_size": self.tp, "pipeline_model_parallel_size": self.pp,
             "expert_model_parallel_size": self.ep, "expert_tensor_parallel_size": self.etp,
             "context_parallel_size": self.cp, "sequence_parallel": self.sequence_parallel,
             "data_parallel_size": self.dp(world), "expert_data_parallel_size": self.edp(world)}
        if self.pp > 1 and len(set(self.stages)) > 1:
            d["num_layers_in_first_pipeline_stage"] = self.stages[0]
            d["num_layers_in_last_pipeline_stage"] = self.stages[-1]
        if self.recompute == "full":
            d.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
        elif self.recompute == "selective":
            d.update(recompute_granularity="selective",
                     recompute_modules=["core_attn", "layernorm", "mla_up_proj", "moe_act"])
        return d

    def config_overrides(self) -> list:
        """The layout as r1mega config fields (dotted overrides); recompute 'full' is the config's default
        method and unit (uniform, 1 layer), the planner's assumption."""
        o = [f"parallel.tensor_parallel={self.tp}", f"parallel.pipeline_parallel={self.pp}",
             f"parallel.expert_parallel={self.ep}", f"parallel.expert_tensor_parallel={self.etp}"]
        if self.cp != 1:
            o.append(f"parallel.context_parallel={self.cp}")
        if self.sequence_parallel:
            o.append("parallel.sequence_parallel=true")
        if self.pp > 1 and len(set(self.stages)) > 1:
            o += [f"parallel.num_layers_in_first_pipeline_stage={self.stages[0]}",
                  f"parallel.num_layers_in_last_pipeline_stage={self.stages[-1]}"]
        return o + [f"parallel.recompute={self.recompute}"]


@dataclass
class LayoutSpec:
    """A partially given layout (``--layout tp=1,pp=16,ep=16``): missing fields are filled in."""
    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: Optional[int] = None       # None = 1 (Megatron's MoE default when ETP is not set is TP;
    cp: int = 1                     # the planner's default is 1, the common MoE choice)
    first: Optional[int] = None
    last: Optional[int] = None
    dp: Optional[int] = None        # checked only
    recompute: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "LayoutSpec":
        spec = cls()
        known = {"tp", "pp", "ep", "etp", "cp", "first", "last", "dp", "recompute"}
        for part in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
            if "=" not in part:
                raise ConfigError("plan.layout", f"{part!r}: expected key=value (keys: {', '.join(sorted(known))})")
            k, v = (x.strip().lower() for x in part.split("=", 1))
            if k not in known:
                raise ConfigError("plan.layout", f"unknown key {k!r} (keys: {', '.join(sorted(known))})")
            if k == "recompute":
                if v not in RECOMPUTE_MODES:
                    raise ConfigError("plan.layout", f"recompute={v!r}: expected {', '.join(RECOMPUTE_MODES)}")
                spec.recompute = v
                continue
            try:
                n = int(v)
            except ValueError:
                raise ConfigError("plan.layout", f"{k}={v!r}: expected an integer") from None
            if n < 1:
                raise ConfigError("plan.layout", f"{k}={n}: expected >= 1")
            setattr(spec, k, n)
        return spec


def split_layers(num_layers: int, pp: int, first: Optional[int] = None, last: Optional[int] = None) -> tuple:
    """Layers per stage under Megatron's uneven-split rules (first/last given, middle stages equal).

    Raises ConfigError when the split is impossible."""
    if pp == 1:
        if first not in (None, num_layers) or last not in (None, num_layers):
            raise ConfigError("plan.layout", f"first/last stage layer counts need pp > 1")
        return (num_layers,)
    rest, mid = num_layers, pp
    for name, v in (("first", first), ("last", last)):
        if v is not None:
            rest -= v
            mid -= 1
    if first is None and last is None and num_layers % pp:
        raise ConfigError("plan.layout", f"{num_layers} layers do not split evenly over pp={pp}; give first=/last=")
    if (mid == 0) != (rest == 0) or rest < 0:
        raise ConfigError("plan.layout", f"first={first}, last={last} leave {rest} layers for {mid} middle stages")
    if mid and (rest % mid or rest // mid < 1):
        raise ConfigError("plan.layout", f"{rest} middle layers do not split evenly over {mid} middle stages")
    per = rest // mid if mid else 0
    out = [per] * pp
    if first is not None:
        out[0] = first
    if last is not None:
        out[-1] = last
    return tuple(out)


def candidate_splits(num_layers: int, pp: int, window: int = 3) -> list[tuple]:
    """Uneven splits the search tries: middle stages get n or n +- 1 layers (n = L / pp rounded),
    first and last stages within ``window`` layers of the middle count. The even split first."""
    if pp == 1:
        return [(num_layers,)]
    out = []
    if num_layers % pp == 0:
        out.append((num_layers // pp,) * pp)
    if pp == 2:
        base = num_layers // 2
        for f in range(max(1, base - window), min(num_layers - 1, base + window + 1) + 1):
            s = (f, num_layers - f)
            if s not in out and s[1] >= 1:
                out.append(s)
        return out
    n = num_layers / pp
    pers = sorted({max(1, math.floor(n) - 1), max(1, math.floor(n)), math.ceil(n), math.ceil(n) + 1})
    for per in pers:
        rest = num_layers - per * (pp - 2)
        for f in range(max(1, per - window), per + window + 1):
            la = rest - f
            if 1 <= la and abs(la - per) <= window:
                s = (f,) + (per,) * (pp - 2) + (la,)
                if s not in out:
                    out.append(s)
    if not out:
        # nothing near-balanced exists (e.g. 61 layers over 32 stages): the most balanced
        # first/last pair for each middle count
        for per in range(1, num_layers // (pp - 2) + 1):
            rest = num_layers - per * (pp - 2)
            if rest >= 2:
                f = -(-rest // 2)
                out.append((f,) + (per,) * (pp - 2) + (rest - f,))
    return out
