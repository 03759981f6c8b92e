"""Reward-model stage (``kind: reward_model``): a Bradley-Terry reward model for R1's all-scenario RL.

R1's last stage ("RL for all scenarios") scores reasoning prompts with rule rewards and general
(helpfulness) prompts with a reward model trained on preference pairs. This stage trains that
model on Megatron-Core:

1. Preference pairs from the project's own tasks (:mod:`r1mega.data.preferences`, train split only)
   or from ``reward_model.pairs_paths``; held-out pairs (problems no training pair uses) measure
   the pairwise accuracy. Both are written to the stage directory (``pairs_train.jsonl``,
   ``pairs_eval.jsonl``).
2. The model is the stage's ``model`` (initialised from ``init_from``: pretrain or SFT), and its
   reward is ``logit_good - logit_bad`` at the EOS after the response
   (:mod:`r1mega.rewards.model_reward`, which explains the choice and how it works under TP).
3. Every step is a :class:`~r1mega.rewards.model_reward.RewardModelEngine` ``train_step`` (Megatron
   DDP, optimizer, ``get_forward_backward_func``) with
   :class:`~r1mega.algorithms.bt_loss.BradleyTerryLoss`: ``-log sigmoid(r_chosen - r_rejected)``
   plus a small centring term. ``optimizer.global_batch_size`` / ``micro_batch_size`` count pairs.
4. Checkpoints (with the score tokens in their metadata) go through the CheckpointManager, so the
   stage resumes after an interruption and GRPO loads the model with ``rewards.reward_model:
   stage:NAME``. Metrics (``loss``, ``accuracy``, ``eval_accuracy``, per-kind
   ``eval_accuracy/<kind>``) go to ``metrics.jsonl``/TensorBoard and the stage manifest.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Optional

import torch.nn.functional as F
import torch

from r1mega.config.base import ConfigError


def _pairs(cfg, stage) -> tuple[list[dict], list[dict]]:
    from r1mega.data.preferences import build_pairs, read_pairs

    rc = cfg.reward_model
    train, held = build_pairs(0 if rc.pairs_paths else rc.num_pairs, rc.eval_pairs, rc.kinds, rc.difficulties,
                              cfg.data.template, rc.seed)
    train_rows = [p.to_dict() for p in train]
    if rc.pairs_paths:
        for i, path in enumerate(rc.pairs_paths):
            real = Path(cfg.resolve_path(path))
            if not real.is_file():
                raise ConfigError(f"reward_model.pairs_paths[{i}]", f"file not found: {path!r} ({real})")
            train_rows += read_pairs(real)
        if not train_rows:
            raise ConfigError("reward_model.pairs_paths", f"no preference pairs in {rc.pairs_paths}")
    return train_rows, [p.to_dict() for p in held]


class PairBatches:
    """Global batches of ``n`` pairs, a pure function of (seed, step): rows ``2i``/``2i+1`` are the chosen /
    rejected sequences of pair ``i``; pairs are reshuffled every epoch."""

    def __init__(self, encoded: list[tuple[list, list]], pairs_per_batch: int, seed: int, pad_id: int):
        self.encoded, self.n, self.seed, self.pad_id = encoded, pairs_per_batch, seed, pad_id
        self._orders: dict = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            idx = list(range(len(self.encoded)))
            random.Random(f"r1mega-rm:{self.seed}:{epoch}").shuffle(idx)
            self._orders = {epoch: idx}
        return self._orders[epoch]

    def batch(self, step: int) -> dict:
        from r1mega.rewards.model_reward import score_batch

        seqs = []
        for i in range(step * self.n, (step + 1) * self.n):
            epoch, j = divmod(i, len(self.encoded))
            c, r = self.encoded[self._order(epoch)[j]]
            seqs += [c, r]
        return score_batch(seqs, self.pad_id)


def evaluate_pairs(engine, encoded: list[tuple[list, list]], kinds: list[str], pad_id: int, batch_size: int = 64) -> dict:
    """Held-out pairwise accuracy (overall and per kind), BT loss and margin; collective."""
    from r1mega.rewards.model_reward import score_sequences

    flat = [s for c, r in encoded for s in (c, r)]
    scores = torch.tensor(score_sequences(engine, flat, pad_id=pad_id, batch_size=batch_size))
    d = scores[0::2] - scores[1::2]
    out = {"eval_accuracy": float((d > 0).float().mean()), "eval_loss": float(F.softplus(-d).mean()),
           "eval_margin": float(d.mean()), "eval_reward_chosen": float(scores[0::2].mean()),
           "eval_reward_rejected": float(scores[1::2].mean())}
    for k in sorted(set(kinds)):
        sel = torch.tensor([x == k for x in kinds])
        out[f"eval_accuracy/{k}"] = float((d[sel] > 0).float().mean())
    return out


def run_stage(cfg, stage_name: Optional[str] = None) -> dict:
    from r1mega.algorithms import BradleyTerryLoss
    from r1mega.data.jsonl import write_jsonl
    from r1mega.rewards.model_reward import KIND, RewardModelEngine, encode_scored, score_token_ids
    from r1mega.train.batching import dp_shard
    from r1mega.train.checkpoint import CheckpointManager
    from r1mega.train.entry import StopFlag, _rank0, load_tokenizer_for, resume_or_init
    from r1mega.train.logger import MetricLogger

    stage = cfg.select_stage(stage_name)
    if stage.kind != KIND:
        raise ConfigError(f"pipeline.stages[{stage.name}].kind", f"{stage.kind!r} is not a reward_model stage")
    cfg = cfg.for_stage(stage)
    rc, o = cfg.reward_model, cfg.optimizer
    out = Path(cfg.stage_dir(stage))
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer_for(cfg, out)
    ids = score_token_ids(tok, rc.score_tokens)
    max_len = rc.max_length or cfg.data.seq_length
    pad = tok.pad_token_id or 0

    train_rows, eval_rows = _pairs(cfg, stage)
    if _rank0():
        write_jsonl(out / "pairs_train.jsonl", train_rows)
        write_jsonl(out / "pairs_eval.jsonl", eval_rows)

    def enc(rows):
        return [(encode_scored(tok, r["prompt"], r["chosen"], max_len), encode_scored(tok, r["prompt"], r["rejected"], max_len))
                for r in rows]

    train_enc, eval_enc = enc(train_rows), enc(eval_rows)
    eval_kinds = [r.get("kind", "file") for r in eval_rows]

    # The optimizer section counts pairs; the engine counts sequences (two per pair, same microbatch).
    rows_optim = dataclasses.replace(o, micro_batch_size=2 * o.micro_batch_size, global_batch_size=2 * o.global_batch_size)
    steps = stage.steps
    engine = RewardModelEngine(cfg.model, cfg.parallel, rows_optim, score_token_ids=ids, seed=cfg.data.seed,
                               total_steps=steps)
    dp_rank, dp = engine.dp_rank_size()
    if o.global_batch_size % (o.micro_batch_size * dp):
        raise ConfigError("optimizer.global_batch_size", f"{o.global_batch_size} pairs do not split into microbatches of "
                          f"{o.micro_batch_size} pairs on {dp} data-parallel ranks")
    ckpt = CheckpointManager(out / "checkpoints", keep_last=cfg.checkpoint.keep_last or 0)
    start = resume_or_init(cfg, stage, engine, ckpt)
    extra = {"stage": stage.name, "kind": KIND, "score_tokens": list(rc.score_tokens), "score_token_ids": ids,
             "max_length": max_len, "template": cfg.data.template}
    data = PairBatches(train_enc, o.global_batch_size, rc.seed, pad)
    loss = BradleyTerryLoss(rc.center_coef)
    lg = cfg.logging
    log = MetricLogger(str(out), lg.jsonl_path, lg.tensorboard_dir, lg.tensorboard, lg.progress_bar, total=steps,
                       initial=start, enabled=_rank0(), desc=stage.name)
    stop, interval = StopFlag(), cfg.checkpoint.save_interval
    final: dict = {}
    step = start
    t_start = time.time()
    try:
        while step < steps:
            t0 = time.time()
            st = engine.train_step(dp_shard(data.batch(step), dp_rank, dp), loss)
            step += 1
            dt = time.time() - t0
            final = {"loss": st.metrics.get("rm/loss"), "accuracy": st.metrics.get("rm/accuracy"),
                     "margin": st.metrics.get("rm/margin"), "reward_chosen": st.metrics.get("rm/chosen"),
                     "reward_rejected": st.metrics.get("rm/rejected"), "grad_norm": st.grad_norm, "lr": st.lr,
                     "step_time": dt, "pairs_per_s": o.global_batch_size / dt}
            if (rc.eval_interval and step % rc.eval_interval == 0) or step == steps:
                final.update(evaluate_pairs(engine, eval_enc, eval_kinds, pad))
            if step % max(1, lg.log_interval) == 0 or step == steps or "eval_accuracy" in final:
                log.log(step, {k: v for k, v in final.items() if v is not None},
                        console=["loss", "accuracy", "eval_accuracy", "margin", "lr"])
            if (interval and step % interval == 0) or step == steps:
                ckpt.save(engine, step, extra=extra)
            elif stop.should_stop():
                ckpt.save(engine, step, extra=extra)
                if _rank0():
                    print(f"[r1mega] {stage.name}: stop requested, saved step {step}, exiting", flush=True)
                return {"stopped_at": step, **final}
            if step < steps:
                final = {k: v for k, v in final.items() if not k.startswith("eval_")}
    finally:
        log.close()
    final.update({"pairs_train": float(len(train_rows)), "pairs_eval": float(len(eval_rows)),
                  "train_seconds": time.time() - t_start})
    if _rank0():
        (out / "reward_model_summary.json").write_text(json.dumps(
            {"stage": stage.name, "steps": step, "score_tokens": list(rc.score_tokens), "score_token_ids": ids,
             **{k: v for k, v in final.items() if v is not None}}, indent=1))
    return final


__all__ = ["run_stage", "PairBatches", "evaluate_pairs"]
