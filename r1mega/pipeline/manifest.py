"""Stage manifests: ``<stage dir>/manifest.json`` records what a stage ran with and produced.

A manifest holds the hash of the stage's *resolved* config (the run config as the stage sees it),
its inputs (the checkpoint it started from), outputs, final metrics and a status. The runner
skips a stage whose manifest is ``complete`` with the same hash, resumes one that is ``running``
(its own checkpoints carry the progress), and refuses to silently reuse a finished stage whose
config changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import yaml

NAME = "manifest.json"
# Fields that do not change what a stage computes.
_IGNORED = {("logging",), ("checkpoint", "resume"), ("pipeline",)}


def config_hash(stage_cfg_dict: dict, stage: Optional[dict] = None) -> str:
    """Hash of what determines a stage's result: its resolved run config (minus logging/resume
    settings) and its own stage entry (kind, init_from, steps, overrides)."""
    d = {k: v for k, v in stage_cfg_dict.items() if (k,) not in _IGNORED}
    if stage is not None:
        d["stage"] = {k: stage.get(k) for k in ("name", "kind", "init_from", "steps", "overrides")}
    if "checkpoint" in d:
        d["checkpoint"] = {k: v for k, v in d["checkpoint"].items() if ("checkpoint", k) not in _IGNORED}
    return hashlib.sha256(yaml.safe_dump(d, sort_keys=True).encode()).hexdigest()[:16]


def read(stage_dir: os.PathLike) -> Optional[dict]:
    p = Path(stage_dir) / NAME
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise RuntimeError(f"{p} is corrupt ({e}); delete it to rerun the stage") from e


def write(stage_dir: os.PathLike, **fields) -> dict:
    """Merge ``fields`` into the manifest, atomically (rank 0 only)."""
    p = Path(stage_dir) / NAME
    p.parent.mkdir(parents=True, exist_ok=True)
    data = read(stage_dir) or {}
    data.update(fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, p)
    return data
