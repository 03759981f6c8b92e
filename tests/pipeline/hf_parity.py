"""Helpers of the end-to-end tests that train a Hugging Face model and export it back: running the ``r1mega``
CLI, and the log-probs of token sequences from a transformers model and from an r1mega Megatron checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

R1MEGA = [sys.executable, "-m", "r1mega.cli"]
REPO = Path(__file__).resolve().parents[2]


def run_r1mega(args, cwd, timeout=600, threads: int = 1) -> str:
    """``r1mega ARGS`` in a child with this checkout first on the path and none of this process's
    torch.distributed variables; its output, or an assertion with the tails of stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                              "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    p = subprocess.run(R1MEGA + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"r1mega {' '.join(map(str, args))} failed:\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}"
    return p.stdout + p.stderr


def hf_logprobs(model, seqs):
    """Per sequence, ``[len - 1]``: log p(s[t+1] | s[:t+1]) from a transformers causal LM (one sequence a call)."""
    with torch.no_grad():
        out = []
        for s in seqs:
            lp = model(torch.tensor([s])).logits[0].float().log_softmax(-1)
            out.append(torch.stack([lp[t, s[t + 1]] for t in range(len(s) - 1)]))
    return out


def megatron_logprobs(root: Path, seqs):
    """The same through r1mega's own Megatron engine on the latest checkpoint under ``root`` (model config
    from its meta)."""
    from r1mega.config.model import ModelConfig
    from r1mega.config.parallel import ParallelConfig
    from r1mega.train.batching import lm_batch
    from r1mega.train.checkpoint import CheckpointManager
    from r1mega.train.engine import TrainEngine

    mgr = CheckpointManager(root)
    meta = mgr.read_meta(mgr.latest())
    engine = TrainEngine(ModelConfig(**meta["model"]), ParallelConfig(), None, mtp=False)
    mgr.load(engine, mgr.latest(), load_optimizer=False)
    lp = engine.logprobs(lm_batch(seqs))
    return [lp[i, :len(s) - 1] for i, s in enumerate(seqs)]
