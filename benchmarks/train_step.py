"""Train-step throughput of the Megatron engine. Prints figures; asserts nothing.

CPU: the tiny MoE (fp32, MTP on) at 1 process and at 2 processes (TP2+SP, EP2, DP2), tokens/s of
the median step after warm-up. GPU (when CUDA is present): a DeepSeek-V3-shaped proxy that fits one
GPU (V3 layer shapes: hidden 7168, 128 MLA heads, q/kv LoRA 1536/512, expert FFN 2048, top-8 of
32 routed experts + 1 shared, 1 dense + 3 MoE layers), BF16, with tokens/s and MFU.

Every row also gives the model FLOP/s (6 x activated non-embedding parameters per token, MTP
included, plus attention not halved for causality: the usual MFU convention) and an MFU: on GPU against the
BF16 peak of the card, on CPU against an fp32 GEMM measured on the same process(es) and threads
just before and after the steps (the better of the two) ("GEMM-relative MFU"; the CPU has no reliable datasheet peak here).
CPU figures on a shared machine are noisy: ``--repeats N`` runs every row N times and reports the
median, and the 1-minute load average is printed before and after each run.

    python benchmarks/train_step.py [--steps 8] [--seq 256] [--batch 16] [--repeats 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _layout(name: str):
    from r1mega.config.parallel import ParallelConfig

    return {"single": ParallelConfig(), "tp2_sp": ParallelConfig(tensor_parallel=2, sequence_parallel=True),
            "ep2": ParallelConfig(expert_parallel=2), "dp2": ParallelConfig()}[name]


def _model(name: str):
    from r1mega.model.presets import get_preset

    if name == "dsv3-proxy":
        return get_preset("deepseek-v3", num_layers=4, first_k_dense_replace=1, n_routed_experts=32,
                          n_group=8, topk_group=4, num_nextn_predict_layers=0, params_dtype="bfloat16")
    return get_preset("tiny")


def _flops_per_token(m, seq: int) -> float:
    """Training FLOPs per token: 6 x activated non-embedding parameters (MTP layers included) plus
    attention scores and values, 3 x 2 x seq x heads x (qk_dim + v_dim) per layer (not halved for
    causality, the PaLM/Megatron convention)."""
    from r1mega.model.counting import count_parameters

    c = count_parameters(m)
    layers = m.num_layers + (m.num_nextn_predict_layers or 0)
    head_dims = (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim) if m.arch != "dense" else 2 * (m.head_dim or m.hidden_size // m.num_attention_heads)
    attn = 3 * 2 * layers * seq * m.num_attention_heads * head_dims
    return 6 * (c.activated - c.embedding + c.mtp_activated) + attn


def _cpu_gemm_flops(n: int = 1024, reps: int = 8) -> float:
    """fp32 GEMM FLOP/s this process reaches with its torch threads (best of ``reps``)."""
    import torch

    x, y = torch.randn(n, n), torch.randn(n, n)
    torch.mm(x, y)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(x, y)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def worker(a) -> None:
    import torch
    import torch.distributed as dist

    from r1mega.algorithms import SFTLoss
    from r1mega.config.optimizer import OptimizerConfig
    from r1mega.platform import has_cuda, synchronize
    from r1mega.train.batching import dp_shard, lm_batch
    from r1mega.train.engine import TrainEngine

    m = _model(a.model)
    engine = TrainEngine(m, _layout(a.layout), OptimizerConfig(lr=1e-4, micro_batch_size=a.micro, global_batch_size=a.batch),
                         total_steps=100)
    g = torch.Generator().manual_seed(0)
    batch = lm_batch([torch.randint(1, m.vocab_size, (a.seq + 1,), generator=g).tolist() for _ in range(a.batch)])
    if has_cuda():
        batch = {k: v.cuda() for k, v in batch.items()}
    r, n = engine.dp_rank_size()
    local = dp_shard(batch, r, n)
    world = dist.get_world_size() if dist.is_initialized() else 1
    gemm_before = None if has_cuda() else _cpu_gemm_flops()
    times = []
    for i in range(a.warmup + a.steps):
        synchronize()
        t = time.perf_counter()
        engine.train_step(local, SFTLoss())
        synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    gemm = None
    if not has_cuda():  # best per-process GEMM rate (before/after the steps), summed over the processes
        rate = torch.tensor([max(gemm_before, _cpu_gemm_flops())], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(rate)
        gemm = float(rate)
    tokens = a.batch * a.seq
    flops = _flops_per_token(m, a.seq) * tokens / med
    res = {"model": a.model, "layout": a.layout, "procs": world, "threads": torch.get_num_threads(), "step_s": med,
           "step_s_min": min(times), "tokens_per_s": tokens / med, "model_tflops": flops / 1e12}
    if has_cuda():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.0) * 1e12
        res.update(device=name, mfu=flops / peak, peak_tflops=peak / 1e12,
                   peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)
    else:
        res.update(device="cpu", mfu=flops / gemm, peak_tflops=gemm / 1e12)
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(a.out, "w") as f:
            json.dump(res, f)


def _load1() -> float:
    return os.getloadavg()[0]


def run(layout: str, model: str, a, nproc: int) -> Optional[dict]:
    """One row in a fresh process group; None (after printing why) if the worker failed."""
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    args = [__file__, "--worker", "--layout", layout, "--model", model, "--out", out, "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--seq", str(a.seq), "--batch", str(a.batch), "--micro", str(a.micro)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
    cmd = ([sys.executable] if nproc == 1 else [os.path.join(os.path.dirname(sys.executable), "torchrun"),
                                                "--standalone", "--nproc-per-node", str(nproc)]) + args
    load_before = _load1()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            print(f"[{model} {layout}] worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            return None
        with open(out) as f:
            res = json.load(f)
    finally:
        os.unlink(out)
    res.update(load_before=load_before, load_after=_load1())
    return res


def _median_row(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the lower middle one for an even count), with every run's figure."""
    runs = sorted(runs, key=lambda r: r["tokens_per_s"])
    row = dict(runs[(len(runs) - 1) // 2])
    row.update(runs=len(runs), tokens_per_s_all=[round(r["tokens_per_s"]) for r in runs],
               load_min=min(r["load_before"] for r in runs), load_max=max(r["load_after"] for r in runs))
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'model':12} {'layout':8} {'procs':>5} {'thr':>3} {'step s':>8} {'tokens/s':>10} {'runs (tokens/s)':>22} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'peak':>6} {'load 1m':>11}")
    for r in rows:
        runs = ",".join(map(str, r["tokens_per_s_all"]))
        peak = "GEMM" if r["device"] == "cpu" else "BF16"
        print(f"{r['model']:12} {r['layout']:8} {r['procs']:5d} {r['threads']:3d} {r['step_s']:8.3f} "
              f"{r['tokens_per_s']:10.0f} {runs:>22} {r['model_tflops']:8.4f} {r['mfu']:6.3f} {peak:>6} "
              f"{r['load_min']:5.1f}-{r['load_max']:<5.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--layout", default="single")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="run every row this many times; report the median")
    ap.add_argument("--json", help="also write the rows (every run) to this file")
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    import torch

    plan = [("single", "tiny", a, 1)] + [(l, "tiny", a, 2) for l in ("tp2_sp", "ep2", "dp2")]
    if torch.cuda.is_available():
        plan.append(("single", "dsv3-proxy", argparse.Namespace(**{**vars(a), "seq": 4096, "batch": 4, "micro": 1}), 1))
    print(f"train step: batch {a.batch} x seq {a.seq} (micro-batch {a.micro}), median of {a.steps} steps after "
          f"{a.warmup} warm-up, {a.repeats} run(s) per row; {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results: dict = {}
    for rep in range(a.repeats):  # interleave the rows so that load changes hit every row alike
        for layout, model, args, nproc in plan:
            r = run(layout, model, args, nproc)
            if r is not None:
                results.setdefault((model, layout), []).append(r)
                print(f"  run {rep + 1}/{a.repeats} {model}/{layout}: {r['tokens_per_s']:.0f} tokens/s "
                      f"(load {r['load_before']:.1f} -> {r['load_after']:.1f})", file=sys.stderr, flush=True)
    rows = [_median_row(results[(m, l)]) for l, m, _, _ in plan if (m, l) in results]
    print_table(rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{m}/{l}": v for (m, l), v in results.items()}, f, indent=1)
    failed = [f"{m}/{l}" for l, m, _, _ in plan if (m, l) not in results]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
