"""Independent stages at the same time (``pipeline.max_parallel > 1``), each in its own process.

On a 2-core machine most stages leave a core idle much of the time (vLLM's scheduler and sampler, the
rewards, Python between small kernels: the demo's stages after pretraining average ~0.6 cores), so a
long independent stage, such as pretraining the distillation student, can run beside the R1 chain
almost for free.

Whenever fewer than ``max_parallel`` stages are running, the first stage in list order whose inputs are
complete starts: its ``init_from``, every ``stage:NAME`` reference in its resolved config (training data,
distillation teacher, reward model) and the stages in its ``after`` list (an order without a data
dependency), see :func:`dependencies`. The list order is the priority: the critical chain first, side work
(evaluations) last, and ``after`` holds a side branch back until it should begin (the demo's student
pretraining waits for the teacher's pretraining rather than competing with it for the cores). A stage's
``nice`` lowers its process's CPU priority, so that side work takes the cycles the chain leaves idle rather
than slowing it down.

Each stage runs ``r1mega run CONFIG [overrides] --only NAME`` in a child process, which writes its manifest
exactly as a sequential run does (so skipping, resuming and config-change checks are the same). Children are
forked from a multiprocessing fork server that has imported torch, Megatron-Core and vLLM once (~10 s of
imports per stage otherwise). A child's output goes to ``<stage dir>/stage.log``, and the parent copies
each new line, prefixed with the stage name, to the console.
When a stage fails no new stage starts, the running ones finish (their work is kept), and the error names the
stage and its log. Single-process runs only: under torchrun/srun stages run one after another.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Optional

from r1mega.config.stage import stage_ref
from r1mega.pipeline import manifest

CHILD_ENV = "R1MEGA_STAGE_PROCESS"  # set in a stage's child process: the parent writes the report


def dependencies(cfg, stage) -> set[str]:
    """Names of the pipeline's stages that must be complete before ``stage`` starts: its ``init_from``, its
    ``after`` list and every ``stage:NAME`` reference anywhere in its resolved config (the pipeline section aside)."""
    names = set(cfg.pipeline.names())
    found = set()

    def walk(x):
        if isinstance(x, str):
            ref = stage_ref(x)
            if ref is not None:
                found.add(ref[0])
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    resolved = cfg.for_stage(stage).to_dict()
    resolved.pop("pipeline", None)
    walk(resolved)
    walk(stage.init_from)
    if stage.init_from in names:
        found.add(stage.init_from)
    found.update(stage.after)
    found.discard(stage.name)
    return found & names


def _stage_process(items: list[str], name: str, log: str, nice: int) -> None:
    """A child: ``r1mega run ITEMS --only NAME`` with its output appended to ``log``, at CPU priority ``nice``."""
    if nice:
        os.nice(nice)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    os.environ[CHILD_ENV] = "1"
    print(f"[r1mega] stage {name}: process {os.getpid()}, nice {os.nice(0)}", flush=True)
    from r1mega.cli import main

    code = main(["run", *items, "--only", name])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


class _Tail:
    """New complete lines of a growing log file."""

    def __init__(self, path: Path):
        self.path, self.pos, self.partial = path, path.stat().st_size if path.exists() else 0, b""

    def lines(self, final: bool = False) -> list[str]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
            self.pos += len(data)
            self.partial += data
        *done, self.partial = self.partial.split(b"\n")
        if final and self.partial:
            done, self.partial = done + [self.partial], b""
        return [line.decode(errors="replace") for line in done]


class StageFailed(RuntimeError):
    pass


class _Scheduler:
    def __init__(self, cfg, planned: list[tuple], items: list[str], max_parallel: int, log):
        self.todo = [(st, Path(d)) for st, d, _, action in planned if action != "skip"]
        self.results = {st.name: (manifest.read(d) or {}).get("metrics", {})
                        for st, d, _, action in planned if action == "skip"}
        pending = {st.name for st, _ in self.todo}
        self.deps = {st.name: dependencies(cfg, st) & pending for st, _ in self.todo}
        self.width = max([len(st.name) for st, _ in self.todo] + [1])
        self.items, self.max_parallel, self.log = list(items), max_parallel, log
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload([__name__, "r1mega.pipeline.stage_imports"])
        self.running: dict[str, tuple] = {}  # name -> (process, log tail, stage dir, start time)
        self.done: set[str] = set()
        self.failed: list[tuple] = []
        self.stopped: list[str] = []
        self.started: set[str] = set()

    def _startable(self) -> Optional[int]:
        """Index in ``todo`` of the first stage that may start now, or None."""
        if len(self.running) >= self.max_parallel or self.failed or self.stopped:
            return None
        for i, (st, _) in enumerate(self.todo):
            if st.name not in self.started and self.deps[st.name] <= self.done:
                return i
        return None

    def _start(self, i: int) -> None:
        st, d = self.todo[i]
        self.started.add(st.name)
        d.mkdir(parents=True, exist_ok=True)
        log = d / "stage.log"
        tail = _Tail(log)
        proc = self.ctx.Process(target=_stage_process, args=(self.items, st.name, str(log), st.nice), name=f"stage-{st.name}")
        proc.start()
        beside = f" beside {', '.join(self.running)}" if self.running else ""
        nice = f" at nice {st.nice}" if st.nice else ""
        self.log(f"[r1mega] stage {st.name} ({st.kind}): started in process {proc.pid}{nice}{beside}; log {log}")
        self.running[st.name] = (proc, tail, d, time.time())

    def _echo(self, name: str, tail: "_Tail", final: bool = False) -> None:
        for line in tail.lines(final):
            sys.stdout.write(f"{name:<{self.width}} | {line}\n")
        sys.stdout.flush()

    def _reap(self) -> None:
        for name, (proc, tail, d, t0) in list(self.running.items()):
            self._echo(name, tail)
            if proc.is_alive():
                continue
            proc.join()
            self._echo(name, tail, final=True)
            del self.running[name]
            m = manifest.read(d) or {}
            if proc.exitcode != 0:
                self.failed.append((name, proc.exitcode, d / "stage.log"))
                self.log(f"[r1mega] stage {name}: FAILED (exit {proc.exitcode}) after {time.time() - t0:.0f} s; "
                         f"log {d / 'stage.log'}")
            elif m.get("status") != "complete":  # preempted: the stage stays 'running', a rerun resumes it
                self.stopped.append(name)
                self.log(f"[r1mega] stage {name}: stopped before the end (status {m.get('status')}); rerun to resume")
            else:
                self.done.add(name)
                self.results[name] = m.get("metrics", {})
                self.log(f"[r1mega] stage {name}: complete in {time.time() - t0:.0f} s")

    def run(self) -> dict:
        for name in self.results:
            self.log(f"[r1mega] stage {name}: complete, skipped")
        try:
            while self.running or (len(self.started) < len(self.todo) and not self.failed and not self.stopped):
                while (i := self._startable()) is not None:
                    self._start(i)
                if not self.running and len(self.started) < len(self.todo) and not self.failed and not self.stopped:
                    waiting = {st.name: sorted(self.deps[st.name] - self.done) for st, _ in self.todo
                               if st.name not in self.started}  # cannot happen with a validated config
                    raise StageFailed(f"stages wait for stages that did not complete: {waiting}")
                time.sleep(0.2)
                self._reap()
        except BaseException:  # Ctrl-C reaches the children too: give them a minute to stop cleanly
            for proc, *_ in self.running.values():
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.kill()
            raise
        if self.failed:
            raise StageFailed("; ".join(f"stage {n!r} failed (exit {rc}), see {p}" for n, rc, p in self.failed))
        return self.results


def run_parallel(cfg, planned: list[tuple], items: list[str], max_parallel: int, log=None) -> dict:
    """Run the ``planned`` stages (:func:`r1mega.pipeline.runner.plan`'s tuples, in list order) as child
    processes, at most ``max_parallel`` at a time; ``items`` are the command line's config file and
    overrides, passed on to every child. Returns {stage: final metrics} of the completed stages."""
    return _Scheduler(cfg, planned, items, max_parallel, log or (lambda msg: print(msg, flush=True))).run()
