"""Router replay for MoE RL: record the experts each token was routed to, and force a later forward
to route the same way (R2: the trainer's old-log-prob forward records; R3: the rollout engine records).

Routing is Megatron-Core's own: every ``TopKRouter`` of a model built with
``moe_enable_routing_replay=True`` holds a ``megatron.core.transformer.moe.router_replay.RouterReplay``.
Its ``RECORD`` action keeps the top-k expert ids the router chose; ``REPLAY_FORWARD`` takes given ids
instead of choosing (the routing weights are still the current router's scores, gathered at those
ids, so gradients flow through the router as usual). Nothing here computes a routing.

A batch carries routing as ``routed_experts [B, S, L, K]``: for row ``i`` and position ``t`` the
``K`` global expert ids that ``tokens[i, t]`` went to in each of the model's ``L`` MoE layers
(decoder layers ``first_k_dense_replace .. num_layers-1``, in order), ``uint8`` when the model
has at most 256 experts, else ``int16``. It is per-token, so padding, data-parallel sharding,
microbatch slicing, sorting and trimming (:mod:`r1mega.train.batching`) carry it like ``tokens``.
A slot that was never recorded (padding; the last token of a sequence, which the engine never
feeds back) holds repeated ids (zeros); a real top-k never does, and such slots replay experts
``0..K-1``: no log-prob the loss reads depends on them (causal attention).

Where the ids enter a router: Megatron flattens a microbatch's ``[s, b]`` tokens sequence-major
before routing, and under sequence parallelism each tensor-parallel rank routes its contiguous
``s / TP`` share of the sequence. Under full activation recompute (``parallel.recompute: full``) Megatron
re-runs every router in the backward: the engine leaves each replayed microbatch's ids queued in Megatron's
``REPLAY_BACKWARD`` list and switches the routers to it after the forward (:func:`replay_in_backward`), so the
recompute routes exactly as the forward did; selective recompute holds no router. Context parallelism cannot
run on these machines.
"""
from __future__ import annotations

from typing import Optional

import torch


def routing_dtype(num_experts: int) -> torch.dtype:
    """The narrowest integer type that holds every expert id."""
    return torch.uint8 if num_experts <= 256 else torch.int16


def moe_layer_count(model_cfg) -> int:
    """``L``: the model's MoE decoder layers (the MTP layers are not part of RL's model)."""
    return max(0, model_cfg.num_layers - model_cfg.first_k_dense_replace) if model_cfg.is_moe else 0


def routing_bytes(tokens: int, model_cfg) -> int:
    """Bytes the routing of ``tokens`` tokens takes: tokens x MoE layers x top-k x id size."""
    item = torch.empty((), dtype=routing_dtype(model_cfg.n_routed_experts)).element_size()
    return tokens * moe_layer_count(model_cfg) * model_cfg.num_experts_per_tok * item


def routers(chunks, first_dense: int, allow_none: bool = False) -> list:
    """``(moe_index, RouterReplay)`` of this rank's MoE decoder layers, by global layer order
    (``moe_index = layer_number - 1 - first_dense``; a pipeline stage holds a slice of them, and with
    ``allow_none`` possibly none: a stage of dense layers only)."""
    from megatron.core.transformer.moe.router import TopKRouter

    out = []
    for chunk in chunks:
        for name, m in chunk.named_modules():
            if isinstance(m, TopKRouter) and m.router_replay is not None and ".mtp." not in f".{name}":
                out.append((m.layer_number - 1 - first_dense, m.router_replay))
    if not out and not allow_none:
        raise ValueError("router replay: the model has no MoE router built with moe_enable_routing_replay")
    return sorted(out, key=lambda x: x[0])


def _local_share(x: torch.Tensor, sequence_parallel: bool) -> torch.Tensor:
    """``x [s, ...]``: this tensor-parallel rank's share of the sequence under sequence parallelism."""
    if not sequence_parallel:
        return x
    from megatron.core import parallel_state as ps

    tp, r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    n = x.size(0) // tp
    return x[r * n:(r + 1) * n]


def set_replay(layer_routers: list, routed: torch.Tensor, sequence_parallel: bool, keep_queued: bool = False) -> None:
    """Make every router replay ``routed [b, s, L, K]`` (a microbatch) in its next forward. Megatron's
    RouterReplay also queues the ids for ``REPLAY_BACKWARD``; ``keep_queued`` keeps the ids of earlier
    microbatches whose backward (with its recompute) has not run yet (:func:`replay_in_backward`)."""
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    k = routed.size(-1)
    idx = routed.long().transpose(0, 1)  # [s, b, L, K]: the routers' token order is sequence-major
    if k > 1:  # never recorded: replay experts 0..K-1 (module doc)
        unset = (idx == idx[..., :1]).all(-1, keepdim=True)
        idx = torch.where(unset, torch.arange(k, device=idx.device), idx)
    idx = _local_share(idx, sequence_parallel)
    for layer, rr in layer_routers:
        if not keep_queued:
            rr.clear_indices()
        rr.set_target_indices(idx[:, :, layer].reshape(-1, k).contiguous())
        rr.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)


def replay_in_backward(layer_routers: list) -> None:
    """After a replayed training forward under full recompute: Megatron re-runs every layer's forward in the
    backward, router included, and ``REPLAY_BACKWARD`` makes each router take the oldest queued ids instead of
    routing again (backwards run in the order of their forwards, in every Megatron schedule)."""
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    for _, rr in layer_routers:
        rr.set_router_replay_action(RouterReplayAction.REPLAY_BACKWARD)


def start_record(layer_routers: list) -> None:
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    for _, rr in layer_routers:
        rr.clear_indices()
        rr.set_router_replay_action(RouterReplayAction.RECORD)


def stop(layer_routers: list) -> None:
    """Back to ordinary routing (and drop the ids: nothing stays alive between forwards)."""
    for _, rr in layer_routers:
        rr.clear_router_replay_action()
        rr.clear_indices()


def take_recorded(layer_routers: list, b: int, num_layers: int, dtype: torch.dtype,
                  sequence_parallel: bool) -> torch.Tensor:
    """The ids the routers recorded in the last forward of ``b`` rows: ``[b, s, L, K]`` (``L`` = the
    model's MoE layers; a layer this rank does not hold stays 0)."""
    recs = [(layer, rr.get_recorded_indices()) for layer, rr in layer_routers]
    if any(r is None for _, r in recs):
        raise RuntimeError("router replay: a router recorded nothing (was the forward run with start_record?)")
    k = recs[0][1].size(-1)
    if sequence_parallel:
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

        recs = [(layer, gather_from_sequence_parallel_region(r.view(-1, b, k))) for layer, r in recs]
    s = recs[0][1].numel() // (b * k)
    out = torch.zeros(s, b, num_layers, k, dtype=dtype)
    for layer, r in recs:
        out[:, :, layer] = r.reshape(s, b, k).to("cpu", dtype)
    return out.transpose(0, 1).contiguous()


def agreement(recorded: torch.Tensor, chosen: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Fraction of (token, layer) slots whose expert *sets* agree (order within the top-k is free);
    ``mask [B, S]`` selects the tokens."""
    a, _ = recorded.long().sort(-1)
    c, _ = chosen.long().sort(-1)
    same = (a == c).all(-1).float()  # [B, S, L]
    if mask is not None:
        return float((same * mask[..., None]).sum() / (mask.sum() * same.size(-1)).clamp_min(1))
    return float(same.mean())
