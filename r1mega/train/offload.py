"""Trainer offload: park a :class:`~r1mega.train.engine.TrainEngine`'s device state in host memory while the
colocated rollout engine generates, and bring it back bit for bit (``rollout.offload_trainer``).

Three parts, each a set of tensor *storages* (a Megatron model's parameters are views into a few large DDP
buffers; freeing a storage frees every view of it):

``weights``
    Megatron DDP's parameter buffers (``param_data`` of every ``_ParamAndGradBuffer``), any parameter outside
    them (a frozen engine: all of them) and the registered module buffers (expert biases, token counts).
``grads``
    DDP's gradient buffers (``grad_data``) and any ``.grad`` left on a parameter. Not copied: a step reads no
    gradient from an earlier step (``train_step`` zeroes the buffers first), so they are freed and come back
    as zeros.
``optimizer``
    The optimizer's main parameters that are not views of the weights (the fp32 master shards of bf16 training)
    and every tensor of its state (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``).

:meth:`Offloader.offload` copies each storage of the asked parts to a host buffer
(:func:`r1mega.platform.host_offload.host_buffer`: pinned on a GPU), waits for the copies, then frees the
device storage with ``untyped_storage().resize_(0)``: the tensor objects, their views and every reference to
them (the optimizer's, Megatron's buckets') stay valid, only empty. :meth:`Offloader.reload` re-allocates
each storage at its size and copies the bytes back. While anything is parked, a forward of the engine's model
raises (a freed storage read by a kernel is a crash or garbage, never a clear error), and so do
:func:`require_resident`'s callers (the refit, a checkpoint save).

After freeing, :func:`resident_state` walks everything the engine holds, independently of the lists above
(parameters, ``.grad`` / ``.main_grad``, buffers, tensor attributes of the modules, DDP buffers, every tensor
reachable from the optimizer's attributes): a tensor of at least :data:`AUDIT_MIN_BYTES` still on the device
in a parked part means the lists missed it, and the offload fails naming it.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import torch

from r1mega.platform import empty_cache, synchronize
from r1mega.platform.host_offload import host_buffer, non_blocking

PARTS = ("weights", "grads", "optimizer")
AUDIT_MIN_BYTES = 4096
"""Smallest device tensor the audit reports (scalars such as Megatron's overflow flag stay resident)."""


class OffloadedStateError(RuntimeError):
    """The engine's state is in host memory and something tried to use it on the device."""


@dataclass
class OffloadStats:
    parts: tuple
    bytes_copied: int = 0   # device -> host (offload) or host -> device (reload)
    bytes_freed: int = 0    # device storage freed (offload) or re-allocated (reload), copied or not
    seconds: float = 0.0
    by_part: dict = field(default_factory=dict)  # part -> bytes freed / re-allocated

    @property
    def gbps(self) -> float:
        return self.bytes_copied / self.seconds / 1e9 if self.seconds > 0 else float("inf")


@dataclass
class _Parked:
    name: str
    part: str
    ref: torch.Tensor            # any tensor on the storage (keeps the storage object reachable)
    nbytes: int
    host: Optional[torch.Tensor]  # None: freed without a copy (grads)


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A uint8 tensor over the whole storage of ``t``."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())


def _inner(chunk):
    return getattr(chunk, "module", chunk)


def _ddp_buffers(chunk) -> list:
    """Megatron DDP's ``_ParamAndGradBuffer`` objects of a chunk (none for a frozen engine's bare module)."""
    if not hasattr(chunk, "expert_parallel_buffers"):
        return []
    return list(chunk.buffers or []) + list(chunk.expert_parallel_buffers or [])


def _sub_optimizers(optimizer) -> list:
    if optimizer is None:
        return []
    return list(getattr(optimizer, "chained_optimizers", None) or [optimizer])


def _torch_optimizer(opt):
    return getattr(opt, "optimizer", opt)


# ------------------------------------------------------------------------------------------ the offload lists
def targets(engine, part: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the storages the ``part`` of ``engine`` consists of (see the module docstring);
    the same storage may come more than once (callers keep the first)."""
    if part == "weights":
        for i, c in enumerate(engine.chunks):
            for j, b in enumerate(_ddp_buffers(c)):
                if b.param_data is not None:  # (None: fp32 parameters without the distributed optimizer)
                    yield f"chunk{i}.ddp_buffer{j}.param_data", b.param_data
            for n, p in _inner(c).named_parameters():
                yield f"chunk{i}.{n}", p
            for n, b in _inner(c).named_buffers():
                yield f"chunk{i}.{n}", b
    elif part == "grads":
        for i, c in enumerate(engine.chunks):
            for j, b in enumerate(_ddp_buffers(c)):
                if b.grad_data is not None:
                    yield f"chunk{i}.ddp_buffer{j}.grad_data", b.grad_data
            for n, p in _inner(c).named_parameters():
                if p.grad is not None:
                    yield f"chunk{i}.{n}.grad", p.grad
        for k, opt in enumerate(_sub_optimizers(engine.optimizer)):
            for g, group in enumerate(_torch_optimizer(opt).param_groups):
                for m, p in enumerate(group["params"]):
                    if p.is_leaf and p.grad is not None:  # (the distributed optimizer's shards are views)
                        yield f"optimizer{k}.group{g}.param{m}.grad", p.grad
    elif part == "optimizer":
        for k, opt in enumerate(_sub_optimizers(engine.optimizer)):
            inner = _torch_optimizer(opt)
            for g, group in enumerate(inner.param_groups):
                for m, p in enumerate(group["params"]):
                    yield f"optimizer{k}.group{g}.param{m}", p
            for m, (p, state) in enumerate(inner.state.items()):
                for n, v in state.items():
                    if torch.is_tensor(v):
                        yield f"optimizer{k}.state{m}.{n}", v
    else:
        raise ValueError(f"unknown offload part {part!r} (expected one of {', '.join(PARTS)})")


# ---------------------------------------------------------------------------------------------------- audit
def _tensors_in(obj, name: str, depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors in ``obj``: itself, or inside lists, tuples and dicts (not inside other objects)."""
    if torch.is_tensor(obj):
        yield name, obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            yield from _tensors_in(x, f"{name}[{i}]", depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for i, (k, x) in enumerate(obj.items()):
            yield from _tensors_in(x, f"{name}[{i if torch.is_tensor(k) else repr(k)}]", depth + 1)


def _walk(engine) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """Every tensor the engine holds, by part, found without the offload lists."""
    weights, grads, optim = [], [], []
    for i, c in enumerate(engine.chunks):
        for j, b in enumerate(_ddp_buffers(c)):
            if b.param_data is not None:
                weights.append((f"chunk{i}.ddp_buffer{j}.param_data", b.param_data))
            if b.grad_data is not None:
                grads.append((f"chunk{i}.ddp_buffer{j}.grad_data", b.grad_data))
        for mn, mod in c.named_modules():
            for an, v in vars(mod).items():
                if an in ("_parameters", "_buffers"):
                    for n, t in v.items():
                        if t is not None:
                            weights.append((f"chunk{i}.{mn}.{n}", t))
                            for gname in ("grad", "main_grad"):
                                g = getattr(t, gname, None)
                                if torch.is_tensor(g):
                                    grads.append((f"chunk{i}.{mn}.{n}.{gname}", g))
                elif not an.startswith("_"):
                    weights += list(_tensors_in(v, f"chunk{i}.{mn}.{an}"))
    for k, opt in enumerate(_sub_optimizers(engine.optimizer)):
        for an, v in list(vars(opt).items()) + [("state", _torch_optimizer(opt).state),
                                                ("param_groups", _torch_optimizer(opt).param_groups)]:
            for n, t in _tensors_in(v, f"optimizer{k}.{an}"):
                optim.append((n, t))
                g = t.grad if t.is_leaf else None
                if torch.is_tensor(g):
                    grads.append((n + ".grad", g))
    return {"weights": weights, "grads": grads, "optimizer": optim}


def _owned(by_part: dict, parts: Iterable[str], min_bytes: int = 1) -> list[tuple[str, str, torch.Tensor]]:
    """``(part, name, tensor)``, one per allocated storage of at least ``min_bytes``, for the storages whose owner is
    in ``parts``: a storage found under several parts belongs to the first in :data:`PARTS` order (the fp32 main
    parameters of fp32 training are views of the weights: they are weights)."""
    owner: dict = {}
    for p in PARTS:
        for name, t in by_part.get(p, ()):
            s = t.untyped_storage()
            if s.nbytes() >= max(1, min_bytes) and s.data_ptr() not in owner:
                owner[s.data_ptr()] = (p, name, t)
    return [v for v in owner.values() if v[0] in set(parts)]


def resident_state(engine, parts: Iterable[str] = PARTS, min_bytes: int = 0) -> dict[str, int]:
    """``name -> bytes`` of the tensors of ``parts`` whose storage is still allocated on the device (at least
    ``min_bytes``), found by walking the engine (not from the offload lists)."""
    return {name: t.untyped_storage().nbytes() for _, name, t in _owned(_walk(engine), parts, min_bytes)}


def require_resident(engine, what: str, parts: Iterable[str] = PARTS) -> None:
    """Raise :class:`OffloadedStateError` when any of ``parts`` of ``engine``'s state is parked in host memory."""
    parked = set(getattr(engine, "_offload_parked", None) or ()) & set(parts)
    if parked:
        raise OffloadedStateError(f"{what}: the trainer's {', '.join(p for p in PARTS if p in parked)} are in host "
                                  "memory (rollout.offload_trainer); reload them first")


# ------------------------------------------------------------------------------------------------ offloader
class Offloader:
    """Parks parts of one engine's state in host memory (:meth:`offload`) and restores them (:meth:`reload`)."""

    def __init__(self, engine, name: str = "policy"):
        self.engine, self.name = engine, name
        self.parked: list[_Parked] = []
        self._hooks: list = []
        # host buffers, kept from one offload to the next (allocating pinned memory costs time on every step)
        self._host: dict = {}
        engine._offload_parked = set()

    @property
    def parts(self) -> set:
        return set(self.engine._offload_parked)

    def _collect(self, parts: tuple) -> list[_Parked]:
        found = _owned({p: list(targets(self.engine, p)) for p in PARTS}, parts)
        return [_Parked(name, part, t, t.untyped_storage().nbytes(), None) for part, name, t in found]

    def offload(self, parts: Iterable[str] = PARTS) -> OffloadStats:
        """Copy ``parts`` (not yet parked) to host memory and free their device storage."""
        asked = set(parts)
        if asked - set(PARTS):
            raise ValueError(f"unknown offload part(s) {sorted(asked - set(PARTS))} (expected {', '.join(PARTS)})")
        parts = tuple(p for p in PARTS if p in asked and p not in self.engine._offload_parked)
        stats = OffloadStats(parts)
        if not parts:
            return stats
        t0 = time.perf_counter()
        items = self._collect(parts)
        nb = non_blocking()
        for it in items:
            if it.part != "grads":
                it.host = self._host.get((it.name, it.nbytes))
                if it.host is None:
                    it.host = self._host[(it.name, it.nbytes)] = host_buffer(it.nbytes)
                it.host.copy_(_flat(it.ref), non_blocking=nb)
                stats.bytes_copied += it.nbytes
        synchronize()  # the host copies are complete before the device storage goes
        for it in items:
            it.ref.untyped_storage().resize_(0)
            stats.bytes_freed += it.nbytes
            stats.by_part[it.part] = stats.by_part.get(it.part, 0) + it.nbytes
        self.parked += items
        self.engine._offload_parked |= set(parts)
        if not self._hooks:
            self._hooks = [c.register_forward_pre_hook(self._refuse) for c in self.engine.chunks]
        empty_cache()
        stats.seconds = time.perf_counter() - t0
        left = resident_state(self.engine, self.engine._offload_parked, AUDIT_MIN_BYTES)
        if left:
            self.reload()
            top = sorted(left.items(), key=lambda kv: -kv[1])[:5]
            raise RuntimeError(f"trainer offload ({self.name}): {len(left)} tensor(s) of the parked "
                               f"{', '.join(parts)} are not in the offload lists and stayed on the device, e.g. "
                               + ", ".join(f"{n} ({b} bytes)" for n, b in top) + " (r1mega/train/offload.py targets())")
        return stats

    def reload(self) -> OffloadStats:
        """Re-allocate every parked storage and copy its bytes back (gradients come back as zeros)."""
        stats = OffloadStats(tuple(p for p in PARTS if p in self.engine._offload_parked))
        if not self.parked:
            return stats
        t0 = time.perf_counter()
        nb = non_blocking()
        for it in self.parked:
            s = it.ref.untyped_storage()
            s.resize_(it.nbytes)
            flat = _flat(it.ref)
            if it.host is None:
                flat.zero_()
            else:
                flat.copy_(it.host, non_blocking=nb)
                stats.bytes_copied += it.nbytes
            stats.bytes_freed += it.nbytes
            stats.by_part[it.part] = stats.by_part.get(it.part, 0) + it.nbytes
        synchronize()
        self.parked = []
        self.engine._offload_parked = set()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        stats.seconds = time.perf_counter() - t0
        return stats

    def _refuse(self, module, args):
        """Forward pre-hook while anything is parked: a forward needs the weights, a training forward (the
        module in train mode: an optimizer step follows) everything."""
        parked = self.engine._offload_parked
        if "weights" in parked or module.training:
            raise OffloadedStateError(f"{self.name}: a {'training ' if module.training else ''}forward while the "
                                      f"trainer's {', '.join(p for p in PARTS if p in parked)} are in host memory "
                                      "(rollout.offload_trainer); reload them first")


class StageOffload:
    """A GRPO stage's offload schedule (every method does nothing when inactive):

    * :meth:`before_generation`: park the policy's weights (and whatever the refit left) and the reference's
      weights; :meth:`after_generation` brings the policy back before its first forward;
    * :meth:`before_refit`: park the policy's gradients and optimizer state, so that the refit phase holds the
      trainer's weights and the engine's only (the planner's refit phase);
    * :meth:`reference`: the reference model's weights on the device for its log-prob pass (or a refresh), in
      host memory otherwise (the planner's ``--ref-model cpu``);
    * :meth:`reload_all`: everything back (before a checkpoint save).

    ``seconds`` / ``bytes_copied`` add up the copies since :meth:`take_stats` was last called."""

    def __init__(self, policy, reference=None, active: bool = True):
        self.active = active
        self.policy = Offloader(policy, "policy") if active else None
        self.ref = Offloader(reference, "reference") if active and reference is not None else None
        self.seconds, self.bytes_copied = 0.0, 0

    @classmethod
    def for_stage(cls, rollout_cfg, policy, reference, where: str, log=print) -> "StageOffload":
        """``rollout.offload_trainer`` as this machine and the rollout engine allow; says in one line (``log``)
        why it is skipped when it was asked for and is not done."""
        from r1mega.platform.host_offload import offload_active

        active, why = offload_active(rollout_cfg.offload_trainer)
        if active and rollout_cfg.engine == "megatron":
            active, why = False, ("rollout.offload_trainer: skipped with rollout.engine 'megatron' (it generates "
                                  "with the trainer's own model)")
        if why:
            log(f"[r1mega] {where}: {why}")
        return cls(policy, reference, active)

    def _add(self, st: OffloadStats) -> None:
        self.seconds += st.seconds
        self.bytes_copied += st.bytes_copied

    def before_generation(self) -> None:
        if self.active:
            self._add(self.policy.offload(PARTS))
            if self.ref is not None:
                self._add(self.ref.offload(("weights",)))

    def after_generation(self) -> None:
        if self.active:
            self._add(self.policy.reload())

    def before_refit(self) -> None:
        if self.active:
            self._add(self.policy.offload(("grads", "optimizer")))

    @contextlib.contextmanager
    def reference(self):
        if self.ref is not None:
            self._add(self.ref.reload())
        yield
        if self.ref is not None:
            self._add(self.ref.offload(("weights",)))

    def reload_all(self) -> None:
        if self.active:
            self._add(self.policy.reload())
            if self.ref is not None:
                self._add(self.ref.reload())

    def take_stats(self) -> dict:
        """``{'time/offload': seconds, 'offload/gb': GB copied}`` since the last call ({} when inactive)."""
        if not self.active:
            return {}
        out = {"time/offload": self.seconds, "offload/gb": self.bytes_copied / 1e9}
        self.seconds, self.bytes_copied = 0.0, 0
        return out


__all__ = ["PARTS", "AUDIT_MIN_BYTES", "OffloadStats", "OffloadedStateError", "Offloader", "StageOffload", "targets",
           "resident_state", "require_resident"]
