"""Refit: stream the trainer's weights into the colocated vLLM engine after each update.

Input: buckets ``[(hf_name, full tensor), ...]`` in Hugging Face checkpoint names and layout, as
:func:`r1mega.bridge.export_hf_weights` yields them (each at most ``rollout.refit_bucket_mb``).
Every vLLM rank receives the full tensors and its weight loaders keep their own TP shard.

Three transports, one result:

``stream`` (default, every device)
    The engine runs in this process (colocated, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the
    buckets are handed over *by reference*: one ``reload_weights`` call consumes a lazy iterator
    over all buckets, pulling the next bucket from the bridge only when it needs it. One call per
    refit is required, not one per bucket: vLLM's in-place reload processes a layer when all of
    its tensors have arrived *within one call*; a layer whose tensors straddle two calls (a fused
    MoE layer, a QKV projection) is rebuilt from half its weights (measured: 6.5 nats off).
``buckets``
    The same reload split into begin / one RPC per bucket / end, using the pieces vLLM's
    ``reload_weights`` is made of (``initialize_layerwise_reload``, ``model.load_weights``,
    ``finalize_layerwise_reload``; vLLM 0.3x internals). In-process it also passes tensors by
    reference; it exists as the skeleton of ``ipc`` and is tested on CPU against ``stream``.
``ipc`` (GPU only; exercised only on a machine with a GPU and an out-of-process engine core)
    For an engine core in *another process on the same GPU*: each bucket is packed into one
    contiguous device buffer (:func:`pack_bucket`) and shared as a CUDA IPC handle; the worker
    maps it without a copy (:func:`unpack_bucket` views) and loads from it. The sender keeps the
    buffer alive until the (blocking) RPC returns.

On vLLM-CPU every reload is wrapped so that the fused-MoE layers are padded and re-packed for the
CPU kernel (:func:`r1mega.platform.vllm_settings.begin_cpu_moe_reload`; without it they are
silently wrong), and a tied output layer is re-packed from the embedding it shares
(:func:`r1mega.platform.vllm_tied.reprocess_tied_layers`). After the reload the prefix cache is reset so that no KV block computed with the
old weights is reused. On vLLM-CPU an MLA model whose ``kv_lora_rank + qk_rope_head_dim`` is below
the kernels' 576 is served zero-padded: :func:`pad_mla_buckets` (:func:`pad_mla_latent`).
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator, Optional

import torch

from .engine import RefitStats

_ALIGN = 256  # byte alignment of each tensor inside a packed bucket


# --------------------------------------------------------------------------- buckets
def bucketize(items, bucket_bytes: int) -> Iterator[list]:
    """``(name, tensor)`` pairs (or a state dict) in buckets of at most ``bucket_bytes`` (a larger
    tensor comes alone), like :func:`r1mega.bridge.export_hf_weights`."""
    if isinstance(items, dict):
        items = items.items()
    bucket, size = [], 0
    for name, t in items:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


def trainer_buckets(trainer_engine, bucket_bytes: int) -> Iterator[list]:
    """The trainer's weights as HF buckets (collective over all trainer ranks: consume it fully)."""
    from r1mega.bridge import export_hf_weights
    from r1mega.train.offload import require_resident

    require_resident(trainer_engine, "refit", parts=("weights",))  # (rollout.offload_trainer)
    return export_hf_weights(trainer_engine, trainer_engine.model_cfg, trainer_engine.parallel,
                             bucket_bytes=bucket_bytes, include_mtp=False)


