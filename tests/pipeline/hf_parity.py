"""Log-probs of token sequences from a transformers model and from an r1mega Megatron checkpoint: the parity
check of the end-to-end tests that export a trained model back to Hugging Face."""
from __future__ import annotations

from pathlib import Path

import torch


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
