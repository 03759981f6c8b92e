"""Megatron-Core 0.16 multi-latent attention with *local* layer specs under TP > 1.

Applies whenever Transformer Engine is not used (every CPU machine, and a GPU without TE),
independent of the device.

Error fixed: wrong gradients of ``linear_kv_down_proj`` (and everything below it) at TP > 1,
found by the TP2-vs-TP1 parity test (grad norm off by 1e-4 relative at step 0, losses off by
~1e-3 after two steps). With the local spec the KV down-projection is a ColumnParallelLinear;
its output is all-gathered (``gather_from_tensor_model_parallel_region``) and split into the KV
latent and the shared RoPE key ``k_pos_emb``. ``k_pos_emb`` then feeds every head, but each TP
rank only holds its own heads, so its gradient there is a *partial* sum, while the gather's
backward just keeps this rank's column slice: the other ranks' head contributions are lost.
(The TE spec uses a duplicated linear plus a sequence-parallel gather whose backward
reduce-scatters, which sums correctly.)

Fix: for that one gather, a backward that all-reduces the RoPE-key columns over TP before slicing.
The latent columns are already complete and identical on every rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

_done = False


class _GatherKVLatent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, rope_dim):
        ctx.group, ctx.rope_dim, ctx.width = group, rope_dim, x.size(-1)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        rope = grad[..., -ctx.rope_dim:].contiguous()
        dist.all_reduce(rope, group=ctx.group)
        grad[..., -ctx.rope_dim:] = rope
        rank = dist.get_rank(ctx.group)
        return grad[..., rank * ctx.width:(rank + 1) * ctx.width].contiguous(), None, None


def apply() -> None:
    global _done
    if _done:
        return
    import megatron.core.transformer.multi_latent_attention as M
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear

    orig_method = M.MLASelfAttention.get_query_key_value_tensors
    orig_gather = M.gather_from_tensor_model_parallel_region

    def get_query_key_value_tensors(self, *args, **kwargs):
        group = self.tp_group
        if group is None or dist.get_world_size(group) == 1 or not isinstance(self.linear_kv_down_proj, ColumnParallelLinear):
            return orig_method(self, *args, **kwargs)
        # The KV gather is the method's last gather: the 2nd call with q LoRA, else the 1st.
        kv_call = 1 if self.config.q_lora_rank is not None else 0
        calls = [0]

        def gather(x, *a, **k):
            i = calls[0]
            calls[0] += 1
            if i == kv_call:
                return _GatherKVLatent.apply(x, group, self.config.qk_pos_emb_head_dim)
            return orig_gather(x, *a, **k)

        M.gather_from_tensor_model_parallel_region = gather
        try:
            return orig_method(self, *args, **kwargs)
        finally:
            M.gather_from_tensor_model_parallel_region = orig_gather

    M.MLASelfAttention.get_query_key_value_tensors = get_query_key_value_tensors
    _done = True
