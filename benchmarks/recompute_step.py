"""What activation recompute (``parallel.recompute``) costs and saves on a tiny train step. Prints figures;
asserts nothing (the equality of the steps is tests/train/test_recompute.py).

For each model (tiny MoE without MTP, tiny dense; fp32, one process) and each mode (none, full = uniform 1
layer, selective): the median wall time of a train step (``--batch`` rows of ``--seq`` tokens, ``--micro``
rows per microbatch) over ``--repeats`` rounds, the modes interleaved inside each round so that the shared
machine's load hits them alike, and the bytes a microbatch's forward keeps for its backward (the tensors
autograd saves outside the backward, counted once per storage through ``saved_tensors_hooks``, per
microbatch): the activation memory recompute is there to cut. (A full recompute saves one unit's tensors
again inside the backward, briefly: not counted.)

    python benchmarks/recompute_step.py [--batch 8] [--seq 256] [--micro 4] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

MODES = ("none", "full", "selective")


def _engine(preset: str, mode: str, a):
    import torch

    from r1mega.config.optimizer import OptimizerConfig
    from r1mega.config.parallel import ParallelConfig
    from r1mega.model.presets import get_preset
    from r1mega.train.engine import TrainEngine

    torch.manual_seed(0)
    return TrainEngine(get_preset(preset, num_nextn_predict_layers=0), ParallelConfig(recompute=mode),
                       OptimizerConfig(lr=1e-4, warmup_steps=0, decay_style="constant", micro_batch_size=a.micro,
                                       global_batch_size=a.batch), seed=7, mtp=False, total_steps=10 ** 6)


def _batch(a):
    import torch

    from r1mega.train.batching import lm_batch

    g = torch.Generator().manual_seed(0)
    return lm_batch([torch.randint(1, 512, (a.seq,), generator=g).tolist() for _ in range(a.batch)])


def _saved_bytes(engine, batch, loss, micro: int) -> float:
    """Bytes of the distinct storages the forwards of one train step save for the backward, per microbatch."""
    import torch

    seen = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and torch._C._current_autograd_node() is None:  # a forward, not a recompute
            s = t.untyped_storage()
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        engine.train_step(batch, loss)
    return sum(seen.values()) / micro


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="tiny,tiny-dense")
    a = p.parse_args()

    import torch

    from r1mega.algorithms import SFTLoss
    from r1mega.config.parallel import ParallelConfig
    from r1mega.platform.distributed import init_model_parallel

    torch.set_num_threads(a.threads)
    init_model_parallel(ParallelConfig(), seed=1234)
    loss = SFTLoss("seq-mean-token-mean")
    print(f"load average before: {os.getloadavg()[0]:.2f}; batch {a.batch} x {a.seq} tokens, microbatches of "
          f"{a.micro}, {a.threads} threads, fp32")
    for preset in a.models.split(","):
        engines = {m: _engine(preset, m, a) for m in MODES}
        batch = _batch(a)
        saved = {m: _saved_bytes(e, batch, loss, a.batch // a.micro) for m, e in engines.items()}  # also the warm-up step
        times = {m: [] for m in MODES}
        for _ in range(a.repeats):
            for m, e in engines.items():
                t = time.perf_counter()
                e.train_step(batch, loss)
                times[m].append(time.perf_counter() - t)
        base = statistics.median(times["none"])
        for m in MODES:
            t = statistics.median(times[m])
            print(f"{preset:10} recompute {m:9}: step {t * 1e3:7.1f} ms (x{t / base:.2f}), min {min(times[m]) * 1e3:.1f} ms; "
                  f"kept for the backward {saved[m] / 2 ** 20:6.1f} MiB a microbatch (x{saved[m] / saved['none']:.2f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