def pad_mla_latent(name: str, t: torch.Tensor, L: int, P: int, R: int) -> torch.Tensor:
    """One HF tensor of an MLA model with kv latent ``L`` (rope key ``R``) as the tensor of the
    equivalent model whose latent has ``P`` extra zero dims (``L + P``); other tensors pass as they are.

    * ``kv_a_proj_with_mqa`` ``[L+R, h]`` (rows: latent, then rope key): P zero rows after the latent,
      so the padded latent dims are exactly 0;
    * ``kv_b_proj`` ``[heads*(nope+v), L]``: P zero columns (the pad dims feed nothing; vLLM's
      absorbed ``W_UK``/``W_UV`` get zero rows);
    * ``kv_a_layernorm`` ``[L]``: RMSNorm over L+P dims of which P are 0 divides by
      ``sqrt(S/(L+P) + eps) = sqrt(L/(L+P)) * sqrt(S/L + eps*(L+P)/L)`` (S = sum of squares), so the
      real weights are scaled by ``sqrt(L/(L+P))`` and the pad weights are 0. Exact except that the
      norm's epsilon becomes ``eps*(L+P)/L`` (1e-6 -> 8e-6 at L=64, P=448): the normalised latent
      changes by a relative ``~eps*P/(2L) / mean(x**2)`` (3.5e-6 for a unit-scale latent).
    """
    if name.endswith("self_attn.kv_a_proj_with_mqa.weight"):
        if t.shape[0] != L + R:
            raise ValueError(f"{name}: {t.shape[0]} rows, expected kv_lora_rank + qk_rope_head_dim = {L} + {R}")
        return torch.cat([t[:L], t.new_zeros((P,) + tuple(t.shape[1:])), t[L:]])
    if name.endswith("self_attn.kv_b_proj.weight"):
        return torch.cat([t, t.new_zeros(t.shape[0], P)], dim=1)
    if name.endswith("self_attn.kv_a_layernorm.weight"):
        return torch.cat([t * (L / (L + P)) ** 0.5, t.new_zeros(P)])
    return t


def pad_mla_buckets(buckets: Iterable, model_cfg, pad: int) -> Iterator[list]:
    """:func:`pad_mla_latent` over every tensor of ``buckets``, lazily (one bucket at a time)."""
    L, R = model_cfg.kv_lora_rank, model_cfg.qk_rope_head_dim
    for bucket in buckets:
        yield [(name, pad_mla_latent(name, t, L, pad, R)) for name, t in bucket]


class _Counted:
    """Flattens buckets into ``(name, tensor)`` pairs lazily, counting what passes."""

    def __init__(self, buckets: Iterable):
        self.buckets = buckets
        self.bytes = self.tensors = self.nbuckets = 0
        self.names: set = set()

    def count(self, bucket: list) -> list:
        self.nbuckets += 1
        for name, t in bucket:
            self.bytes += t.numel() * t.element_size()
            self.tensors += 1
            self.names.add(name)
        return bucket

    def __iter__(self):
        for bucket in self.buckets:
            yield from self.count(bucket)

    def stats(self, seconds: float) -> RefitStats:
        return RefitStats(seconds=seconds, bytes=self.bytes, tensors=self.tensors, buckets=self.nbuckets)


# ----------------------------------------------------------------- packed buckets (IPC)
def pack_bucket(bucket: list, device=None) -> tuple[torch.Tensor, list]:
    """One contiguous uint8 buffer holding every tensor of the bucket, and the metadata
    ``[(name, dtype, shape, offset)]`` to view them back (:func:`unpack_bucket`)."""
    metas, offset = [], 0
    for name, t in bucket:
        offset = -(-offset // _ALIGN) * _ALIGN
        metas.append((name, t.dtype, tuple(t.shape), offset))
        offset += t.numel() * t.element_size()
    device = device if device is not None else (bucket[0][1].device if bucket else "cpu")
    flat = torch.empty(max(offset, 1), dtype=torch.uint8, device=device)
    for (name, t), (_, _, _, off) in zip(bucket, metas):
        n = t.numel() * t.element_size()
        flat[off:off + n].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))
    return flat, metas


def unpack_bucket(flat: torch.Tensor, metas: list) -> list:
    """Views of the tensors inside a packed buffer (no copy)."""
    out = []
    for name, dtype, shape, off in metas:
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        out.append((name, flat[off:off + n].view(dtype).view(shape)))
    return out


# ------------------------------------------------------------- worker-side functions
# Called through LLM.collective_rpc(fn, ...): vLLM runs fn(worker, *args) on every worker.
def _worker_model(worker):
    return worker.model_runner.get_model()


def _begin_reload(worker) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        initialize_layerwise_reload(_worker_model(worker))


def _load_bucket(worker, bucket: list) -> None:
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config):
        _worker_model(worker).load_weights(iter(bucket))


def _load_ipc_bucket(worker, handle, metas: list) -> None:
    func, args = handle
    args = list(args)
    args[6] = torch.cuda.current_device()  # rebuild_cuda_tensor's device index: this worker's GPU
    flat = func(*args)
    _load_bucket(worker, unpack_bucket(flat, metas))
    torch.cuda.synchronize()
    del flat


def _end_reload(worker) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        finalize_layerwise_reload(_worker_model(worker), worker.model_config)


