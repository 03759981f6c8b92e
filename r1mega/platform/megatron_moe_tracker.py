"""Process-global MoE/MTP state in Megatron-Core 0.16 that breaks when several models (or a backward
outside the pipeline schedule) share a process. Both fixes apply on any device.

1. The MoE aux-loss tracker is process-global, and each loss entry is sized by the
``num_layers`` of the first model that logs into it. A later model with more layers (MTP on after a
model without it, a 4-layer model after a 2-layer one: the reference policy, a student, tests) fails
with ``IndexError: index 4 is out of bounds for dimension 0 with size 4`` in
``save_to_aux_losses_tracker``. Fix: grow the entry to the larger size first.
2. ``MoEAuxLossAutoScaler`` / ``MTPLossAutoScaler`` keep a class-level loss scale. A backward outside the
   schedule creates it as a 0-d tensor; the schedule's later ``set_loss_scale`` copies a ``[1]`` tensor into
   it in place: ``RuntimeError: output with shape [] doesn't match the broadcast shape [1]``. Fix: replace
   the stored scale when the shapes differ (copy in place otherwise, as Megatron intends).
"""
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

    from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler

    for scaler in (MU.MoEAuxLossAutoScaler, MTPLossAutoScaler):
        def set_loss_scale(scale, _cls=scaler):
            cur = _cls.main_loss_backward_scale
            if cur is None or cur.shape != scale.shape:
                _cls.main_loss_backward_scale = scale
            else:
                cur.copy_(scale)

        scaler.set_loss_scale = staticmethod(set_loss_scale)
    _done = True
