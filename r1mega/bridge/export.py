"""Megatron -> Hugging Face: stream full, unsharded HF tensors out of a (TP/PP/EP-)sharded model.

Collective: every rank of the trainer calls :func:`export_hf_weights` with the same arguments and
consumes the iterator to the end, in step. Per weight, in a fixed order:

1. the pipeline stage that owns it all-gathers its tensor-parallel shards (routed experts: over
   the expert-TP group), in the TP group of every rank of that stage;
2. routed experts: for local index j, EP rank r broadcasts expert ``r * experts_per_rank + j``
   over the EP group, one expert at a time;
3. the full tensor is sent from the owning stage to the receiving ranks of the other stages
   (broadcast over the PP group when every rank receives; point-to-point to ``target`` ranks).

Only one weight (plus the bucket being filled) is materialised at a time on any rank.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Union

import torch
import torch.distributed as dist

from r1mega.config.model import ModelConfig
from r1mega.config.parallel import ParallelConfig

from .local import LocalParam, ep_rank_size, local_params
from .table import _EXPERT, BridgeError, BridgeTable, mapping_table, shards_to_full, to_hf

Target = Union[None, int, Iterable[int]]
_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.float8_e4m3fn)}


def _tp_gather(lp: LocalParam) -> torch.Tensor:
    t = lp.tensor.detach()
    if lp.dim is None:
        return t
    shards = [torch.empty_like(t) for _ in range(lp.group_size)]
    dist.all_gather(shards, t.contiguous(), group=lp.group)
    return shards_to_full(lp.entry, shards, lp.dim)


def _with_expert(name: str, e: int) -> str:
    x = _EXPERT.match(name)
    return f"{x.group(1)}{e}{x.group(3)}"


class _Plan:
    """Who owns what: this stage's items (in production order) and every stage's list."""

    def __init__(self, locals_: list, table: BridgeTable):
        from megatron.core import parallel_state as ps

        self.distributed = dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.ep_rank, self.ep_size = ep_rank_size()
        self.pp_size = ps.get_pipeline_model_parallel_world_size() if self.distributed else 1
        self.stage = ps.get_pipeline_model_parallel_rank() if self.distributed else 0
        n_local = self.n_local = table.cfg.n_routed_experts // self.ep_size if table.cfg.is_moe else 0
        mine = []
        for lp in locals_:
            full = lp.entry.shape
            if lp.entry.expert is None:
                mine.append((lp.entry.megatron, full, str(lp.tensor.dtype)))
            else:
                j = lp.entry.expert - self.ep_rank * n_local
                mine += [(_with_expert(lp.entry.megatron, r * n_local + j), full, str(lp.tensor.dtype))
                         for r in range(self.ep_size)]
        self.pp_ranks = [self.rank]
        self.stages = [mine]
        if self.pp_size > 1:
            group = ps.get_pipeline_model_parallel_group()
            self.pp_group = group
            self.pp_ranks = dist.get_process_group_ranks(group)
            self.stages = [None] * self.pp_size
            dist.all_gather_object(self.stages, mine, group=group)
        # a weight held by two stages (the embedding next to MTP) belongs to the first
        seen, self.skip = set(), []
        for items in self.stages:
            self.skip.append({n for n, _, _ in items if n in seen})
            seen.update(n for n, _, _ in items)
        missing = [e.megatron for e in table.entries if e.megatron not in seen]
        if missing:
            raise BridgeError(f"{len(missing)} weights of the table are on no rank (e.g. {missing[:3]}); "
                              "include_mtp=True needs a model built with MTP layers")


def _produce(locals_: list, plan: _Plan, skip: set) -> Iterator[tuple]:
    """This stage's full tensors, in plan order (collective over TP/EP groups)."""
    from megatron.core import parallel_state as ps

    ep_group = ps.get_expert_model_parallel_group() if plan.ep_size > 1 else None
    ep_ranks = dist.get_process_group_ranks(ep_group) if ep_group is not None else []
    n_local = plan.n_local
    for lp in locals_:
        if lp.entry.megatron in skip:
            continue
        if lp.entry.expert is None:
            yield lp.entry.megatron, _tp_gather(lp)
            continue
        mine = _tp_gather(lp)
        j = lp.entry.expert - plan.ep_rank * n_local
        for r in range(plan.ep_size):
            buf = mine if r == plan.ep_rank else torch.empty_like(mine)
            if ep_group is not None:
                dist.broadcast(buf, src=ep_ranks[r], group=ep_group)
            yield _with_expert(lp.entry.megatron, r * n_local + j), buf