_SAVED_MOE: dict = {}  # worker-side state between _begin_moe and _end_moe (per process)


def _begin_moe(worker) -> int:
    from r1mega.platform.vllm_settings import begin_cpu_moe_reload

    _SAVED_MOE[id(worker)] = begin_cpu_moe_reload(_worker_model(worker))
    return len(_SAVED_MOE[id(worker)])


def _reprocess_tied(worker) -> list:
    from r1mega.platform.vllm_tied import reprocess_tied_layers

    return reprocess_tied_layers(_worker_model(worker))


def _end_moe(worker) -> int:
    from r1mega.platform.vllm_settings import end_cpu_moe_reload

    return end_cpu_moe_reload(_worker_model(worker), _SAVED_MOE.pop(id(worker), {}))


def release_reload_state(worker) -> int:
    """Drop vLLM's per-layer reload records of this worker's model; returns how many there were.

    vLLM's in-place reload keeps a record per layer (``layerwise.LAYERWISE_INFO``, a WeakKeyDictionary keyed
    by the layer) holding the restore metadata and the kernel-format tensors. Their values still reference
    their layers (bound weight loaders), so the weak keys never die: after ``shutdown`` the whole model and
    the kernel copies stayed in memory, one model per engine started in the process (measured on
    SmolLM2-135M: +1.0-1.3 GB of RSS per eval stage of a pipeline, 14.4 GB peak for ``make smollm2``)."""
    from vllm.model_executor.model_loader.reload import layerwise

    n = 0
    for module in _worker_model(worker).modules():
        n += layerwise.LAYERWISE_INFO.pop(module, None) is not None
        layerwise.LOADING_LAYERS.discard(module)
    return n


# ------------------------------------------------------------------------- refit
def engine_in_process(llm) -> bool:
    """True when vLLM's engine core (and its worker) runs in this process."""
    return hasattr(llm.llm_engine, "model_executor")


def refit_vllm(llm, buckets: Iterable, settings, transport: Optional[str] = None) -> RefitStats:
    """Load ``buckets`` into ``llm`` in place; returns what moved and how long it took.

    ``transport`` None picks ``stream`` for an in-process engine and ``ipc`` for an engine core in
    another process on the GPU (see the module docstring).
    """
    if transport is None:
        transport = "stream" if engine_in_process(llm) else "ipc"
    if transport == "ipc" and not settings.cuda_ipc:
        raise RuntimeError("CUDA-IPC refit needs a GPU; an engine core in another process on the CPU backend "
                           "cannot be refitted (run vLLM in-process: VLLM_ENABLE_V1_MULTIPROCESSING=0)")
    counted = _Counted(buckets)
    t0 = time.perf_counter()
    if settings.moe_repack_after_reload:
        llm.collective_rpc(_begin_moe)
    try:
        if transport == "stream":
            llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(counted)})
        elif transport in ("buckets", "ipc"):
            llm.collective_rpc(_begin_reload)
            for bucket in counted.buckets:
                bucket = counted.count(bucket)
                if transport == "buckets":
                    llm.collective_rpc(_load_bucket, args=(bucket,))
                else:
                    from torch.multiprocessing.reductions import reduce_tensor

                    flat, metas = pack_bucket(bucket)
                    llm.collective_rpc(_load_ipc_bucket, args=(reduce_tensor(flat), metas))
                    del flat  # the RPC returned: every worker is done with the buffer
            llm.collective_rpc(_end_reload)
        else:
            raise ValueError(f"unknown refit transport {transport!r} (stream, buckets, ipc)")
    finally:
        if settings.moe_repack_after_reload:  # also after a failed reload: untouched layers get their kernels back
            reprocessed = llm.collective_rpc(_end_moe)
    if settings.moe_repack_after_reload and any(".experts." in n for n in counted.names) and not all(reprocessed):
        raise RuntimeError("refit loaded expert weights but no fused-MoE layer was re-processed (vLLM's "
                           "reload changed?): the CPU MoE kernel would read unpacked weights")
    if settings.reprocess_tied_after_reload:  # vLLM-CPU: the tied lm_head's packed GEMM kernel is stale
        redone = llm.collective_rpc(_reprocess_tied)
        if not all(redone):
            raise RuntimeError("refit of a tied-embedding model found no layer sharing the embedding's weight in "
                               "the engine (vLLM's tying changed?): its output layer would keep stale weights")
    llm.reset_prefix_cache()
    return counted.stats(time.perf_counter() - t0)
