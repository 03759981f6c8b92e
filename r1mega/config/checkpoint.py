"""Checkpoint saving and resuming (Megatron distributed checkpoints). Stages may override
save_interval and keep_last; the directory is the stage's output directory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import check, check_choice, check_int, doc

FORMATS = ("torch_dist", "torch")


@dataclass
class CheckpointConfig:
    save_interval: int = doc(100, "Save every N optimizer steps (0 = only at the end of the stage).")
    keep_last: Optional[int] = doc(2, "Keep only the newest N checkpoints (None = keep all).")
    format: str = doc("torch_dist", "Checkpoint format: 'torch_dist' (sharded, reshardable) or 'torch' (one file per rank).")
    async_save: bool = doc(False, "Write checkpoints in the background (torch_dist only).")
    resume: bool = doc(True, "Resume from the newest checkpoint in the output directory when one exists; finished stages are skipped.")

    def validate(self, where: str = "checkpoint") -> None:
        check_int(self.save_interval, f"{where}.save_interval", minimum=0)
        check_int(self.keep_last, f"{where}.keep_last", allow_none=True)
        check_choice(self.format, FORMATS, f"{where}.format")
        check(not self.async_save or self.format == "torch_dist", f"{where}.async_save",
              f"needs format='torch_dist', got format={self.format!r}")