class _Delivery:
    """Moves a full tensor from its owning stage to the ranks that receive it."""

    def __init__(self, plan: _Plan, target: Target):
        self.plan = plan
        if target is None:
            self.targets = None
        else:
            self.targets = sorted({int(target)} if isinstance(target, int) else {int(t) for t in target})
            bad = [t for t in self.targets if not 0 <= t < plan.world]
            if bad:
                raise ValueError(f"target ranks {bad} outside the world of {plan.world}")
        self.receives = self.targets is None or plan.rank in self.targets
        self.where = {}
        if plan.pp_size > 1 and self.targets is not None:
            info = [None] * plan.world
            dist.all_gather_object(info, (plan.stage, plan.pp_ranks))
            self.where = {t: info[t] for t in self.targets}

    def __call__(self, full: Optional[torch.Tensor], stage: int, shape, dtype: str, device) -> Optional[torch.Tensor]:
        plan = self.plan
        if plan.pp_size == 1:
            return full if self.receives else None
        if self.targets is None:
            buf = full if stage == plan.stage else torch.empty(shape, dtype=_DTYPES[dtype], device=device)
            dist.broadcast(buf, src=plan.pp_ranks[stage], group=plan.pp_group)
            return buf
        for t in self.targets:
            t_stage, t_pp_ranks = self.where[t]
            if t_stage == stage:
                continue
            src = t_pp_ranks[stage]
            if plan.rank == src:
                dist.send(full.contiguous(), dst=t)
            elif plan.rank == t:
                full = torch.empty(shape, dtype=_DTYPES[dtype], device=device)
                dist.recv(full, src=src)
        return full if self.receives else None


def export_hf_weights(engine_or_chunks, model_cfg: ModelConfig, parallel_cfg: ParallelConfig,
                      bucket_bytes: int = 256 << 20, include_mtp: bool = False,
                      target: Target = None) -> Iterator[list]:
    """Yield buckets ``[(hf_name, tensor), ...]`` of full, unsharded tensors in HF layout.

    Collective (see the module docstring). ``target=None``: every rank receives every tensor;
    ``target=r`` (or a set of ranks): only those ranks receive, the iterator of every other rank
    yields nothing but must still be run to the end. A bucket holds at most ``bucket_bytes``
    (a larger tensor comes alone). Padded vocabulary rows are dropped. Tensors may be views of the
    live parameters (TP=1): copy them if you keep them past the next optimizer step.
    ``include_mtp`` adds the MTP layers as ``model.layers.{num_layers + k}.*`` (DeepSeek layout,
    with the ``embed_tokens``/``shared_head.head`` copies of the shared embedding and head).
    """
    del parallel_cfg  # the live layout is read from Megatron's parallel_state
    table = mapping_table(model_cfg, include_mtp=include_mtp)
    locals_ = local_params(engine_or_chunks, table)
    plan = _Plan(locals_, table)
    deliver = _Delivery(plan, target)
    copies = {}
    for copy, main in table.mtp_copies.items():
        copies.setdefault(main, []).append(copy)
    device = locals_[0].tensor.device if locals_ else torch.device("cpu")
    bucket, size = [], 0
    for stage, items in enumerate(plan.stages):
        produced = _produce(locals_, plan, plan.skip[stage]) if stage == plan.stage else None
        for name, shape, dtype in items:
            if name in plan.skip[stage]:
                continue
            full = None
            if produced is not None:
                got, full = next(produced)
                assert got == name, (got, name)
            full = deliver(full, stage, shape, dtype, device)
            if full is None:
                continue
            entry = table.megatron(name)
            if tuple(full.shape) != tuple(entry.shape):
                raise BridgeError(f"{name}: gathered shape {tuple(full.shape)}, the table expects {entry.shape}")
            for hf_name, piece in zip(entry.hf, to_hf(entry, full, model_cfg)):
                for n in [hf_name] + copies.get(hf_name, []):
                    nbytes = piece.numel() * piece.element_size()
                    if bucket and size + nbytes > bucket_bytes:
                        yield bucket
                        bucket, size = [], 0
                    bucket.append((n, piece))
                    size += nbytes
    if bucket:
        yield bucket


def hf_state_dict(engine, model_cfg: ModelConfig, parallel_cfg: ParallelConfig, include_mtp: bool = False,
                  target: Target = None) -> dict:
    """The whole HF state dict (cloned tensors) on the receiving ranks; for tests and small models."""
    return {n: t.clone() for bucket in export_hf_weights(engine, model_cfg, parallel_cfg, include_mtp=include_mtp,
                                                         target=target) for n, t in bucket}
