"""Megatron-Core 0.16.1's selective recompute without Transformer Engine (any device).

``tensor_parallel.CheckpointWithoutOutput(fp8=False)`` sets ``self.fp8 = fp8 is not None``: True for
``fp8=False``, the default, which is how ``TransformerLayer`` builds the checkpoints of the ``layernorm``
recompute module. Its forward then asks Transformer Engine's ``FP8GlobalStateManager``, a name that only
exists when TE imported: ``NameError: name 'FP8GlobalStateManager' is not defined`` on the first training
forward with ``parallel.recompute: selective``. Without TE there is no FP8 at all, so the fix turns the flag
off after Megatron's own ``__init__``; nothing else of the checkpoint changes.
"""
from __future__ import annotations

_done = False


def apply() -> None:
    global _done
    if _done:
        return
    from megatron.core.tensor_parallel import random

    if random.HAVE_TE:  # TE imported: Megatron's own path works (its FP8 state says "off")
        _done = True
        return
    orig_init = random.CheckpointWithoutOutput.__init__

    def __init__(self, fp8=False):
        orig_init(self, fp8)
        self.fp8 = False  # no Transformer Engine, no FP8

    random.CheckpointWithoutOutput.__init__ = __init__
    _done = True
