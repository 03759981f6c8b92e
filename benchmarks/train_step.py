"""Train-step throughput of the Megatron engine. Prints figures; asserts nothing.

CPU: the tiny MoE at 1 process and at 2 processes (TP2+SP, EP2, DP2), tokens/s of the median
step after warm-up. GPU (when CUDA is present): a DeepSeek-V3-shaped proxy that fits one GPU
(V3 layer shapes: hidden 7168, 128 MLA heads, q/kv LoRA 1536/512, expert FFN 2048, top-8 of
32 routed experts + 1 shared, 1 dense + 3 MoE layers), BF16, with tokens/s and MFU.

    python benchmarks/train_step.py [--steps 8] [--seq 256] [--batch 16]
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


def worker(a) -> None:
    import torch
    import torch.distributed as dist

    from r1mega.algorithms import SFTLoss
    from r1mega.config.optimizer import OptimizerConfig
    from r1mega.model.counting import count_parameters
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
    times = []
    for i in range(a.warmup + a.steps):
        synchronize()
        t = time.perf_counter()
        engine.train_step(local, SFTLoss())
        synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    tokens = a.batch * a.seq
    res = {"model": a.model, "layout": a.layout, "step_s": med, "tokens_per_s": tokens / med}
    if has_cuda():
        c = count_parameters(m)
        attn = 3 * 2 * 2 * m.num_layers * a.seq * m.num_attention_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim) / 2
        flops_per_token = 6 * (c.activated - c.embedding) + attn
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.0) * 1e12
        res.update(gpu=name, mfu=flops_per_token * tokens / med / peak, peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(a.out, "w") as f:
            json.dump(res, f)


def run(layout: str, model: str, a, nproc: int) -> dict:
    out = tempfile.mktemp(suffix=".json")
    args = [__file__, "--worker", "--layout", layout, "--model", model, "--out", out, "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--seq", str(a.seq), "--batch", str(a.batch), "--micro", str(a.micro)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
    cmd = ([sys.executable] if nproc == 1 else [os.path.join(os.path.dirname(sys.executable), "torchrun"),
                                                "--standalone", "--nproc-per-node", str(nproc)]) + args
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    with open(out) as f:
        return json.load(f)


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
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    import torch

    rows = [run("single", "tiny", a, 1)] + [run(l, "tiny", a, 2) for l in ("tp2_sp", "ep2", "dp2")]
    if torch.cuda.is_available():
        g = argparse.Namespace(**{**vars(a), "seq": 4096, "batch": 4, "micro": 1})
        rows.append(run("single", "dsv3-proxy", g, 1))
    print(f"{'model':12} {'layout':8} {'step s':>8} {'tokens/s':>10} {'MFU':>6}")
    for r in rows:
        mfu = f"{r['mfu']:.3f}" if "mfu" in r else "-"
        print(f"{r['model']:12} {r['layout']:8} {r['step_s']:8.3f} {r['tokens_per_s']:10.0f} {mfu:>6}")


if __name__ == "__main__":
    main()
