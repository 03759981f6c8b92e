"""`r1mega plan`: per-GPU memory of a colocated GRPO step and the training layouts that fit.

  r1mega plan --preset deepseek-v3 --gpus 256 --gpu-mem 80 --seq 1536 --prompts 32 --group 16 \\
      [--rollout-tp 32] [--recompute full] [--top 10] [--json]
  r1mega plan ... --layout tp=1,pp=16,ep=16[,etp=1,first=3,last=2,recompute=full]
  r1mega plan --anchors        # predicted vs published (NeMo-RL v0.6) for the calibration runs

Without --layout: enumerate layouts, reject those that do not fit (with the reason), rank the rest
by a step-time model calibrated on published runs (--anchors). With --layout: the memory breakdown of
that one layout and its step time.
Exit status: 0 = fits (or: some layout fits), 1 = does not fit (none fits), 2 = bad arguments.
Formulas: docs/planner.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional

from r1mega.config.base import ConfigError

from .inputs import GIB, HARDWARE, RECOMPUTE_MODES, PlanInputs
from .search import Evaluation, SearchResult, evaluate, search

TERMS = ("weights", "grads", "optimizer", "ref_weights", "activations", "moe_dispatch", "logits", "routing",
         "gen_weights", "kv_cache", "gen_workspace", "refit_buffer", "reserve")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="r1mega plan", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    g = ap.add_argument_group("model and machine")
    g.add_argument("--preset", help="model preset (r1mega.model.presets); required unless --anchors")
    g.add_argument("--mtp-layers", type=int, default=None, help="override the preset's MTP depth (0: MTP off)")
    g.add_argument("--gpus", type=int, help="GPUs in the job; required unless --anchors")
    g.add_argument("--gpu-mem", type=float, default=None, help="memory per GPU in GiB (default: the --gpu kind's)")
    g.add_argument("--gpu", default="h100", choices=sorted(HARDWARE), help="GPU kind for the speed proxy (default h100)")
    g.add_argument("--gpus-per-node", type=int, default=8)
    g.add_argument("--host-mem", type=float, default=1800.0, help="host RAM per node for offloaded state, GiB")
    g = ap.add_argument_group("workload (one GRPO step)")
    g.add_argument("--seq", type=int, default=None, help="sequence length = prompt + response (default 1536)")
    g.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default seq/4)")
    g.add_argument("--response-len", type=int, default=None, help="response cap in tokens (default seq - prompt)")
    g.add_argument("--mean-response", type=int, default=None,
                   help="mean generated tokens (default: the cap; tokens/s/GPU counts prompt + mean response)")
    g.add_argument("--prompts", type=int, default=32, help="prompts per step")
    g.add_argument("--group", type=int, default=16, help="rollouts per prompt")
    g.add_argument("--micro-batch", type=int, default=1, help="sequences per microbatch")
    g.add_argument("--minibatches", type=int, default=1, help="optimizer steps per rollout batch")
    g.add_argument("--logprob-micro-batch", type=int, default=None, help="sequences per log-prob microbatch (default --micro-batch)")
    g.add_argument("--no-packing", action="store_true", help="one microbatch per micro-batch sequences (no sequence packing)")
    g = ap.add_argument_group("training")
    g.add_argument("--recompute", default="auto", choices=[*RECOMPUTE_MODES, "auto"],
                   help="activation recompute (the config's parallel.recompute); auto = the fastest that fits, per layout")
    g.add_argument("--param-dtype", default="bf16", choices=["bf16", "fp32"])
    g.add_argument("--grad-dtype", default="fp32", choices=["fp32", "bf16"], help="Megatron DDP main-grad dtype")
    g.add_argument("--fp8", action="store_true", help="FP8 GEMMs in training and FP8 weights in vLLM")
    g.add_argument("--no-dist-opt", action="store_true", help="do not shard optimizer state over DP")
    g.add_argument("--optimizer-offload", action="store_true", help="Adam state on the CPU (Megatron optimizer_cpu_offload)")
    g.add_argument("--ref-model", default="cpu", choices=["cpu", "gpu", "none"], help="where the KL reference weights live")
    g.add_argument("--logprob-passes", type=int, default=2, help="forward-only passes per step (old policy + reference)")
    g.add_argument("--router-replay", default="none", choices=["none", "r2", "r3"],
                   help="MoE routing ids carried to the trainer (adds their bytes to the train phase)")
    g.add_argument("--cp", default="1", help="context-parallel sizes the search tries, comma-separated (default 1)")
    g = ap.add_argument_group("colocated vLLM")
    g.add_argument("--rollout-tp", type=int, default=None, help="vLLM TP (default: smallest power of two that fits)")
    g.add_argument("--rollout-ep", action="store_true", help="vLLM expert parallelism (same bytes per GPU)")
    g.add_argument("--kv-cache-dtype", default="bf16", choices=["bf16", "fp8"])
    g.add_argument("--max-num-seqs", type=int, default=256, help="vLLM concurrency cap per engine")
    g.add_argument("--no-sleep", action="store_true", help="vLLM keeps weights and KV on the GPU while training")
    g.add_argument("--no-trainer-offload", action="store_true",
                   help="trainer keeps weights/grads/optimizer on the GPU while vLLM generates")
    g = ap.add_argument_group("budget and proxy")
    g.add_argument("--reserve", type=float, default=4.0, help="GiB per GPU for CUDA contexts, NCCL, fragmentation")
    g.add_argument("--refit-buffer", type=float, default=2.0, help="GiB of the weight-update staging buffer")
    g.add_argument("--mfu", type=float, default=0.2, help="training MFU of large GEMMs (calibrated: docs/planner.md)")
    g = ap.add_argument_group("output")
    g.add_argument("--layout", default=None, help="evaluate one layout, e.g. tp=1,pp=16,ep=16[,etp=1,first=3,last=2]")
    g.add_argument("--top", type=int, default=10, help="layouts to list")
    g.add_argument("--show-rejected", type=int, default=0, help="also list this many rejected layouts with reasons")
    g.add_argument("--all-stages", action="store_true", help="with --layout: print every pipeline stage")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.add_argument("--anchors", action="store_true",
                   help="print the model's predictions for the published runs it is calibrated on")
    return ap


def inputs_from_args(a: argparse.Namespace) -> PlanInputs:
    from r1mega.model.presets import get_preset

    for name in ("preset", "gpus"):
        if getattr(a, name) is None:
            raise ConfigError(f"plan.{name}", f"--{name} is required (or --anchors)")
    model = get_preset(a.preset, **({} if a.mtp_layers is None else {"num_nextn_predict_layers": a.mtp_layers}))
    model.validate()
    seq, p, r = a.seq, a.prompt_len, a.response_len
    if p is not None and r is not None:
        if seq is not None and seq != p + r:
            raise ConfigError("plan.seq", f"--seq {seq} != --prompt-len {p} + --response-len {r}")
        seq = p + r
    else:
        seq = 1536 if seq is None else seq
        if r is not None:
            p = seq - r
    try:
        cps = tuple(int(x) for x in str(a.cp).split(",") if x.strip())
    except ValueError:
        raise ConfigError("plan.cp", f"{a.cp!r}: expected comma-separated integers") from None
    return PlanInputs(
        model=model, gpus=a.gpus, gpu_mem_gib=a.gpu_mem, hardware=a.gpu, gpus_per_node=a.gpus_per_node,
        seq_len=seq, prompt_len=p, mean_response_len=a.mean_response, prompts=a.prompts, group=a.group, micro_batch=a.micro_batch,
        minibatches=a.minibatches, logprob_micro_batch=a.logprob_micro_batch, sequence_packing=not a.no_packing,
        router_replay=a.router_replay, recompute=a.recompute, param_dtype=a.param_dtype, grad_dtype=a.grad_dtype,
        fp8=a.fp8, distributed_optimizer=not a.no_dist_opt, optimizer_offload=a.optimizer_offload,
        ref_model=a.ref_model, logprob_passes=a.logprob_passes, rollout_tp=a.rollout_tp, rollout_ep=a.rollout_ep,
        kv_cache_dtype=a.kv_cache_dtype, max_num_seqs=a.max_num_seqs, sleep_mode=not a.no_sleep,
        trainer_offload=not a.no_trainer_offload, refit_buffer_gib=a.refit_buffer, reserve_gib=a.reserve,
        host_mem_gib=a.host_mem, mfu=a.mfu, search_cp=cps or (1,))


def inputs_dict(inp: PlanInputs) -> dict:
    d = {f.name: getattr(inp, f.name) for f in dataclasses.fields(inp) if f.name != "model"}
    d.update(preset=inp.model.preset, gpu_mem_gib=inp.mem_gib, prompt_len=inp.prompt_tokens,
             response_len=inp.response_tokens, rollouts=inp.rollouts, search_cp=list(inp.search_cp))
    return d


# ------------------------------------------------------------------------------------------ text

def _g(x: float) -> str:
    return f"{x / GIB:6.1f}"


def header(inp: PlanInputs, gen) -> list[str]:
    m = inp.model
    opts = [f"recompute {inp.recompute}", f"grads {inp.grad_dtype}",
            "dist-opt" if inp.distributed_optimizer else "no dist-opt"]
    if inp.fp8:
        opts.append("fp8")
    if inp.optimizer_offload:
        opts.append("optimizer offload")
    opts.append("sleep mode" if inp.sleep_mode else "no sleep mode")
    opts.append("trainer offload in generation" if inp.trainer_offload else "trainer stays resident")
    return [
        f"plan: {m.preset} on {inp.gpus} x {inp.hardware} ({inp.mem_gib:g} GiB, {inp.gpus_per_node}/node); "
        f"seq {inp.seq_len} (prompt {inp.prompt_tokens} + response {inp.response_tokens}, mean "
        f"{inp.mean_response_tokens:g}); "
        f"{inp.prompts} prompts x {inp.group} = {inp.rollouts} rollouts, micro-batch {inp.micro_batch}, "
        f"{inp.minibatches} optimizer step(s)",
        "options: " + ", ".join(opts),
        f"vLLM: rollout TP {gen.rollout_tp}{' (EP)' if inp.rollout_ep else ''}, {gen.engines} engine(s) x "
        f"{gen.seqs_per_engine} seqs (concurrency {gen.concurrency}, {gen.waves} wave(s)); per GPU: weights "
        f"{gen.weights / GIB:.1f} GiB, KV {gen.kv_cache / GIB:.1f} GiB ({gen.kv_per_token / 1024:.1f} KiB/token), "
        f"workspace {gen.workspace / GIB:.1f} GiB",
    ]


def render_search(res: SearchResult, top: int, show_rejected: int) -> str:
    inp = res.inputs
    lines = header(inp, res.gen)
    n = len(res.ranked) + len(res.rejected)
    lines.append(f"{n} layouts: {len(res.ranked)} fit, {len(res.rejected)} rejected")
    for reason, k in res.reject_summary().items():
        lines.append(f"  {k:5d}  {reason}")
    if res.ranked:
        lines.append("")
        lines.append(f"{'#':>3} {'layout':42} {'dp':>4} {'edp':>4} {'recomp':9} {'peak GiB':>8} {'phase':10} "
                     f"{'free':>5} {'step s':>7} {'train':>6} {'logp':>5} {'gen':>6} {'bubble':>6} {'tok/s/GPU':>9}")
        for i, ev in enumerate(res.ranked[:top], 1):
            lines.append(_row(i, ev, inp))
    else:
        tips = [t for t, on in (("--optimizer-offload", not inp.optimizer_offload),
                                ("--recompute full", inp.recompute not in ("full", "auto")),
                                ("sleep mode (drop --no-sleep)", not inp.sleep_mode),
                                ("trainer offload (drop --no-trainer-offload)", not inp.trainer_offload)) if on]
        tips.append("more GPUs")
        lines.append("no layout fits: see the reasons above (try " + ", ".join(tips) + ")")
    if show_rejected:
        lines.append("")
        lines.append("rejected:")
        for ev in res.rejected[:show_rejected]:
            lines.append(f"  {ev.layout.short():42} {ev.kind:7} {ev.reasons[0]}")
    if res.ranked:
        lines.append("")
        lines.append("best layout as Megatron settings: " + json.dumps(res.ranked[0].layout.megatron_args(inp.gpus)))
        lines.append("best layout as r1mega config: " + " ".join(res.ranked[0].layout.config_overrides()))
    return "\n".join(lines)


def _row(i: int, ev: Evaluation, inp: PlanInputs) -> str:
    t = ev.time
    w = ev.worst_stage
    edp = ev.layout.edp(inp.gpus) if inp.model.is_moe else "-"
    return (f"{i:>3} {ev.layout.short():42} {ev.layout.dp(inp.gpus):>4} {edp:>4} "
            f"{ev.layout.recompute:9} {ev.peak_gib:8.1f} {w.peak_phase:10} {ev.headroom_gib:5.1f} {t.total:7.1f} "
            f"{t.train:6.1f} {t.logprob:5.1f} {t.generation:6.1f} {t.bubble_fraction:6.2f} {t.tokens_per_s_per_gpu:9.1f}")


def render_layout(ev: Evaluation, inp: PlanInputs, all_stages: bool = False) -> str:
    lines = header(inp, ev.gen) if ev.gen else header_min(inp)
    lay = ev.layout
    if ev.kind == "invalid":
        lines.append(f"layout {lay.short()}: INVALID")
        lines += [f"  - {r}" for r in ev.reasons]
        lines += [f"note: {n}" for n in ev.notes]
        return "\n".join(lines)
    lines.append(f"layout {lay.short()}: DP {lay.dp(inp.gpus)}, expert-DP {lay.edp(inp.gpus)}, "
                 f"sequence parallel {'on' if lay.sequence_parallel else 'off'}, recompute {lay.recompute}"
                 + (f", layers per stage {list(lay.stages)}" if lay.pp > 1 and lay.stages else ""))
    for n in ev.notes:
        lines.append(f"note: {n}")
    stages = ev.stages
    worst = ev.worst_stage
    if not all_stages and len(stages) > 6:
        keep = sorted({0, 1, worst.index, len(stages) - 2, len(stages) - 1})
        shown = [stages[i] for i in keep]
    else:
        shown = stages
    cols = [t for t in ("weights", "grads", "optimizer", "ref_weights", "activations", "moe_dispatch", "logits", "routing")
            if any(t in s.terms for s in stages)]
    lines.append("")
    lines.append("per-GPU memory (GiB) by pipeline stage:")
    lines.append(f"{'stage':>5} {'layers':>6} {'inflt':>5} " + " ".join(f"{c[:10]:>10}" for c in cols)
                 + f" {'train':>7} {'generate':>8} {'refit':>7} {'peak':>7}")
    for s in shown:
        tag = "*" if s is worst else " "
        extra = ("E" if s.has_embedding else "") + ("H" if s.has_head else "") + ("M" if s.mtp_layers else "")
        lines.append(f"{s.index:>4}{tag} {str(s.layers) + extra:>6} {s.in_flight:>5} "
                     + " ".join(f"{s.terms.get(c, 0) / GIB:10.2f}" for c in cols)
                     + f" {s.phase_total('train') / GIB:7.1f} {s.phase_total('generation') / GIB:8.1f} "
                       f"{s.phase_total('refit') / GIB:7.1f} {s.peak / GIB:7.1f}")
    if len(shown) < len(stages):
        lines.append(f"  ({len(stages) - len(shown)} more stages alike; --all-stages to list them)")
    lines.append("  E = embedding, H = output head, M = MTP; * = worst stage; inflt = microbatches in flight")
    lines.append("")
    lines.append(f"worst stage {worst.index}, by phase (GiB):")
    for phase in ("train", "generation", "refit"):
        terms = worst.phases[phase]
        lines.append(f"  {phase:10} {worst.phase_total(phase) / GIB:6.1f} = "
                     + " + ".join(f"{k} {v / GIB:.2f}" for k, v in terms.items() if v))
    lines.append(f"  host RAM per node for offloaded state: {max(s.host for s in stages) * inp.node_gpus / GIB:.0f} GiB "
                 f"(of {inp.host_mem_gib:g})")
    lines.append("")
    if ev.feasible:
        lines.append(f"FITS: peak {ev.peak_gib:.1f} GiB of {inp.mem_gib:g} GiB ({worst.peak_phase} phase, stage "
                     f"{worst.index}), {ev.headroom_gib:.1f} GiB free")
    else:
        lines.append("DOES NOT FIT:")
        lines += [f"  - {r}" for r in ev.reasons]
    t = ev.time
    if t is not None:
        lines.append(f"step time (model): {t.total:.1f} s = generation {t.generation:.1f} (prefill {t.prefill:.1f}, "
                     f"decode {t.decode:.1f}) + log-probs {t.logprob:.1f} + train {t.train:.1f} (compute "
                     f"{t.train_compute:.1f}, TP {t.tp_comm:.2f}, EP {t.ep_comm:.2f}, PP {t.pp_comm:.2f}, DP "
                     f"{t.dp_comm:.2f}, optimizer {t.optimizer:.2f}; bubble {t.bubble_fraction:.0%}) + refit "
                     f"{t.refit:.1f} + swaps {t.swap:.1f}; {t.tokens_per_s_per_gpu:.1f} tokens/s/GPU "
                     f"({t.microbatches} microbatches per DP rank, {t.decode_steps:.0f} decode steps, MoE overhead "
                     f"{t.moe_overhead:.2f})")
    if ev.routing is not None:
        r = ev.routing
        lines.append(f"router replay (R3) routing: {r.bytes_per_token} B/token; {r.step_host / 2 ** 20:.0f} MiB per step on "
                     f"the host, {r.per_dp_replica / 2 ** 20:.1f} MiB per DP replica, {r.microbatch_gpu / 2 ** 20:.1f} MiB "
                     f"per microbatch on a GPU" + ("" if inp.router_replay != "none" else " (--router-replay r3 adds it)"))
    lines.append("Megatron settings: " + json.dumps(lay.megatron_args(inp.gpus)))
    lines.append("r1mega config: " + " ".join(lay.config_overrides()))
    return "\n".join(lines)


def header_min(inp: PlanInputs) -> list[str]:
    return [f"plan: {inp.model.preset} on {inp.gpus} x {inp.hardware} ({inp.mem_gib:g} GiB)"]


def main(argv: Optional[list] = None) -> int:
    ap = build_parser()
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): report it as the return code
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    try:
        if a.anchors:
            from .anchors import render as render_anchors
            print(render_anchors())
            return 0
        inp = inputs_from_args(a)
        inp.validate()
        if a.layout:
            ev = evaluate(inp, a.layout)
            if a.json:
                print(json.dumps({"inputs": inputs_dict(inp), "evaluation": ev.to_dict()}, indent=1, default=str))
            else:
                print(render_layout(ev, inp, a.all_stages))
            return 0 if ev.feasible else 1
        res = search(inp)
    except ConfigError as e:
        print(f"r1mega plan: {e}", file=sys.stderr)
        return 2
    if a.json:
        out = {"inputs": inputs_dict(inp), "generation": res.gen.to_dict(),
               "counts": {"fit": len(res.ranked), "rejected": len(res.rejected)},
               "rejected_summary": res.reject_summary(),
               "ranked": [e.to_dict(stages=False) for e in res.ranked[:a.top]],
               "rejected": [e.to_dict(stages=False) for e in res.rejected[:a.show_rejected]]}
        print(json.dumps(out, indent=1, default=str))
    else:
        print(render_search(res, a.top, a.show_rejected))
    return 0 if res.ranked else 1
