"""Refit throughput: Megatron trainer -> colocated vLLM engine. Prints figures; asserts nothing.

For the ``tiny`` preset (DeepSeek-V3 MoE, fp32) on CPU, at 1 rank and at 2 ranks (torchrun, gloo;
trainer TP=1 x DP=2, vLLM TP=2 so each rank loads its shard): the median seconds of a full refit
(bridge export + bucket stream into ``reload_weights`` + CPU MoE re-pack + prefix-cache reset)
after a warm-up, the bytes each rank streams (full HF tensors) and GB/s = bytes / seconds. Also
the export alone (the bridge, buckets consumed and dropped) and the bucketed ``buckets`` transport.

    .venv/bin/python benchmarks/refit.py [--preset tiny] [--reps 5] [--bucket-mb 1]
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> None:
    sys.path.insert(0, ROOT)
    import torch.distributed as dist

    from r1mega.config import load_config
    from r1mega.rollout import make_engine
    from r1mega.rollout.refit import trainer_buckets
    from r1mega.train.engine import TrainEngine

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = load_config(None, [f"model.preset={args.preset}", "data.seq_length=512", f"rollout.tensor_parallel={world}",
                             "rollout.kv_cache_memory_bytes=67108864", f"rollout.refit_bucket_mb={args.bucket_mb}"],
                      world_size=world)
    trainer = TrainEngine(cfg.model, cfg.parallel, None, mtp=False)
    t0 = time.perf_counter()
    engine = make_engine(cfg, trainer)
    start_s = time.perf_counter() - t0
    engine.refit(trainer)  # warm-up (first load from dummy weights)

    def timed(fn) -> list:
        out = []
        for _ in range(args.reps):
            if dist.is_initialized():
                dist.barrier()
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    full = timed(lambda: engine.refit(trainer))
    bucketed = timed(lambda: engine.refit(trainer, transport="buckets"))
    export = timed(lambda: [None for _ in trainer_buckets(trainer, engine.bucket_bytes)])
    stats = engine.last_refit
    rank = dist.get_rank() if dist.is_initialized() else 0
    row = {"world": world, "rank": rank, "rollout_tp": world, "bytes": stats.bytes, "tensors": stats.tensors,
           "buckets": stats.buckets, "refit_s": statistics.median(full), "buckets_s": statistics.median(bucketed),
           "export_s": statistics.median(export), "vllm_start_s": start_s}
    with open(f"{args.out}.rank{rank}.json", "w") as f:
        json.dump(row, f)
    if dist.is_initialized():
        dist.barrier()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bucket-mb", type=int, default=1, help="refit bucket size (the tiny model is ~9 MB)")
    ap.add_argument("--worlds", default="1,2")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONWARNINGS": "ignore",
           "VLLM_LOGGING_LEVEL": "WARNING"}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    print(f"refit benchmark: preset={args.preset}, {args.reps} reps (median), bucket {args.bucket_mb} MiB, fp32, CPU")
    print(f"{'ranks':>5} {'MB/rank':>8} {'tensors':>7} {'buckets':>7} {'refit s':>8} {'GB/s':>6} "
          f"{'bucketed s':>10} {'export s':>8} {'vLLM start s':>12}")
    with tempfile.TemporaryDirectory() as d:
        for world in [int(w) for w in args.worlds.split(",")]:
            out = os.path.join(d, f"w{world}")
            cmd = [torchrun, "--standalone", "--nproc-per-node", str(world), os.path.abspath(__file__), "--worker",
                   "--preset", args.preset, "--reps", str(args.reps), "--bucket-mb", str(args.bucket_mb), "--out", out]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                print((proc.stdout + proc.stderr)[-4000:])
                raise SystemExit(f"world {world} failed")
            rows = [json.load(open(f"{out}.rank{r}.json")) for r in range(world)]
            slow = max(rows, key=lambda r: r["refit_s"])  # a refit ends when the slowest rank is done
            print(f"{world:>5} {slow['bytes'] / 1e6:>8.2f} {slow['tensors']:>7} {slow['buckets']:>7} "
                  f"{slow['refit_s']:>8.4f} {slow['bytes'] / slow['refit_s'] / 1e9:>6.3f} "
                  f"{max(r['buckets_s'] for r in rows):>10.4f} {max(r['export_s'] for r in rows):>8.4f} "
                  f"{max(r['vllm_start_s'] for r in rows):>12.1f}")


if __name__ == "__main__":
    main()
