"""`r1mega run CONFIG [--only STAGE]...`: run a pipeline of stages in order, resumably.

Each stage writes ``manifest.json`` in its directory (see :mod:`.manifest`). Rerunning the same
command skips completed stages whose resolved config is unchanged, resumes an interrupted stage
from its last checkpoint, and stops with a clear error when a completed stage's config changed
(delete its directory, or its manifest, to rerun it on purpose).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from r1mega.config.base import ConfigError
from r1mega.pipeline import manifest


def _rank0() -> bool:
    """Rank 0 of the stage's world; before the process group exists (a scheduled multi-process stage writes its
    'running' manifest first), from the launcher's RANK: two ranks writing one manifest race on its temp file."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _run_kind(cfg, stage) -> dict:
    from r1mega.platform.device import set_cpu_threads

    set_cpu_threads(cfg.for_stage(stage).cpu_threads)
    kind = stage.kind
    if kind in ("pretrain", "sft", "distill"):
        from r1mega.train.entry import train_stage

        return train_stage(cfg, stage.name)
    if kind == "grpo":
        from r1mega.pipeline.grpo import run_grpo_stage

        return run_grpo_stage(cfg, stage.name)
    runners = {"rejection_sampling": "r1mega.pipeline.rejection:run_stage",
               "reward_model": "r1mega.pipeline.reward_model:run_stage",
               "eval": "r1mega.eval.entry:run_stage"}
    target = runners.get(kind)
    if target is None:
        raise ConfigError(f"pipeline.stages[{stage.name}].kind", f"unknown stage kind {kind!r}")
    import importlib

    mod, fn = target.split(":")
    try:
        func = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"pipeline.stages[{stage.name}].kind", f"stage kind {kind!r} is not available in this "
                          f"version of r1mega ({target}: {e})") from None
    return func(cfg, stage.name)


def _end_stage() -> None:
    """A stage leaves no distributed state behind in a world of one: the next stage (another
    model, another vLLM engine) starts from a clean process. Under torchrun/srun the world is kept
    (a vLLM stage has already ended it: vLLM's engine shutdown destroys the default group, and the
    next stage initialises it again)."""
    from r1mega.platform.distributed import destroy, dist_info

    if dist_info().world_size == 1:
        destroy()


def init_stamp(cfg, st) -> str | None:
    """What the stage starts from, as it is now: an earlier stage's run (when that stage last started), or a
    checkpoint path's latest checkpoint (its directory and the modification time of its meta file). Recorded
    in the manifest when the stage starts: a complete stage whose init changed since is not silently kept."""
    if not st.init_from:
        return None
    if st.init_from in cfg.pipeline.names():
        m = manifest.read(cfg.stage_dir(st.init_from))
        return f"stage {st.init_from} started {m.get('started')}" if m else None
    from r1mega.config.model_source import checkpoint_meta_path

    meta = checkpoint_meta_path(cfg.resolve_path(st.init_from))
    return f"{meta.parent} modified {meta.stat().st_mtime_ns}" if meta is not None else None


def plan(cfg, only: list[str] | None = None) -> list[tuple]:
    """(stage, stage dir, config hash, action) for every stage: action is run/resume/skip; raises on
    a completed stage whose config changed, or whose init checkpoint changed or is about to."""
    out = []
    actions: dict = {}
    names = cfg.pipeline.names()
    for name in only or []:
        if name not in names:
            raise ConfigError("--only", f"no stage {name!r} (stages: {', '.join(names)})")
    for st in cfg.pipeline.stages:
        if only and st.name not in only:
            continue
        d = Path(cfg.stage_dir(st))
        import dataclasses

        h = manifest.config_hash(cfg.for_stage(st).to_dict(), dataclasses.asdict(st))
        m = manifest.read(d)
        if m is None:
            action = "run"
        elif m.get("status") == "complete":
            if m.get("config_hash") != h:
                raise ConfigError(f"pipeline.stages[{st.name}]",
                                  f"stage is complete in {d} but its config changed since (hash {m.get('config_hash')} -> {h}); "
                                  f"delete {d / manifest.NAME} (or the directory) to rerun it")
            action = "skip"
            rerun = f"delete {d / manifest.NAME} (or the directory) to rerun it"
            if actions.get(st.init_from) in ("run", "resume"):
                raise ConfigError(f"pipeline.stages[{st.name}]",
                                  f"stage is complete in {d} but its init stage {st.init_from!r} is to "
                                  f"{actions[st.init_from]} now: its results would be those of the old checkpoint; {rerun}")
            was, now = m.get("init_stamp"), init_stamp(cfg, st)
            if was is not None and now is not None and was != now:
                raise ConfigError(f"pipeline.stages[{st.name}]",
                                  f"stage is complete in {d} but what it started from changed since ({was} -> {now}); "
                                  f"{rerun}")
        else:
            action = "resume"
        actions[st.name] = action
        out.append((st, d, h, action))
    return out


