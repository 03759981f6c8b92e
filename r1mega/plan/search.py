"""Check, evaluate, enumerate and rank training layouts (docs/planner.md "Search").

Search space: TP in {1, 2, 4, 8} (inside a node), PP among the divisors of the GPU count
(<= layers), EP among the divisors of n_routed_experts, ETP in {1, TP}, CP from
``PlanInputs.search_cp``; DP derived. For each, the layer split (uneven first/last stage
allowed) that minimises the worst stage's peak, and, with ``recompute=auto``, the fastest
recompute mode that fits.
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from r1mega.config.base import ConfigError

from .inputs import GIB, RECOMPUTE_MODES, Layout, LayoutSpec, PlanInputs, candidate_splits, split_layers
from .generation import GenMemory, auto_rollout_tp, gen_memory, rollout_tp_error
from .memory import StageMemory, has_dense_layers, overflow_reasons, stage_memories
from .routing import RoutingCost, routing_cost
from .throughput import StepTime, step_time


@dataclass
class Evaluation:
    layout: Layout
    feasible: bool
    kind: str                                   # "fits" | "invalid" | "oom"
    reasons: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    stages: list = field(default_factory=list)  # StageMemory per pipeline stage
    gen: Optional[GenMemory] = None
    time: Optional[StepTime] = None
    routing: Optional[RoutingCost] = None       # R3 routing bytes (MoE models)
    world: int = 0
    mem_gib: float = 0.0

    @property
    def worst_stage(self) -> Optional[StageMemory]:
        return max(self.stages, key=lambda s: s.peak) if self.stages else None

    @property
    def peak(self) -> float:
        return self.worst_stage.peak if self.stages else float("inf")

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    @property
    def headroom_gib(self) -> float:
        return self.mem_gib - self.peak_gib

    def to_dict(self, stages: bool = True) -> dict:
        d = {"layout": self.layout.short(), "feasible": self.feasible, "kind": self.kind,
             "reasons": list(self.reasons), "notes": list(self.notes),
             "tp": self.layout.tp, "pp": self.layout.pp, "ep": self.layout.ep, "etp": self.layout.etp,
             "cp": self.layout.cp, "dp": self.layout.dp(self.world) if self.world else None,
             "edp": self.layout.edp(self.world) if self.world else None,
             "stages_layers": list(self.layout.stages), "recompute": self.layout.recompute,
             "megatron": self.layout.megatron_args(self.world) if self.world and self.kind != "invalid" else None,
             "config": self.layout.config_overrides() if self.kind != "invalid" else None}
        if self.stages:
            w = self.worst_stage
            d.update(peak_gib=self.peak_gib, headroom_gib=self.headroom_gib, worst_stage=w.index,
                     peak_phase=w.peak_phase)
            if stages:
                d["stages"] = [s.to_dict() for s in self.stages]
        if self.gen is not None:
            d["generation"] = self.gen.to_dict()
        if self.time is not None:
            d["time"] = self.time.to_dict()
        if self.routing is not None:
            d["router_replay"] = self.routing.to_dict()
        return d


def layout_errors(inp: PlanInputs, tp: int, pp: int, ep: int, etp: int, cp: int) -> list[str]:
    """Megatron-Core's constraints on a layout (and the batch it must split), as messages."""
    m, world = inp.model, inp.gpus
    errs = []
    if world % (tp * pp * cp):
        errs.append(f"world {world} % (TP*PP*CP = {tp * pp * cp}) != 0")
    if world % (etp * ep * pp):
        errs.append(f"world {world} % (ETP*EP*PP = {etp * ep * pp}) != 0")
    if m.num_attention_heads % tp:
        errs.append(f"attention heads {m.num_attention_heads} % TP {tp} != 0")
    if not m.mla:
        kv = m.num_key_value_heads or m.num_attention_heads
        if kv % tp:
            errs.append(f"KV heads {kv} % TP {tp} != 0")
    if has_dense_layers(m) and m.intermediate_size % tp:
        errs.append(f"intermediate_size {m.intermediate_size} % TP {tp} != 0")
    if m.is_moe:
        if m.n_routed_experts % ep:
            errs.append(f"routed experts {m.n_routed_experts} % EP {ep} != 0")
        if m.moe_intermediate_size % etp:
            errs.append(f"moe_intermediate_size {m.moe_intermediate_size} % ETP {etp} != 0")
        if m.n_shared_experts and (m.n_shared_experts * m.moe_intermediate_size) % tp:
            errs.append(f"shared expert FFN % TP {tp} != 0")
    elif ep != 1 or etp != 1:
        errs.append("EP/ETP > 1 needs an MoE model")
    if pp > m.num_layers:
        errs.append(f"PP {pp} > layers {m.num_layers}")
    if cp > 1 and inp.seq_len % (2 * cp):
        errs.append(f"seq_len {inp.seq_len} % (2*CP = {2 * cp}) != 0")
    if not errs:
        dp = world // (tp * pp * cp)
        if inp.minibatch_seqs % (dp * inp.micro_batch):
            errs.append(f"global batch {inp.minibatch_seqs} sequences % (DP {dp} * micro_batch "
                        f"{inp.micro_batch}) != 0")
    return errs


