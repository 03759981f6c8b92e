"""Megatron-Core 0.16 on CPU-only torch: the whole compatibility layer, and the only one.

Applied by :func:`apply` only when CUDA is absent (``r1mega.platform.init`` decides). Each patch
names the error it fixes. Scope, narrowest first:

* Most fixes are *megatron module attributes*: every loaded ``megatron.core.*`` module that holds
  the ``torch`` module gets :class:`_CpuTorch` instead, a pass-through proxy whose ``torch.cuda``
  is a CPU stand-in and whose tensor factories map ``device="cuda"`` to the CPU. Code outside
  megatron (ours, vLLM, transformers) still sees the real ``torch``.
* Two fixes must touch ``torch.Tensor`` methods, because megatron calls them on tensors:
  ``Tensor.cuda`` (identity, CPU-only torch cannot move to CUDA anyway) and ``Tensor.type()``
  (reports ``torch.cuda.*`` strings, *only* when the caller is a megatron module).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import time
import types

import torch

APPLIED: list[str] = []
_done = False

# Megatron modules whose import must precede the sweep, so that their `torch` gets the proxy.
_MODULES = [
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.rerun_state_machine",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.data",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.tensor_parallel.cross_entropy",
    "megatron.core.transformer.utils",
    "megatron.core.transformer.module",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.multi_latent_attention",
    "megatron.core.transformer.mlp",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.transformer_block",
    "megatron.core.transformer.multi_token_prediction",
    "megatron.core.transformer.torch_norm",
    "megatron.core.transformer.moe.moe_layer",
    "megatron.core.transformer.moe.moe_utils",
    "megatron.core.transformer.moe.router",
    "megatron.core.transformer.moe.experts",
    "megatron.core.transformer.moe.shared_experts",
    "megatron.core.transformer.moe.token_dispatcher",
    "megatron.core.fusions.fused_softmax",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.common.embeddings.yarn_rotary_pos_embedding",
    "megatron.core.models.common.language_module.language_module",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.gpt.gpt_layer_specs",
    "megatron.core.models.backends",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.pipeline_parallel.utils",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.optimizer",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.optimizer_param_scheduler",
    "megatron.core.dist_checkpointing.serialization",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.inference.engines.static_engine",
    "megatron.core.inference.text_generation_controllers.text_generation_controller",
    "megatron.core.inference.model_inference_wrappers.abstract_model_inference_wrapper",
    "megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper",
    "megatron.core.inference.communication_utils",
]


class _Event:
    """Stands in for torch.cuda.Event: wall-clock timing, everything else immediate."""

    def __init__(self, *a, **k):
        self._t = time.perf_counter()

    def record(self, *a, **k):
        self._t = time.perf_counter()

    def synchronize(self):
        pass

    def wait(self, *a, **k):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return (other._t - self._t) * 1e3


class _Stream:
    """Stands in for torch.cuda.Stream: CPU work is already ordered."""

    def __init__(self, *a, **k):
        pass

    def wait_stream(self, *a, **k):
        pass

    def wait_event(self, *a, **k):
        pass

    def record_event(self, *a, **k):
        return _Event()

    def synchronize(self):
        pass


_STREAM = _Stream()


def _noop(*a, **k):
    return None


class _CpuCuda(types.SimpleNamespace):
    """`torch.cuda` as megatron modules see it on a CPU-only build.

    Fixes "AssertionError: Torch not compiled with CUDA enabled" from: torch.cuda.current_device()
    (MLA rotary, router, experts, MTP, moe_utils), the CUDA RNG tracker
    (tensor_parallel.random.model_parallel_cuda_manual_seed -> torch.cuda.get_rng_state/manual_seed),
    torch.cuda.synchronize() (PP p2p, dist-ckpt preload); and "torch.cuda.Stream requires CUDA
    support" (alltoall token dispatcher). Anything not listed falls through to the real torch.cuda.
    """

    def __init__(self):
        super().__init__(
            current_device=lambda: "cpu",
            device_count=lambda: 0,
            is_available=lambda: False,
            synchronize=_noop,
            empty_cache=_noop,
            set_device=_noop,
            Stream=lambda *a, **k: _STREAM,
            current_stream=lambda *a, **k: _STREAM,
            default_stream=lambda *a, **k: _STREAM,
            stream=lambda *a, **k: contextlib.nullcontext(),
            Event=_Event,
            get_rng_state=lambda *a, **k: torch.get_rng_state(),
            set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
            manual_seed=lambda seed: torch.manual_seed(seed),
            manual_seed_all=lambda seed: torch.manual_seed(seed),
            memory_allocated=lambda *a, **k: 0,
            max_memory_allocated=lambda *a, **k: 0,
            memory_reserved=lambda *a, **k: 0,
            nvtx=types.SimpleNamespace(range_push=_noop, range_pop=_noop, mark=_noop,
                                       range=lambda *a, **k: contextlib.nullcontext()),
        )

    def __getattr__(self, name):  # only called for names not set above
        return getattr(torch.cuda, name)


def _to_cpu_kwargs(kw: dict) -> dict:
    d = kw.get("device")
    if d is not None and "cuda" in str(d):
        kw["device"] = "cpu"
    if kw.get("pin_memory"):
        kw["pin_memory"] = False
    return kw


class _CpuTorch(types.ModuleType):
    """The `torch` module as megatron modules see it on CPU (see the module docstring).

    Fixes hard-coded ``device="cuda"`` factories, e.g. pipeline_parallel/schedules.py
    ``torch.zeros([], dtype=torch.int, device="cuda")``, optimizer found_inf/scale tensors,
    clip_grads, param_and_grad_buffer and transformer/utils.get_default_causal_mask.
    """

    _FACTORIES = frozenset({"zeros", "ones", "empty", "full", "tensor", "arange", "zeros_like", "ones_like",
                            "empty_like", "full_like", "rand", "randn", "randint", "as_tensor", "randperm"})

    def __init__(self):
        super().__init__("torch")
        object.__setattr__(self, "cuda", _CpuCuda())

    def __getattr__(self, name):
        attr = getattr(torch, name)
        if name in self._FACTORIES:
            @functools.wraps(attr)
            def factory(*a, **k):
                return attr(*a, **_to_cpu_kwargs(k))
            object.__setattr__(self, name, factory)
            return factory
        return attr


_CPU_TORCH = _CpuTorch()


def _sweep_modules() -> int:
    """Give every loaded megatron.core module that references the real torch the proxy."""
    n = 0
    for name, mod in list(sys.modules.items()):
        if name.startswith("megatron.core") and getattr(mod, "torch", None) is torch:
            mod.torch = _CPU_TORCH
            n += 1
    return n


def _patch_rng() -> None:
    """Fix: AssertionError (no CUDA) in CudaRNGStatesTracker.add/fork via _get/_set_cuda_rng_state,
    which index torch.cuda.default_generators directly. The tracker's states become CPU RNG states:
    model-parallel regions (dropout, init) fork the CPU generator exactly as they would the CUDA one."""
    import megatron.core.tensor_parallel.random as R

    R._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    R._set_cuda_rng_state = lambda new_state, *a, **k: torch.set_rng_state(new_state)


def _patch_mla_local_attention() -> None:
    """Fix: TypeError: DotProductAttention.__init__() got an unexpected keyword argument 'k_channels'
    (MLASelfAttention with the local spec). The local attention's math already handles q/k head dim
    != v head dim; only its output size must be v_channels * heads."""
    import megatron.core.models.backends as B
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class MLACompatDotProductAttention(DotProductAttention):
        def __init__(self, *args, k_channels=None, v_channels=None, **kw):
            super().__init__(*args, **kw)
            if v_channels is not None:
                self.hidden_size_per_partition = v_channels * self.num_attention_heads_per_partition

    B.LocalSpecProvider.core_attention = lambda self: MLACompatDotProductAttention


def _patch_mla_have_te() -> None:
    """Fix: TypeError: isinstance() arg 2 must be a type (MLASelfAttention). Without TE,
    megatron.core.extensions.transformer_engine still imports with mocks, so HAVE_TE is True there."""
    import megatron.core.transformer.multi_latent_attention as M

    M.HAVE_TE = False


def _patch_te_general_gemm() -> None:
    """Fix: NameError: name 'te_general_gemm' is not defined (moe_utils router gating; the name is
    only bound when the TE import succeeds)."""
    import megatron.core.transformer.moe.moe_utils as MU

    if not hasattr(MU, "te_general_gemm"):
        MU.te_general_gemm = None


def _patch_sp_norm() -> None:
    """Fix: AssertionError: sequence parallel not supported by torch LayerNorm (TP+SP without TE/apex).
    Build the torch norm with SP off and tag its params ``sequence_parallel=True`` so
    finalize_model_grads all-reduces their grads across TP, as it does for TE norms."""
    import megatron.core.transformer.torch_norm as TN

    orig_new = TN.WrappedTorchNorm.__new__

    def __new__(cls, config, hidden_size, eps=1e-5, **kw):
        if not config.sequence_parallel:
            return orig_new(cls, config, hidden_size, eps, **kw)
        object.__setattr__(config, "sequence_parallel", False)
        try:
            norm = orig_new(cls, config, hidden_size, eps, **kw)
        finally:
            object.__setattr__(config, "sequence_parallel", True)
        for p in norm.parameters():
            p.sequence_parallel = True
        return norm

    TN.WrappedTorchNorm.__new__ = staticmethod(__new__)


def _patch_a2a_splits() -> None:
    """Fix (EP>1, alltoall dispatcher): TypeError: all_to_all_single(): incompatible function
    arguments. moe_utils.maybe_move_tensor_to_cpu(as_numpy=True) converts only CUDA tensors, so on
    CPU the split sizes stay tensors, which gloo's all_to_all_single rejects."""
    import megatron.core.transformer.moe.moe_utils as MU
    import megatron.core.transformer.moe.token_dispatcher as TD

    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if torch.is_tensor(tensor):
            tensor = tensor.cpu()
            if as_numpy:
                tensor = tensor.numpy()
        return tensor

    MU.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    TD.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


