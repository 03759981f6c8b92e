"""`r1mega generate CONFIG [--stage NAME] [overrides]`: sample completions with the rollout engine.

The policy is the config's model, initialised from the stage's ``init_from`` checkpoint (random
weights without one). Prompts: the ``prompt`` field of every row of ``data.eval_paths`` (JSONL), or
else ``data.max_samples`` (default 8) prompts of the built-in ``data.tasks`` in the R1-Zero
template. Each prompt gets ``R1MEGA_GENERATE_N`` (default 1) samples with the ``rollout``
section's settings (engine, sampling, stop strings). Rank 0 writes ``generations.jsonl`` (one row
per prompt: prompt, and per sample the text, token ids, log-probs, finish reason) into the stage's
output directory (the run directory without ``--stage``) and prints the throughput.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from r1mega.config.base import ConfigError


def _prompts(cfg, tok) -> list:
    if cfg.data.eval_paths:
        from r1mega.data.jsonl import read_jsonl

        texts = [row["prompt"] for path in cfg.data.eval_paths for row in read_jsonl(cfg.resolve_path(path), ["prompt"])]
    else:
        from r1mega.data.prompts import TaskPrompts

        n = cfg.data.max_samples or 8
        texts = [p.text for p in TaskPrompts(tok, cfg.data.tasks, [1, 2], seed=cfg.data.seed, split="test").batch(0, n)]
    if cfg.data.max_samples:
        texts = texts[:cfg.data.max_samples]
    if not texts:
        raise ConfigError("data.eval_paths", "no prompts to generate from")
    return texts


def main(cfg, args) -> int:
    import torch.distributed as dist

    from r1mega.data.tokenizer import load_tokenizer, run_tokenizer_dir
    from r1mega.train.engine import TrainEngine

    from .engine import make_engine

    stage = cfg.stage(args.stage) if getattr(args, "stage", None) else None
    if stage is not None:
        cfg = cfg.for_stage(stage)
    out_dir = Path(cfg.stage_dir(stage) if stage is not None else cfg.run_dir)
    trainer = TrainEngine(cfg.model, cfg.parallel, None, seed=cfg.data.seed, mtp=False)
    if stage is not None and stage.init_from:
        from r1mega.train.checkpoint import CheckpointManager
        from r1mega.train.entry import resolve_init_checkpoint

        init = resolve_init_checkpoint(cfg, stage.init_from)
        CheckpointManager(init.parent).load(trainer, init, load_optimizer=False)
    tok = load_tokenizer(run_tokenizer_dir(cfg.data))
    texts = _prompts(cfg, tok)
    prompts = [tok.encode(t) for t in texts]
    n = int(os.environ.get("R1MEGA_GENERATE_N", "1"))
    engine = make_engine(cfg, trainer, **({"load_trainer_weights": True} if cfg.rollout.engine == "vllm" else {}),
                         max_batch=len(prompts) * n)
    t0 = time.perf_counter()
    rollouts = engine.generate(prompts, n=n)
    seconds = time.perf_counter() - t0
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        from r1mega.data.jsonl import write_jsonl

        out_dir.mkdir(parents=True, exist_ok=True)
        rows = [{"prompt": text, "samples": [{"text": c.text, "token_ids": c.token_ids, "logprobs": c.logprobs,
                                               "finish_reason": c.finish_reason,
                                               "stop_reason": c.stop_reason if isinstance(c.stop_reason, (str, int)) else None}
                                              for c in rollouts.group(i)]}
                for i, text in enumerate(texts)]
        path = write_jsonl(out_dir / "generations.jsonl", rows)
        toks = rollouts.num_generated_tokens
        print(f"[r1mega] generate ({engine.name}): {len(prompts)} prompts x {n} samples, {toks} tokens in "
              f"{seconds:.2f}s ({toks / max(seconds, 1e-9):.0f} tok/s) -> {path}", flush=True)
    engine.shutdown()
    return 0