def resolve_rollout_tp(inp: PlanInputs) -> int:
    """The given rollout TP (checked against vLLM's head rules) or the smallest that fits."""
    if inp.rollout_tp is None:
        return auto_rollout_tp(inp)
    err = rollout_tp_error(inp.model, inp.rollout_tp)
    if err:
        raise ConfigError("plan.rollout_tp", err)
    return inp.rollout_tp


def _evaluate_fixed(inp: PlanInputs, layout: Layout, gen: GenMemory, with_time: bool = True) -> Evaluation:
    stages = stage_memories(inp, layout, gen)
    reasons = overflow_reasons(inp, stages)
    ev = Evaluation(layout, not reasons, "oom" if reasons else "fits", reasons, [], stages, gen,
                    world=inp.gpus, mem_gib=inp.mem_gib)
    if with_time:
        ev.time = step_time(inp, layout, stages, gen)
        ev.routing = routing_cost(inp, layout, stages)
    return ev


def _better(a: Evaluation, b: Optional[Evaluation]) -> bool:
    """Feasible beats infeasible; among feasible the faster; among infeasible the smaller peak."""
    if b is None:
        return True
    if a.feasible != b.feasible:
        return a.feasible
    if a.feasible:
        return (a.time.total, a.peak) < (b.time.total, b.peak)
    return a.peak < b.peak


def evaluate(inp: PlanInputs, spec: Union[LayoutSpec, str, Layout], gen: Optional[GenMemory] = None) -> Evaluation:
    """Memory, feasibility and step time of one layout. Missing pieces of ``spec`` are chosen:
    the split (min worst-stage peak over candidate_splits) and, under recompute=auto, the mode
    (fastest that fits; else the one overflowing least)."""
    inp.validate()
    if gen is None and inp.rollout_tp is None:  # the smallest rollout TP with which the layout fits
        first = None
        for t in auto_rollout_tps(inp):
            ev = evaluate(inp, spec, gen_memory(inp, t))
            if ev.feasible:
                return ev
            first = first or ev
        return first
    if isinstance(spec, str):
        spec = LayoutSpec.parse(spec)
    if isinstance(spec, Layout):
        spec = LayoutSpec(spec.tp, spec.pp, spec.ep, spec.etp, spec.cp,
                          spec.stages[0] if spec.pp > 1 else None, spec.stages[-1] if spec.pp > 1 else None,
                          recompute=spec.recompute)
    m = inp.model
    etp = spec.etp if spec.etp is not None else 1
    if not m.is_moe:
        etp = 1
    notes = []
    if spec.tp > inp.gpus_per_node:
        notes.append(f"TP {spec.tp} spans nodes ({inp.gpus_per_node} GPUs per node): slow")
    errs = layout_errors(inp, spec.tp, spec.pp, spec.ep, etp, spec.cp)
    if spec.dp is not None and not errs and spec.dp != inp.gpus // (spec.tp * spec.pp * spec.cp):
        errs.append(f"dp={spec.dp} but world / (TP*PP*CP) = {inp.gpus // (spec.tp * spec.pp * spec.cp)}")
    splits = []
    if not errs:
        if spec.first is not None or spec.last is not None or spec.pp == 1:
            try:
                splits = [split_layers(m.num_layers, spec.pp, spec.first, spec.last)]
            except ConfigError as e:
                errs.append(e.message)
        else:
            splits = candidate_splits(m.num_layers, spec.pp)
            if not splits:
                errs.append(f"no layer split of {m.num_layers} layers over PP {spec.pp}")
    if errs:
        return Evaluation(Layout(spec.tp, spec.pp, spec.ep, etp, spec.cp, (), spec.recompute or "full"),
                          False, "invalid", errs, notes, world=inp.gpus, mem_gib=inp.mem_gib)
    if gen is None:
        gen = gen_memory(inp, resolve_rollout_tp(inp))
    modes = [spec.recompute] if spec.recompute else ([inp.recompute] if inp.recompute != "auto" else list(RECOMPUTE_MODES))
    best = None
    for mode in modes:
        # the split that minimises the worst stage's peak for this mode (memory only: cheap)
        cand = None
        for s in splits:
            ev = _evaluate_fixed(inp, Layout(spec.tp, spec.pp, spec.ep, etp, spec.cp, s, mode), gen, with_time=False)
            if cand is None or ev.peak < cand.peak:
                cand = ev
        cand.time = step_time(inp, cand.layout, cand.stages, gen)
        cand.routing = routing_cost(inp, cand.layout, cand.stages)
        if _better(cand, best):
            best = cand
    best.notes = notes + best.notes
    return best


