"""Device side of trainer offload (``rollout.offload_trainer``, :mod:`r1mega.train.offload`).

On a GPU the trainer's weights and optimizer state are copied to pinned host memory with non-blocking copies
while the colocated vLLM engine generates, and the allocator's cache is emptied after the device storage is
freed, so that vLLM can use the memory. On the CPU the host *is* the device: moving the state would free
nothing, so the stage skips it (one line says so), unless ``R1MEGA_FORCE_TRAINER_OFFLOAD=1`` asks for it
anyway; the tests use that to exercise the mechanism, which is the same code on both devices.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .device import has_cuda

FORCE_ENV = "R1MEGA_FORCE_TRAINER_OFFLOAD"


def offload_active(requested: bool) -> tuple[bool, Optional[str]]:
    """Whether a stage that asked for trainer offload (``requested``) does it here, and a line saying why not
    (None when it does, or when nothing was asked)."""
    if not requested:
        return False, None
    if has_cuda() or os.environ.get(FORCE_ENV) == "1":
        return True, None
    return False, (f"rollout.offload_trainer: skipped on the CPU (the host is the device: moving the trainer's "
                   f"state would free nothing; {FORCE_ENV}=1 forces it)")


def host_buffer(nbytes: int) -> torch.Tensor:
    """A flat byte buffer in host memory for ``nbytes`` of device state: pinned on a GPU machine (page-locked, so
    that the copies can run asynchronously at full PCIe speed), ordinary memory on the CPU."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=has_cuda())


def non_blocking() -> bool:
    """Copies between device and pinned host memory are issued without waiting (GPU); synchronous on the CPU."""
    return has_cuda()


__all__ = ["FORCE_ENV", "offload_active", "host_buffer", "non_blocking"]
