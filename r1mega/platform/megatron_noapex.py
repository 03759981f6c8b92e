"""Megatron-Core 0.16 optimizer checkpoints with torch.optim.Adam (no Apex / Transformer Engine).

Applies wherever Megatron falls back to torch optimizers (every CPU machine, and a GPU machine
without TE), independent of the device. torch's Adam keeps a per-parameter ``state["step"]``
that FusedAdam does not, and two Megatron code paths do not expect it:

1. ``DistributedOptimizer.state_dict()`` asserts one ``step`` over all param states, so the
   *loading* template of a never-stepped optimizer fails (``assert len(steps) == 1``).
   Fix: :func:`materialise_adam_state` gives fresh params zero state with a step first.
2. ``load_parameter_state_from_fully_reshardable`` copies every key of the live state, ``step``
   included, from the checkpoint's per-param tensors, which carry only param/exp_avg/exp_avg_sq
   (``KeyError: 'step'``). The step is restored from the param groups by ``load_state_dict``.
   Fix: copy only the keys the checkpoint has.
3. ``DistributedOptimizer.load_state_dict`` gives every param state the *same* ``step`` tensor;
   torch's Adam increments it in place once per param, so after one step the bias corrections
   are wrong (resumed losses drift from the uninterrupted run from the second step on).
   Fix: give each param its own copy after loading.
"""
from __future__ import annotations

import torch

_done = False


def needed() -> bool:
    import megatron.core.optimizer.distrib_optimizer as D

    return not getattr(D, "HAVE_APEX_OR_TE", False)


def apply() -> None:
    global _done
    if _done or not needed():
        return
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    orig = DistributedOptimizer._set_main_param_and_optimizer_states

    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        if not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            dst = {"param": main_param, **self.optimizer.state[main_param]}
            for key, src in tensors.items():
                if key in dst and key != "step":
                    dst[key].copy_(src)
            return
        return orig(self, model_param, tensors)

    DistributedOptimizer._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states
    orig_load = DistributedOptimizer.load_state_dict

    def load_state_dict(self, state_dict):
        orig_load(self, state_dict)
        for st in self.optimizer.state.values():
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].clone()

    DistributedOptimizer.load_state_dict = load_state_dict
    _done = True


def materialise_adam_state(optimizer) -> None:
    """Zero Adam state (with ``step``) for params that have none; the load overwrites it."""
    if not needed():
        return
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = sub.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                st = inner.state[p]
                if "step" not in st:
                    st.setdefault("exp_avg", torch.zeros_like(p.data))
                    st.setdefault("exp_avg_sq", torch.zeros_like(p.data))
                    st["step"] = torch.tensor(0.0)
