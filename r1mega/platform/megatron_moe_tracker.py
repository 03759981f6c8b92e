"""Megatron-Core 0.16's MoE aux-loss tracker is process-global, and each loss entry is sized by the
``num_layers`` of the first model that logs into it. A later model with more layers (MTP on after a
model without it, a 4-layer model after a 2-layer one: the reference policy, a student, tests) fails
with ``IndexError: index 4 is out of bounds for dimension 0 with size 4`` in
``save_to_aux_losses_tracker``. Fix (any device): grow the entry to the larger size first."""
from __future__ import annotations

_done = False


def apply() -> None:
    global _done
    if _done:
        return
    import torch
    import megatron.core.transformer.moe.moe_utils as MU
    import megatron.core.transformer.moe.router as R

    orig = MU.save_to_aux_losses_tracker

    def save_to_aux_losses_tracker(name, loss, layer_number, num_layers, *args, **kwargs):
        entry = MU.get_moe_layer_wise_logging_tracker().get(name)
        if entry is not None and entry["values"].numel() < num_layers:
            v = entry["values"]
            entry["values"] = torch.cat([v, v.new_zeros(num_layers - v.numel())])
        return orig(name, loss, layer_number, num_layers, *args, **kwargs)

    MU.save_to_aux_losses_tracker = save_to_aux_losses_tracker
    R.save_to_aux_losses_tracker = save_to_aux_losses_tracker
    _done = True
