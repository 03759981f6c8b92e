"""Optimizer, learning-rate schedule and batch sizes of the Megatron-Core trainer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import check, check_choice, check_int, check_positive, doc

DECAY_STYLES = ("cosine", "linear", "constant")


@dataclass
class OptimizerConfig:
    lr: float = doc(3e-4, "Peak learning rate (reached after warmup).")
    min_lr: float = doc(0.0, "Learning rate at the end of the decay (cosine/linear).")
    warmup_steps: int = doc(10, "Linear warmup from 0 to lr over this many optimizer steps.")
    decay_style: str = doc("cosine", "Decay after warmup: 'cosine', 'linear' or 'constant'.")
    total_steps: Optional[int] = doc(None, "Steps the schedule spans (None = the stage's steps).")
    weight_decay: float = doc(0.1, "Decoupled (AdamW) weight decay.")
    adam_beta1: float = doc(0.9, "Adam beta1.")
    adam_beta2: float = doc(0.95, "Adam beta2.")
    adam_eps: float = doc(1e-8, "Adam epsilon.")
    clip_grad: float = doc(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    micro_batch_size: int = doc(1, "Sequences per forward/backward on one data-parallel rank.")
    global_batch_size: int = doc(8, "Sequences per optimizer step over all data-parallel ranks (gradient accumulation fills the gap).")

    def grad_accum_steps(self, data_parallel: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * data_parallel)

    def validate(self, where: str = "optimizer") -> None:
        check_positive(self.lr, f"{where}.lr")
        check_positive(self.min_lr, f"{where}.min_lr", allow_zero=True)
        check(self.min_lr <= self.lr, f"{where}.min_lr", f"got {self.min_lr}, expected <= lr={self.lr}")
        check_int(self.warmup_steps, f"{where}.warmup_steps", minimum=0)
        check_choice(self.decay_style, DECAY_STYLES, f"{where}.decay_style")
        check_int(self.total_steps, f"{where}.total_steps", allow_none=True)
        if self.total_steps is not None:
            check(self.warmup_steps <= self.total_steps, f"{where}.warmup_steps",
                  f"got {self.warmup_steps}, expected <= total_steps={self.total_steps}")
        check_positive(self.weight_decay, f"{where}.weight_decay", allow_zero=True)
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and 0 <= v < 1, f"{where}.{name}", f"got {v!r}, expected 0 <= value < 1")
        check_positive(self.adam_eps, f"{where}.adam_eps")
        check_positive(self.clip_grad, f"{where}.clip_grad", allow_zero=True)
        check_int(self.micro_batch_size, f"{where}.micro_batch_size")
        check_int(self.global_batch_size, f"{where}.global_batch_size")
        # (its split into microbatches is checked where a stage kind reads it: r1mega.config.checks.check_batch)
