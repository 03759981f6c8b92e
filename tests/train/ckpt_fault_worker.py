"""Under ``torchrun --nproc-per-node 2``: save step 1, then step 2 with rank 1's RNG-state write failing (a full
disk on one node); every rank writes what it saw to OUT_DIR/rank<r>.json. See test_checkpoint_errors.py."""
from __future__ import annotations

import errno
import json
import os
import sys

import torch
import torch.distributed as dist

from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.train.checkpoint import CheckpointError, CheckpointManager
from r1mega.train.engine import TrainEngine


def main(root: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    engine = TrainEngine(get_preset("tiny", num_layers=2), ParallelConfig(),
                         OptimizerConfig(micro_batch_size=1, global_batch_size=2), total_steps=4)
    mgr = CheckpointManager(root)
    mgr.save(engine, 1)
    rank = dist.get_rank()
    real = torch.save

    def save(obj, f, *a, **k):
        if rank == 1 and "rng" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real(obj, f, *a, **k)

    torch.save = save
    try:
        mgr.save(engine, 2)
        seen = "saved"
    except CheckpointError as e:
        seen = str(e)
    torch.save = real
    step = mgr.load(engine)["step"]  # collective: every rank is still in step
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"error": seen, "loaded": step, "latest": (mgr.root / "latest").read_text()}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
