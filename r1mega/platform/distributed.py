"""torch.distributed and Megatron parallel_state set-up, the same under torchrun, srun and plain python.

* torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.
* ``srun`` (one task per GPU, no torchrun) sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the
  sbatch scripts export MASTER_ADDR / MASTER_PORT; we map the Slurm variables onto the torch ones.
* plain ``python`` is a world of one on a free local port.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .device import dist_backend, has_cuda


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (a rendezvous for a local process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_from_slurm() -> None:
    env = os.environ
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return
    # Under `srun torchrun ...` torchrun sets RANK itself; here srun started us directly.
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
    env.setdefault("MASTER_PORT", "29500")


def _launched() -> bool:
    """Started by torchrun (its agent hosts the store at MASTER_PORT) or by srun."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "SLURM_PROCID" in os.environ


def dist_info() -> DistInfo:
    _env_from_slurm()
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(timeout_minutes: int = 30) -> DistInfo:
    """Initialise the default process group (idempotent). nccl on GPU, gloo on CPU, env://."""
    info = dist_info()
    if dist.is_initialized():
        return info
    if info.world_size == 1 and not _launched():
        # A world of one started by plain python picks its own free port every time: an inherited
        # MASTER_PORT (a parent process that set one, e.g. a test runner) may still be bound.
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(free_port())
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    if has_cuda():
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=dist_backend(), init_method="env://", rank=info.rank,
                            world_size=info.world_size, timeout=timedelta(minutes=timeout_minutes))
    return info


def init_model_parallel(parallel, seed: int = 1234) -> None:
    """Initialise Megatron's parallel_state for a :class:`r1mega.config.parallel.ParallelConfig`,
    then seed the model-parallel RNG tracker. Calls :func:`r1mega.platform.init` first."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from . import init as _platform_init
    from .device import check_context_parallel

    _platform_init()
    check_context_parallel(parallel.context_parallel)
    info = init_distributed()
    parallel.validate(info.world_size)
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline,
        context_parallel_size=parallel.context_parallel,
        expert_model_parallel_size=parallel.expert_parallel,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel,
        create_gloo_process_groups=not has_cuda(),
    )
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)


def destroy(barrier: bool = False) -> None:
    """Tear down Megatron groups, vLLM's groups and the default process group (tests, end of run).

    vLLM's groups go first: a live in-process vLLM engine otherwise tears them down from an exit
    finalizer after the default group is gone ("ValueError: Invalid process group specified").
    ``barrier``: wait for every rank first (end of a multi-process program: exiting with live gloo
    groups can abort with "terminate called without an active exception")."""
    import sys

    from megatron.core import parallel_state as ps

    if barrier and dist.is_initialized():
        dist.barrier()

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    vps = sys.modules.get("vllm.distributed.parallel_state")
    if vps is not None:
        vps.destroy_model_parallel()
        vps.destroy_distributed_environment()  # also destroys the default group when vLLM shares it
    if dist.is_initialized():
        dist.destroy_process_group()


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0
