"""Run a parity worker script on 1 process (plain python) or N processes (torchrun --standalone,
gloo) and read the JSON it writes; the worker's stderr is shown when it fails."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_worker(worker: Path, args: list[str], out: Path, nproc: int = 1) -> dict:
    cmd = ([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else [sys.executable])
    proc = subprocess.run(cmd + [str(worker), *args, "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())