def run_pipeline(cfg, only: list[str] | None = None, items: list[str] | None = None) -> dict:
    """Run the pipeline's stages (or ``only`` those); {stage: final metrics}. With ``pipeline.max_parallel > 1``
    in a single process, given the command line's config file and overrides (``items``), independent stages run
    at the same time in child processes (:mod:`.scheduler`)."""
    from r1mega.pipeline import scheduler

    planned = plan(cfg, only)
    if (cfg.pipeline.max_parallel > 1 and items is not None and not dist.is_initialized()
            and int(os.environ.get("WORLD_SIZE", "1")) == 1 and not os.environ.get(scheduler.CHILD_ENV)):
        return scheduler.run_parallel(cfg, planned, items, cfg.pipeline.max_parallel)
    results = {}
    for st, d, h, action in planned:
        if action == "skip":
            if _rank0():
                print(f"[r1mega] stage {st.name}: complete, skipped", flush=True)
            results[st.name] = manifest.read(d).get("metrics", {})
            continue
        if _rank0():
            print(f"[r1mega] stage {st.name} ({st.kind}): {'resuming' if action == 'resume' else 'starting'}", flush=True)
            manifest.write(d, stage=st.name, kind=st.kind, status="running", config_hash=h,
                           init_from=st.init_from, init_stamp=init_stamp(cfg, st),
                           started=time.strftime("%Y-%m-%dT%H:%M:%S"), error=None,
                           pipeline=cfg.pipeline.names())  # the report of a bare run dir reads it
        _barrier()
        t = time.time()
        try:
            metrics = _run_kind(cfg, st) or {}
        except BaseException as e:
            if _rank0() and not isinstance(e, KeyboardInterrupt):
                manifest.write(d, status="failed", error=f"{type(e).__name__}: {e}"[:2000],
                               seconds=round(time.time() - t, 1))
            raise
        _barrier()
        _end_stage()
        if "stopped_at" in metrics:  # preempted: leave it 'running', the rerun resumes it
            return results
        if _rank0():
            outputs = sorted(str(p.relative_to(d)) for p in d.iterdir() if p.name != manifest.NAME)
            manifest.write(d, status="complete", seconds=round(time.time() - t, 1), outputs=outputs,
                           metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        results[st.name] = metrics
    return results


def main(cfg, args) -> int:
    from r1mega.pipeline.scheduler import CHILD_ENV, Interrupted
    from r1mega.platform.distributed import destroy

    try:
        run_pipeline(cfg, getattr(args, "only", None), getattr(args, "items", None))
    except Interrupted as e:  # SIGTERM/SIGHUP while stages ran in child processes: they were stopped
        try:
            print(f"r1mega: stopped by {e}", file=sys.stderr, flush=True)
        except OSError:  # SIGHUP: the terminal may be gone
            pass
        return e.exit_code  # 128 + the signal, as a process killed by it (Ctrl-C: the CLI's 130)
    finally:
        destroy()
        if not os.environ.get(CHILD_ENV):  # a stage's child process: the parent writes the report
            _write_report(cfg)
    return 0


def _write_report(cfg) -> None:
    """The run's report (``r1mega report``), refreshed after every invocation, also a failed one; a
    problem writing it is printed, never raised (the stages' results are what matters)."""
    if not _rank0():
        return
    try:
        from r1mega.report import write_report

        path = write_report(cfg.run_dir, cfg)
        print(f"[r1mega] report: {path}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"[r1mega] report not written: {type(e).__name__}: {e}", flush=True)
