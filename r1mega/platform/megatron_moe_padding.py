"""Megatron-Core 0.16's MoE ``padding_mask`` (True = padding; ``[b, s]`` at ``GPTModel.forward``), made usable.
Both fixes apply on any device.

1. The aux-loss-free expert-bias count fails with a mask: ``TopKRouter._apply_expert_bias`` computes
   ``routing_map & ~padding_mask`` with ``routing_map [tokens, experts]`` and the flattened mask ``[tokens]``:
   ``RuntimeError: The size of tensor a (8) must match the size of tensor b (24)`` (a silently wrong count
   when tokens == experts). Fix: the mask broadcast over the experts.
2. With a mask, the sequence-wise balance loss divides every row's sum by the *mean* real length of the
   microbatch's rows (not the row's own), so its value depends on which rows share a microbatch (sorting
   rows by length moved it by 17%) and an all-padding microbatch gives 0/0 = NaN. Fix: DeepSeek-V3's
   per-sequence loss, each row normalised by its own real tokens (a row of padding only contributes 0),
   averaged over the microbatch's rows as Megatron does. Equal to Megatron's when no row has padding.
"""
from __future__ import annotations

_done = False


def apply() -> None:
    global _done
    if _done:
        return
    import torch
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region
    from megatron.core.transformer.moe.router import TopKRouter

    def _apply_expert_bias(self, routing_map, padding_mask=None):
        """Count this microbatch's non-padding tokens per expert (training only: not under no_grad)."""
        if self.enable_expert_bias and torch.is_grad_enabled():
            with torch.no_grad():
                if padding_mask is not None:
                    routing_map = routing_map & ~padding_mask.unsqueeze(-1)
                self.local_tokens_per_expert += routing_map.sum(dim=0)

    orig_seq_aux = TopKRouter._apply_seq_aux_loss

    def _apply_seq_aux_loss(self, probs, scores_for_aux_loss, routing_map, seq_length, bsz, with_padding_mask=False):
        """``mean_b  E * coeff / (topk * T_b^2) * sum_e P_be * c_be`` with row ``b``'s real tokens ``T_b``, its
        per-expert routed counts ``c_be`` and summed scores ``P_be`` (scores and map are 0 at padding)."""
        coeff = self.get_aux_loss_coeff("seq_aux_loss")
        if coeff == 0 or not with_padding_mask:
            return orig_seq_aux(self, probs, scores_for_aux_loss, routing_map, seq_length, bsz, with_padding_mask)
        E = self.config.num_moe_experts
        local = routing_map.reshape(seq_length, bsz, E).sum(0).float()           # [b, E] this rank's positions
        counts = reduce_from_tensor_model_parallel_region(local, self.tp_cp_group)  # whole sequences (SP/CP)
        tokens = counts.sum(-1) / self.topk                                      # [b] T_b
        scores = scores_for_aux_loss.reshape(seq_length, bsz, E).sum(0)
        per_row = (scores * counts).sum(-1) * (E * coeff / self.topk) / tokens.clamp(min=1) ** 2
        return self.attach_and_log_load_balancing_loss(probs, coeff, per_row.sum() / bsz, "seq_load_balancing_loss",
                                                       self.tp_cp_group, valid_token_count=local.sum() / self.topk)

    TopKRouter._apply_expert_bias = _apply_expert_bias
    TopKRouter._apply_seq_aux_loss = _apply_seq_aux_loss
    _done = True