def _patch_tensor_methods() -> None:
    """Two Tensor methods megatron calls on tensors (a module proxy cannot reach them).

    * Tensor.cuda -> identity. Fixes AssertionError in language_module.setup_embeddings_and_output_layer
      (``weight.data.cuda()``, PP>1 with MTP or tied embeddings). Harmless: a CPU-only torch has no CUDA.
    * Tensor.type() -> 'torch.cuda.<X>Tensor' for CPU tensors, only when called from megatron.core.
      Fixes ``assert param.grad.type() == 'torch.cuda.FloatTensor'`` (optimizer/clip_grads.py) and
      "Wrapped parameters must be one of torch.cuda.FloatTensor, ..." (optimizer.py, distrib_optimizer.py).
    """
    torch.Tensor.cuda = lambda self, *a, **k: self
    orig_type = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kw):
        if dtype is None and not kw:
            s = orig_type(self)
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron.core") and s.startswith("torch.") and not s.startswith("torch.cuda."):
                return "torch.cuda." + s[len("torch."):]
            return s
        return orig_type(self, dtype, non_blocking, **kw)

    torch.Tensor.type = type_


def apply() -> list[str]:
    """Apply every patch once (idempotent). Returns the list of what was applied."""
    global _done
    if _done:
        return APPLIED
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:  # a module moved in a newer megatron: say which, keep going
            APPLIED.append(f"skip {name}: {e}")
    n = _sweep_modules()
    APPLIED.append(f"torch -> _CpuTorch proxy in {n} megatron.core modules")
    for patch in (_patch_rng, _patch_mla_local_attention, _patch_mla_have_te, _patch_te_general_gemm,
                  _patch_sp_norm, _patch_a2a_splits, _patch_tensor_methods):
        patch()
        APPLIED.append(patch.__name__.lstrip("_"))
    _done = True
    return APPLIED


def resweep() -> int:
    """Give the proxy to megatron modules imported after :func:`apply` (safe to call repeatedly)."""
    return _sweep_modules() if _done else 0
