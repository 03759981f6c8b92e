"""Megatron distributed checkpoints: atomic, resharding, keep-last-N, with a ``latest`` pointer.

Layout under a run's checkpoint root::

    step_00000010/        a complete dist_checkpointing directory (any TP/PP/EP/DP can load it)
        r1mega_meta.json  written last: its presence marks the checkpoint complete
        rng/rank_<r>.pt   per-rank RNG states (restored only when the layout is unchanged)
    latest                text file naming the newest complete step directory

A save writes into ``.tmp_step_<N>`` and only renames it after every rank finished and the
marker is written, so a crash mid-save never leaves a directory that looks complete. Model and
optimizer use Megatron's sharded state dicts (the distributed optimizer in its
``fully_reshardable`` form), so TP2 -> TP1, EP2 -> EP1, PP2 -> PP1 loads work.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from r1mega.platform import megatron_noapex

META = "r1mega_meta.json"
_OPTIM_META = {"distrib_optim_sharding_type": "fully_reshardable"}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or does not fit the model."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _layout(engine) -> dict:
    p = engine.parallel
    return {"tp": p.tensor_parallel, "pp": p.pipeline_parallel, "ep": p.expert_parallel,
            "etp": p.expert_tensor_parallel, "cp": p.context_parallel, "vpp": p.virtual_pipeline,
            "world": dist.get_world_size() if dist.is_initialized() else 1}


def _model_sharded(engine) -> dict:
    from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

    sd = {}
    for i, chunk in enumerate(engine.chunks):
        module = getattr(chunk, "module", chunk)
        sd["model" if len(engine.chunks) == 1 else f"model{i}"] = module.sharded_state_dict(metadata=ensure_metadata_has_dp_cp_group(None))
    return sd


def _rng_state() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    return {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "tracker": get_cuda_rng_tracker().get_states()}


def _set_rng_state(s: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(s["random"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    get_cuda_rng_tracker().set_states(s["tracker"])


class CheckpointManager:
    def __init__(self, root: str | os.PathLike, keep_last: int = 3):
        self.root = Path(root)
        self.keep_last = keep_last

    # ------------------------------------------------------------- discovery
    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint (via ``latest``; falls back to scanning if it is stale)."""
        pointer = self.root / "latest"
        if pointer.exists():
            p = self.root / pointer.read_text().strip()
            if (p / META).exists():
                return p
        complete = sorted(d for d in self.root.glob("step_*") if (d / META).exists())
        return complete[-1] if complete else None

    @staticmethod
    def read_meta(path: str | os.PathLike) -> dict:
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist")
        if not (path / META).exists():
            raise CheckpointError(f"checkpoint {path} is incomplete (no {META}): an interrupted save?")
        try:
            return json.loads((path / META).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"checkpoint {path}: {META} is corrupt ({e})") from e

    # ------------------------------------------------------------------ save
    def save(self, engine, step: int, extra: Optional[dict] = None) -> Path:
        """Collective: every rank calls it. ``extra`` (data position, stage state) must be JSON-able."""
        from megatron.core import dist_checkpointing

        tmp = self.root / f".tmp_step_{step}"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        sd = _model_sharded(engine)
        if engine.optimizer is not None:
            megatron_noapex.materialise_adam_state(engine.optimizer)  # a never-stepped optimizer
            sd["optimizer"] = engine.optimizer.sharded_state_dict(sd, is_loading=False, metadata=_OPTIM_META)
        dist_checkpointing.save(sd, str(tmp), content_metadata=_OPTIM_META)
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(_rng_state(), tmp / "rng" / f"rank_{_rank()}.pt")
        _barrier()
        final = self.step_dir(step)
        if _rank() == 0:
            meta = {"step": step, "extra": extra or {}, "layout": _layout(engine),
                    "model": dataclasses.asdict(engine.model_cfg),
                    "scheduler": engine.scheduler.state_dict() if engine.scheduler is not None else None}
            with open(tmp / META, "w") as f:
                json.dump(meta, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer_tmp = self.root / "latest.tmp"
            pointer_tmp.write_text(final.name)
            os.replace(pointer_tmp, self.root / "latest")
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        complete = sorted(d for d in self.root.glob("step_*") if (d / META).exists())
        for d in complete[:-self.keep_last]:
            shutil.rmtree(d, ignore_errors=True)
        for d in self.root.glob(".tmp_step_*"):  # leftovers of crashed saves
            shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ load
    def load(self, engine, path: Optional[str | os.PathLike] = None, load_optimizer: bool = True) -> dict:
        """Load into ``engine`` (collective). Returns the checkpoint's metadata (step, extra).
        ``load_optimizer=False`` loads weights only (init_from, reference models, evaluation)."""
        from megatron.core import dist_checkpointing
        from torch.distributed.checkpoint.api import CheckpointException as TorchCheckpointException

        path = Path(path) if path is not None else self.latest()
        if path is None:
            raise CheckpointError(f"no complete checkpoint under {self.root}")
        meta = self.read_meta(path)
        self._check_compatible(engine, meta, path)
        sd = _model_sharded(engine)
        with_optim = load_optimizer and engine.optimizer is not None
        if with_optim:
            megatron_noapex.materialise_adam_state(engine.optimizer)
            sd["optimizer"] = engine.optimizer.sharded_state_dict(sd, is_loading=True, metadata=_OPTIM_META)
        try:
            state = dist_checkpointing.load(sd, str(path))
        except (Exception, TorchCheckpointException) as e:  # the torch one is a BaseException: name the checkpoint
            raise CheckpointError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from e
        for i, chunk in enumerate(engine.chunks):
            chunk.load_state_dict(state["model" if len(engine.chunks) == 1 else f"model{i}"], strict=True)
        if with_optim:
            engine.optimizer.load_state_dict(state["optimizer"])
            if engine.scheduler is not None and meta.get("scheduler"):
                engine.scheduler.load_state_dict(meta["scheduler"])
            engine.step = meta["step"]
            rng = path / "rng" / f"rank_{_rank()}.pt"
            if meta["layout"] == _layout(engine) and rng.exists():
                _set_rng_state(torch.load(rng, weights_only=False))
        _barrier()
        return meta

    @staticmethod
    def _check_compatible(engine, meta: dict, path: Path) -> None:
        from r1mega.config.model_source import shape_mismatches

        diff = shape_mismatches(meta.get("model", {}), dataclasses.asdict(engine.model_cfg))
        if diff:
            raise CheckpointError(f"checkpoint {path} does not fit the model: " + "; ".join(diff))
