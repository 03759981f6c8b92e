"""Metrics and console output. Default paths live in the stage's output directory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import check_choice, check_int, doc

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass
class LoggingConfig:
    tensorboard: bool = doc(True, "Write TensorBoard event files.")
    tensorboard_dir: Optional[str] = doc(None, "TensorBoard directory (None = <stage output>/tensorboard).")
    jsonl_path: Optional[str] = doc(None, "Metrics as one JSON object per line (None = <stage output>/metrics.jsonl).")
    log_interval: int = doc(1, "Log metrics every N steps.")
    progress_bar: bool = doc(True, "Show a console progress bar (rank 0 only; off when stderr is not a terminal).")
    level: str = doc("INFO", "Python logging level: DEBUG, INFO, WARNING or ERROR.")

    def validate(self, where: str = "logging") -> None:
        check_int(self.log_interval, f"{where}.log_interval")
        check_choice(self.level, LEVELS, f"{where}.level")
