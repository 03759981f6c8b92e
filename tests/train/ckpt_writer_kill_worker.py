"""Under ``torchrun --nproc-per-node 2``: save step 1 (each rank starts Megatron's checkpoint-writer Manager), SIGKILL
rank 0's Manager, save steps 2 and 3, load; every rank writes what it saw to OUT_DIR/rank<r>.json. See
test_checkpoint_errors.py."""
from __future__ import annotations

import json
import os
import signal
import sys

import torch
import torch.distributed as dist

from r1mega.config.optimizer import OptimizerConfig
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset
from r1mega.train.checkpoint import CheckpointError, CheckpointManager
from r1mega.train.engine import TrainEngine


def main(root: str, out_dir: str) -> None:
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa

    torch.set_num_threads(1)
    engine = TrainEngine(get_preset("tiny", num_layers=2), ParallelConfig(),
                         OptimizerConfig(micro_batch_size=1, global_batch_size=2), total_steps=4)
    mgr = CheckpointManager(root)
    mgr.save(engine, 1)
    rank = dist.get_rank()
    if rank == 0:
        server = fa._results_queue_manager._process
        os.kill(server.pid, signal.SIGKILL)
        server.join()
    dist.barrier()
    seen = []
    for step in (2, 3):
        try:
            mgr.save(engine, step)
            seen.append("saved")
        except CheckpointError as e:
            seen.append(str(e))
    step = mgr.load(engine)["step"]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"saves": seen, "loaded": step}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
