"""Megatron distributed checkpoints: atomic, resharding, keep-last-N, with a ``latest`` pointer.

Layout under a run's checkpoint root::

    step_00000010/        a complete dist_checkpointing directory (any TP/PP/EP/DP can load it)
        r1mega_meta.json  written last: its presence marks the checkpoint complete
        rng/rank_<r>.pt   per-rank RNG states (restored only when the layout is unchanged)
    latest                text file naming the newest complete step directory

A save writes into ``.tmp_step_<N>`` and only renames it after every rank finished and the
marker is written, so a crash mid-save never leaves a directory that looks complete; a failed write
(full disk, I/O error) on any rank removes the partial directory and raises one line naming the step,
the path and the OS error, with the previous checkpoint and ``latest`` untouched. Model and
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
    """A checkpoint that is missing, incomplete, corrupt or does not fit the model, or a save that failed."""


class _Failed(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _os_error(e: BaseException, seen: Optional[set] = None) -> Optional[OSError]:
    """The OSError behind ``e``: itself, its cause or context, or a rank's failure inside a CheckpointException."""
    seen = seen if seen is not None else set()
    if e is None or id(e) in seen:
        return None
    seen.add(id(e))
    if isinstance(e, OSError):
        return e
    inner = [e.__cause__, e.__context__]
    for failure in (getattr(e, "failures", None) or {}).values():  # {rank: (exception, traceback)}
        inner.append(failure[0] if isinstance(failure, tuple) else failure)
    for x in inner:
        if isinstance(x, BaseException):
            found = _os_error(x, seen)
            if found is not None:
                return found
    return None


def _describe(e: BaseException) -> str:
    """One line: the OS error with its path when there is one (``[Errno 28] No space left on device: 'PATH'``)."""
    os_err = _os_error(e)
    if os_err is not None:
        return f"{type(os_err).__name__}: {os_err}"
    failures = getattr(e, "failures", None)  # a CheckpointException: its first rank's own error (passed on as text)
    if failures:
        rank, failure = next(iter(failures.items()))
        return _describe(failure[0] if isinstance(failure, tuple) else failure)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


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
        """Collective: every rank calls it. ``extra`` (data position, stage state) must be JSON-able.

        A failed write (a full disk, an I/O error) on any rank raises :class:`CheckpointError` on every rank, naming
        the step, the path and the OS error, after removing the partial ``.tmp_step_<N>``: the previous checkpoint
        and ``latest`` are untouched (everything is written before anything is renamed)."""
        from torch.distributed.checkpoint.api import CheckpointException as TorchCheckpointException

        from .offload import require_resident

        require_resident(engine, f"checkpoint save (step {step})")  # a parked tensor would be read from freed memory
        tmp = self.root / f".tmp_step_{step}"
        final = self.step_dir(step)
        previous = self.latest()
        stage = "preparing"
        try:
            if _rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self._check(None)
            stage = "writing"
            self._write(engine, tmp)
            self._check(None)
            stage = "completing"
            if _rank() == 0:
                self._complete(engine, step, extra, tmp, final)
            self._check(None)
        except _Failed as e:  # another rank's failure
            self._give_up(step, tmp, previous, e.message)
        except (Exception, TorchCheckpointException) as e:  # ours (the torch one is a BaseException): tell the others
            message = f"rank {_rank()}, {stage}: {_describe(e)}"
            try:
                self._check(message)
            except _Failed as first:
                message = first.message
            self._give_up(step, tmp, previous, message)
        if _rank() == 0:
            self._prune()
        _barrier()
        return final

    @staticmethod
    def _write(engine, tmp: Path) -> None:
        from megatron.core import dist_checkpointing

        sd = _model_sharded(engine)
        if engine.optimizer is not None:
            megatron_noapex.materialise_adam_state(engine.optimizer)  # a never-stepped optimizer
            sd["optimizer"] = engine.optimizer.sharded_state_dict(sd, is_loading=False, metadata=_OPTIM_META)
        dist_checkpointing.save(sd, str(tmp), content_metadata=_OPTIM_META)
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(_rng_state(), tmp / "rng" / f"rank_{_rank()}.pt")

    def _complete(self, engine, step: int, extra: Optional[dict], tmp: Path, final: Path) -> None:
        """Rank 0, once every rank's shards are written: the marker and the new pointer are written (and synced)
        first, then the directory and the pointer are renamed, which needs no space."""
        meta = {"step": step, "extra": extra or {}, "layout": _layout(engine),
                "model": dataclasses.asdict(engine.model_cfg),
                "scheduler": engine.scheduler.state_dict() if engine.scheduler is not None else None}
        with open(tmp / META, "w") as f:
            json.dump(meta, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        pointer_tmp = self.root / "latest.tmp"
        with open(pointer_tmp, "w") as f:
            f.write(final.name)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        os.replace(pointer_tmp, self.root / "latest")

    @staticmethod
    def _check(message: Optional[str]) -> None:
        """Collective: every rank says whether it failed (``message``); raises :class:`_Failed` with the first
        failure on every rank if any did."""
        if dist.is_initialized() and dist.get_world_size() > 1:
            messages = [None] * dist.get_world_size()
            dist.all_gather_object(messages, message)
            message = next((m for m in messages if m is not None), None)
        if message is not None:
            raise _Failed(message)

    def _give_up(self, step: int, tmp: Path, previous: Optional[Path], message: str) -> None:
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs
            try:
                (self.root / "latest.tmp").unlink()
            except OSError:
                pass
        kept = f"'latest' still names {previous.name}" if previous is not None else "no earlier checkpoint"
        raise CheckpointError(f"saving checkpoint step {step} to {self.step_dir(step)} failed ({message}); "
                              f"partial {tmp.name} removed, {kept}")

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
