"""Stand-in for `r1mega train` in the Slurm tests: same command shape, same checkpoint contract.

    torchrun --nproc-per-node 2 --no-python python tests/slurm/fake_train.py \
        train CONFIG [--stage NAME] [run_dir=DIR] [steps=N] [save_interval=K] [step_time=S] [ignore_stop=1]

CONFIG is an optional flat YAML file with the same keys (overrides win; `--run-dir`/`--steps` also
work). Under torchrun (gloo) every rank joins the process group and all-reduces each step. Every
save_interval steps it writes ``<run_dir>[/<stage>]/step_<N>/`` atomically (rank 0 makes a tmp dir,
every rank writes its shard into it, rank 0 renames it and then replaces ``latest``, which holds
the directory name). On start it resumes from ``latest`` when present ("resumed from step K").
When the file named by $R1MEGA_STOP_FILE appears it saves and exits 0 (the sbatch requeue trap),
unless ignore_stop=1 (a trainer that does not know the stop file).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("items", nargs="*", help="[train] [CONFIG] KEY=VALUE ...")
    p.add_argument("--stage", default=None)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--steps", type=int, default=None)
    a = p.parse_args(argv)
    items = list(a.items)
    if items and items[0] == "train":
        items.pop(0)
    cfg = {"run_dir": "runs/fake", "steps": 4, "save_interval": 2, "step_time": 0.05, "ignore_stop": 0}
    if items and "=" not in items[0]:
        path = items.pop(0)
        if os.path.exists(path):
            import yaml

            cfg.update(yaml.safe_load(open(path)) or {})
    for item in items:
        key, _, value = item.partition("=")
        key = {"pipeline.run_dir": "run_dir"}.get(key, key)  # the real config's name for it
        if key not in cfg:
            sys.exit(f"fake_train: unknown override {item!r} (keys: {', '.join(cfg)})")
        cfg[key] = value
    if a.run_dir:
        cfg["run_dir"] = a.run_dir
    if a.steps is not None:
        cfg["steps"] = a.steps
    out = os.path.join(cfg["run_dir"], a.stage) if a.stage else cfg["run_dir"]
    return (out, int(cfg["steps"]), max(1, int(cfg["save_interval"])), float(cfg["step_time"]), a.stage,
            bool(int(cfg["ignore_stop"])))


def main(argv=None) -> int:
    import torch
    import torch.distributed as dist

    out, steps, save_interval, step_time, stage, ignore_stop = parse(sys.argv[1:] if argv is None else argv)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()

    def log(msg):
        if rank == 0:
            print(f"[fake_train] {msg}", flush=True)

    def flag(value: bool) -> bool:  # rank 0 decides, everybody agrees
        t = torch.tensor([1 if value else 0])
        dist.broadcast(t, 0)
        return bool(t.item())

    t = torch.ones(1) * (rank + 1)
    dist.all_reduce(t)
    assert t.item() == world * (world + 1) / 2, t
    log(f"world_size={world} all_reduce ok stage={stage} run_dir={out} job={os.environ.get('SLURM_JOB_ID')} "
        f"restart={os.environ.get('SLURM_RESTART_COUNT', '0')}")

    start = 0
    latest = os.path.join(out, "latest")
    if rank == 0 and os.path.exists(latest):
        name = open(latest).read().strip()
        start = int(name.split("_")[-1])
    t = torch.tensor([start])
    dist.broadcast(t, 0)
    start = int(t.item())
    if start:
        log(f"resumed from step {start}")
        if rank == 0:  # the checkpoint must be whole: every shard is there
            ckpt = os.path.join(out, f"step_{start}")
            missing = [r for r in range(world) if not os.path.exists(os.path.join(ckpt, f"shard_{r}.json"))]
            assert not missing, f"checkpoint {ckpt} lacks shards {missing}"

    def save(step: int) -> None:
        final = os.path.join(out, f"step_{step}")
        tmp = os.path.join(out, f".tmp_step_{step}")
        if rank == 0:
            os.makedirs(out, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        dist.barrier()
        with open(os.path.join(tmp, f"shard_{rank}.json"), "w") as f:
            json.dump({"step": step, "rank": rank, "world_size": world}, f)
        dist.barrier()
        if rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            with open(latest + ".tmp", "w") as f:
                f.write(f"step_{step}\n")
            os.replace(latest + ".tmp", latest)
            print(f"[fake_train] saved checkpoint step_{step}", flush=True)
        dist.barrier()

    if start >= steps:
        log(f"already finished: latest is step {start} of {steps}")
    stop_file = None if ignore_stop else os.environ.get("R1MEGA_STOP_FILE")
    step = start
    for step in range(start + 1, steps + 1):
        time.sleep(step_time)
        loss = torch.tensor([1.0 / step])
        dist.all_reduce(loss)
        log(f"step {step} loss {loss.item() / world:.4f}")
        if step % save_interval == 0 or step == steps:
            save(step)
        if step < steps and flag(bool(stop_file) and os.path.exists(stop_file)):
            if step % save_interval:
                save(step)
            log(f"stop requested: saved step {step}, exiting")
            break
    else:
        log(f"done: {steps} steps")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
