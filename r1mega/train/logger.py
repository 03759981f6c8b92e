"""Step metrics to JSONL, TensorBoard and one concise console line (rank 0 only)."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional


class MetricLogger:
    def __init__(self, out_dir: str, jsonl_path: Optional[str] = None, tensorboard_dir: Optional[str] = None,
                 tensorboard: bool = True, progress_bar: bool = True, total: Optional[int] = None,
                 initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.enabled = enabled
        self.tb = self.bar = None
        self.jsonl = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        from r1mega.data.jsonl import open_append

        # a resumed stage appends; a row torn by a kill is dropped first (with a warning naming it)
        self.jsonl = open_append(jsonl_path or os.path.join(out_dir, "metrics.jsonl"))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(tensorboard_dir or os.path.join(out_dir, "tensorboard"))
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
                            disable=not sys.stderr.isatty())
        self._t = time.time()

    def log(self, step: int, metrics: dict, console: Optional[list[str]] = None) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        self.jsonl.write(json.dumps({"step": step, "time": round(time.time() - self._t, 3), **clean}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)
        keys = console or list(clean)[:6]
        line = " ".join(f"{k.split('/')[-1]}={clean[k]:.4g}" for k in keys if k in clean)
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix_str(line, refresh=False)
            self.bar.update(1)
        else:
            print(f"step {step}: {line}", flush=True)

    def close(self) -> None:
        if self.enabled:
            if self.bar is not None:
                self.bar.close()
            if self.tb is not None:
                self.tb.close()
            self.jsonl.close()
