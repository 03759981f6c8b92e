"""`r1mega train CONFIG [--stage NAME] [overrides]`: pretraining and SFT stages on Megatron-Core.

Same command on a laptop (``python``), under ``torchrun`` and under ``srun``. Rerunning it
resumes from the stage's latest checkpoint (optimizer, schedule, RNG and data position), so a
killed or preempted job loses at most ``checkpoint.save_interval`` steps. A stop request
(SIGTERM/SIGUSR1, or the file named by ``$R1MEGA_STOP_FILE`` that the sbatch script creates
before a preemption) makes every rank save at the next step boundary and exit 0.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from r1mega.config.base import ConfigError

TRAIN_KINDS = ("pretrain", "sft", "distill")  # distill = SFT of a (dense) student on teacher samples,
# plus optional logit distillation from a frozen teacher (distill.alpha > 0, see r1mega/train/distill.py)


class StopFlag:
    """Set by SIGTERM/SIGUSR1 or by the stop file; agreed on by all ranks at step boundaries."""

    def __init__(self):
        self.local = False
        self.file = os.environ.get("R1MEGA_STOP_FILE")
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass

    def _handler(self, *_):
        self.local = True

    def should_stop(self) -> bool:
        flag = torch.tensor([1.0 if (self.local or (self.file and os.path.exists(self.file))) else 0.0])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def resolve_init_checkpoint(cfg, init_from: Optional[str]) -> Optional[Path]:
    """An earlier stage's latest checkpoint, or a checkpoint directory/root given by path."""
    from r1mega.train.checkpoint import CheckpointManager

    if not init_from:
        return None
    names = cfg.pipeline.names() if cfg.pipeline.stages else []
    root = Path(cfg.stage_dir(init_from)) / "checkpoints" if init_from in names else Path(init_from)
    if (root / "r1mega_meta.json").exists():
        return root
    latest = CheckpointManager(root).latest()
    if latest is None:
        raise ConfigError("init_from", f"{init_from!r}: no complete checkpoint under {root} (run that stage first)")
    return latest


def load_tokenizer_for(cfg, out_dir: Path):
    from r1mega.data.tokenizer import load_tokenizer, run_tokenizer_dir, save_tokenizer_copy

    path = str(run_tokenizer_dir(cfg.data))
    tok = load_tokenizer(path)
    if _rank0():
        save_tokenizer_copy(tok, path, out_dir / "tokenizer")  # chat template and generation_config.json too
    if len(tok) > cfg.model.vocab_size:
        raise ConfigError("model.vocab_size", f"{cfg.model.vocab_size} is smaller than the tokenizer's {len(tok)} tokens ({path})")
    return tok


def _batches(cfg, stage, tok):
    from r1mega.data.batches import PretrainBatches, SFTBatches, read_sft_rows
    from r1mega.data.templates import renderer_for

    o = cfg.optimizer
    if stage.kind == "pretrain":
        from r1mega.data.corpus import CorpusConfig

        return PretrainBatches(tok, cfg.data.seq_length, o.global_batch_size, seed=cfg.data.seed,
                               corpus=CorpusConfig(**cfg.data.corpus))
    rows, where = [], []
    for p in cfg.data.train_paths:
        got, labels = read_sft_rows(cfg.resolve_path(p))
        if not got:
            raise ConfigError("data.train_paths", f"{p} ({cfg.resolve_path(p)}) has no rows")
        rows += got
        where += labels
    if not rows:
        raise ConfigError("data.train_paths", f"stage {stage.name!r} ({stage.kind}) needs JSONL files of "
                          "prompt/response or messages rows")
    return SFTBatches(tok, rows, cfg.data.seq_length, o.global_batch_size, seed=cfg.data.seed,
                      renderer=renderer_for(cfg.data, tok), where=where)


def build_teacher(cfg, stage):
    """The frozen teacher of a ``distill`` stage with ``distill.alpha > 0`` (built before the student,
    so the student's initialisation is the same as without a teacher)."""
    from r1mega.config.distill import check_teacher_tokenizer, teacher_stage_name
    from r1mega.data.tokenizer import run_tokenizer_dir
    from r1mega.train.distill import Teacher

    d = cfg.distill
    d.validate_for_stage("distill")
    name = teacher_stage_name(d.teacher, cfg.pipeline.names() if cfg.pipeline.stages else [])
    try:
        path = resolve_init_checkpoint(cfg, name if name is not None else cfg.resolve_path(d.teacher))
    except ConfigError as e:
        raise ConfigError("distill.teacher", e.message) from None
    check_teacher_tokenizer(path, run_tokenizer_dir(cfg.data), d.teacher)  # one tokenizer, before any weight loads
    teacher = Teacher(path, cfg.model, cfg.parallel, seed=cfg.data.seed, name=d.teacher)
    if _rank0():
        m = teacher.model_cfg
        print(f"[r1mega] {stage.name}: logit distillation from {d.teacher} ({path}; {m.preset or m.arch}, "
              f"{m.num_layers} layers) alpha={d.alpha} T={d.temperature}", flush=True)
    return teacher


