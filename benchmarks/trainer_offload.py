"""Trainer offload (rollout.offload_trainer, r1mega/train/offload.py): bytes and seconds of parking a trained engine's
weights, gradients and optimizer state in host memory and bringing them back, on this machine's device.

    .venv/bin/python benchmarks/trainer_offload.py [--model tiny|tiny-dense|smollm2] [--repeats 3]

On the CPU the "host" copy is another CPU buffer (memcpy bandwidth), forced with R1MEGA_FORCE_TRAINER_OFFLOAD; on a
GPU the same code copies to pinned memory with non-blocking copies (PCIe). Prints one line per part and direction
(median of the repeats) and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, num_layers=30, intermediate_size=1536, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, first_k_dense_replace=30, tie_word_embeddings=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", choices=["tiny", "tiny-dense", "smollm2"])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ["R1MEGA_FORCE_TRAINER_OFFLOAD"] = "1"
    from r1mega.algorithms import SFTLoss
    from r1mega.config.optimizer import OptimizerConfig
    from r1mega.config.parallel import ParallelConfig
    from r1mega.model.presets import get_preset
    from r1mega.platform import device
    from r1mega.train.batching import lm_batch
    from r1mega.train.engine import TrainEngine
    from r1mega.train.offload import Offloader

    model = get_preset("tiny-dense", **SMOLLM2) if a.model == "smollm2" else get_preset(a.model, num_nextn_predict_layers=0)
    e = TrainEngine(model, ParallelConfig(), OptimizerConfig(lr=1e-4, warmup_steps=0, micro_batch_size=2,
                                                             global_batch_size=2), mtp=False, total_steps=4)
    g = torch.Generator().manual_seed(0)
    e.train_step(lm_batch([torch.randint(1, 500, (32,), generator=g).tolist() for _ in range(2)]), SFTLoss("token-mean"))
    n = sum(p.numel() for c in e.chunks for p in c.parameters())
    o = Offloader(e)
    rows: dict = {}
    for _ in range(a.repeats):
        for label, call in (("offload", lambda: o.offload()), ("reload", o.reload)):
            st = call()
            rows.setdefault(label, []).append(st)
    print(f"{a.model}: {n / 1e6:.1f} M parameters, {model.params_dtype}, device {device()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for label, sts in rows.items():
        sec = statistics.median(s.seconds for s in sts)
        st = sts[0]
        parts = ", ".join(f"{p} {b / 2**20:.1f} MiB" for p, b in st.by_part.items())
        print(f"  {label}: {st.bytes_copied / 2**20:.1f} MiB copied ({parts} freed/allocated), "
              f"{sec * 1e3:.1f} ms, {st.bytes_copied / sec / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
