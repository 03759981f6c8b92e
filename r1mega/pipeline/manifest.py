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

# The config sections each stage kind reads (the parallel layout is left out: checkpoints reshard).
SECTIONS = {
    "pretrain": ("model", "optimizer", "data"),
    "sft": ("model", "optimizer", "data"),
    "distill": ("model", "optimizer", "data", "distill"),
    "grpo": ("model", "optimizer", "data", "rollout", "grpo", "rewards"),
    "rejection_sampling": ("model", "data", "rollout", "rewards", "rejection"),
    "reward_model": ("model", "optimizer", "data", "reward_model"),
    "eval": ("model", "data", "rollout", "rewards", "eval"),
}


def _non_default(value, default):
    """``value`` without the entries equal to ``default`` (so new fields with defaults change nothing)."""
    if isinstance(value, dict) and isinstance(default, dict):
        out = {k: _non_default(v, default.get(k)) for k, v in value.items() if v != default.get(k)}
        return {k: v for k, v in out.items() if v != {}}
    return value


def config_hash(stage_cfg_dict: dict, stage: Optional[dict] = None) -> str:
    """Hash of what determines a stage's result: the non-default values of the config sections its kind
    reads, and its own stage entry (kind, init_from, steps, overrides)."""
    from r1mega.config.run import RunConfig

    kind = (stage or {}).get("kind")
    defaults = RunConfig().to_dict()
    d = {k: _non_default(stage_cfg_dict.get(k), defaults.get(k)) for k in SECTIONS.get(kind, tuple(stage_cfg_dict))
         if k in stage_cfg_dict}
    if stage is not None:
        d["stage"] = {k: stage.get(k) for k in ("name", "kind", "init_from", "steps", "overrides")}
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