@dataclass
class SearchResult:
    inputs: PlanInputs
    gen: GenMemory
    ranked: list          # feasible Evaluations, best first
    rejected: list        # infeasible Evaluations (oom and invalid)

    def reject_summary(self) -> dict:
        """How many layouts were rejected for which reason (phase + largest term, or constraint)."""
        c = collections.Counter()
        for ev in self.rejected:
            r = ev.reasons[0]
            if ev.kind == "invalid":
                c["invalid: " + re.sub(r"\d+", "#", r)] += 1
            elif "largest term: " in r:
                c[f"does not fit: {r.split(' phase')[0]} phase, largest term {r.split('largest term: ')[1].split(' ')[0]}"] += 1
            else:
                c["does not fit: " + r.split(":")[0]] += 1
        return dict(c.most_common())


def search_space(inp: PlanInputs) -> list[tuple[int, int, int, int, int]]:
    """(tp, pp, ep, etp, cp) candidates before constraints."""
    m, world = inp.model, inp.gpus
    tps = [t for t in (1, 2, 4, 8) if t <= min(world, inp.gpus_per_node)]
    pps = [p for p in range(1, min(world, m.num_layers) + 1) if world % p == 0]
    eps = [e for e in range(1, m.n_routed_experts + 1) if m.n_routed_experts % e == 0 and e <= world] if m.is_moe else [1]
    out = []
    for tp in tps:
        for pp in pps:
            for ep in eps:
                for etp in sorted({1, tp}) if m.is_moe else [1]:
                    for cp in inp.search_cp:
                        out.append((tp, pp, ep, etp, cp))
    return out


def auto_rollout_tps(inp: PlanInputs) -> list[int]:
    """Rollout TPs to try when none is given: the smallest whose engine fits a GPU alone, then the larger valid
    ones (with the trainer resident, or a large trainer, a bigger TP may be what lets a layout fit)."""
    first = auto_rollout_tp(inp)
    return [t for t in (2 ** i for i in range(0, 12)) if first <= t <= inp.gpus and inp.gpus % t == 0
            and rollout_tp_error(inp.model, t) is None] or [first]


def search(inp: PlanInputs) -> SearchResult:
    """Evaluate every candidate; rank the feasible ones by the step-time model. Without a given rollout TP,
    the smallest one with which some layout fits (docs/planner.md)."""
    inp.validate()
    if inp.rollout_tp is not None:
        return _search(inp, gen_memory(inp, resolve_rollout_tp(inp)))
    first = None
    for t in auto_rollout_tps(inp):
        res = _search(inp, gen_memory(inp, t))
        if res.ranked:
            return res
        first = first or res
    return first


def _search(inp: PlanInputs, gen: GenMemory) -> SearchResult:
    ranked, rejected = [], []
    for tp, pp, ep, etp, cp in search_space(inp):
        ev = evaluate(inp, LayoutSpec(tp, pp, ep, etp, cp), gen)
        (ranked if ev.feasible else rejected).append(ev)
    ranked.sort(key=lambda e: (e.time.total, e.peak))
    rejected.sort(key=lambda e: (e.kind == "invalid", e.peak))
    return SearchResult(inp, gen, ranked, rejected)