def _eval_batch(cfg, tok):
    from r1mega.data.batches import PretrainBatches

    held = PretrainBatches(tok, cfg.data.seq_length, 8, seed=cfg.data.seed + 10_007)
    return held.batch(0)


def resume_or_init(cfg, stage, engine, ckpt) -> int:
    """Load the stage's latest checkpoint (model, optimizer, scheduler, RNG) and return its step; else
    initialise the weights from ``stage.init_from`` (weights only) and return 0."""
    if cfg.checkpoint.resume and ckpt.latest() is not None:
        start = ckpt.load(engine)["step"]
        if _rank0():
            print(f"[r1mega] {stage.name}: resumed from step {start} ({ckpt.latest()})", flush=True)
        return start
    init = resolve_init_checkpoint(cfg, stage.init_from)
    if init is not None:
        ckpt.load(engine, init, load_optimizer=False)
        if _rank0():
            print(f"[r1mega] {stage.name}: initialised from {init}", flush=True)
    return 0


def train_stage(cfg, stage_name: Optional[str] = None) -> dict:
    """Run (or resume) one pretrain/SFT stage to completion. Returns the final metrics."""
    from r1mega.algorithms import SFTLoss
    from r1mega.train.batching import dp_shard
    from r1mega.train.checkpoint import CheckpointManager
    from r1mega.train.engine import TrainEngine
    from r1mega.train.logger import MetricLogger

    stage = cfg.select_stage(stage_name)
    if stage.kind not in TRAIN_KINDS:
        raise ConfigError(f"pipeline.stages[{stage.name}].kind", f"{stage.kind!r} is not trained by `r1mega train` "
                          f"(expected one of {TRAIN_KINDS}; use `r1mega run` for the whole pipeline)")
    cfg = cfg.for_stage(stage)
    out = Path(cfg.stage_dir(stage))
    out.mkdir(parents=True, exist_ok=True)
    steps = stage.steps
    kd = stage.kind == "distill" and cfg.distill.enabled
    teacher = build_teacher(cfg, stage) if kd else None
    # Logit distillation reads the student's logits: build it without MTP (its MTP loss is dropped).
    engine = TrainEngine(cfg.model, cfg.parallel, cfg.optimizer, seed=cfg.data.seed, total_steps=steps,
                         **({"mtp": False} if kd else {}))
    tok = load_tokenizer_for(cfg, out)
    ckpt = CheckpointManager(out / "checkpoints", keep_last=cfg.checkpoint.keep_last or 0)
    start = resume_or_init(cfg, stage, engine, ckpt)
    data = _batches(cfg, stage, tok)
    evalb = _eval_batch(cfg, tok)
    dp_rank, dp_size = engine.dp_rank_size()
    loss = eval_loss = SFTLoss("token-mean")
    if kd:
        from r1mega.train.distill import LogitDistillLoss

        loss = LogitDistillLoss(cfg.distill.alpha, cfg.distill.temperature, teacher, cfg.model.vocab_size)
    log = MetricLogger(str(out), cfg.logging.jsonl_path, cfg.logging.tensorboard_dir, cfg.logging.tensorboard,
                       cfg.logging.progress_bar, total=steps, initial=start, enabled=_rank0(), desc=stage.name)
    stop = StopFlag()
    interval = cfg.checkpoint.save_interval
    final: dict = {}
    step = start
    try:
        while step < steps:
            t0 = time.time()
            batch = data.batch(step)
            st = engine.train_step(dp_shard(batch, dp_rank, dp_size), loss)
            step += 1
            dt = time.time() - t0
            final = {"loss": st.metrics.get("sft/nll"), "grad_norm": st.grad_norm, "lr": st.lr,
                     "tokens_per_s": float(batch["loss_mask"].sum()) / dt, "step_time": dt}
            console = ["loss", "grad_norm", "lr", "tokens_per_s"]
            if kd:  # total objective, its CE and KD terms (token means over the response tokens)
                final.update(loss=st.metrics.get("distill/loss"), ce=st.metrics.get("distill/ce"),
                             kd=st.metrics.get("distill/kd"))
                console[1:1] = ["ce", "kd"]
            if step % max(1, cfg.logging.log_interval) == 0 or step == steps:
                log.log(step, final, console=console)
            if (interval and step % interval == 0) or step == steps:
                ckpt.save(engine, step, extra={"stage": stage.name})
            elif stop.should_stop():
                ckpt.save(engine, step, extra={"stage": stage.name})
                if _rank0():
                    print(f"[r1mega] {stage.name}: stop requested, saved step {step}, exiting", flush=True)
                return {"stopped_at": step, **final}
        ev = engine.evaluate(dp_shard(evalb, dp_rank, dp_size), eval_loss)
        final["eval_loss"] = ev.get("sft/nll")
        log.log(step, {"eval_loss": final["eval_loss"]}, console=["eval_loss"])
    finally:
        log.close()
    if _rank0():
        (out / "train_summary.json").write_text(json.dumps({"stage": stage.name, "steps": step, **final}, indent=1))
    return final


def main(cfg, args) -> int:
    from r1mega.platform.distributed import destroy

    try:
        train_stage(cfg, getattr(args, "stage", None))
    finally:
        destroy()
    return 0
