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

Each stage runs ``r1mega run CONFIG [overrides] --only NAME`` in a child process (in ``processes`` of them, the
ranks of one torch.distributed world on a free local port, for a stage that sets it), which writes its manifest
exactly as a sequential run does (so skipping, resuming and config-change checks are the same). Children are
forked from a multiprocessing fork server that has imported torch, Megatron-Core and vLLM once (~10 s of
imports per stage otherwise). A child's output goes to ``<stage dir>/stage.log`` (rank r > 0 of a multi-process
stage: ``stage.rank<r>.log``), and the parent copies each new line of rank 0's log, prefixed with the stage name,
to the console. A stage with ``processes: N`` takes N of the ``max_parallel`` slots.
When a stage fails no new stage starts, the running ones finish (their work is kept), and the error names the
stage and its log; when one rank of a stage fails, its other ranks are stopped (they would wait for it in a
collective until the process group's timeout). Single-process runs only: under torchrun/srun stages run one after another.

Stopping the run (Ctrl-C, or SIGTERM/SIGHUP: ``kill``, a job scheduler, a closed terminal) stops its stages: after
Ctrl-C, which reaches the stage processes too, they get ``INTERRUPT_GRACE_S`` to end; SIGTERM or SIGHUP, which reach
only this process, is passed on to them as SIGTERM (a training stage saves at its next step boundary and exits, any
other stage ends at once) and they get ``STOP_GRACE_S``; the ones still running then are killed. Completed stages
keep their manifests (a rerun skips them), an interrupted stage keeps its ``running`` manifest (a rerun resumes it),
and ``r1mega run`` exits with 128 + the signal's number (143 after SIGTERM, 130 after Ctrl-C).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from r1mega.config.pipeline import STAGE_PROCESS_ENV
from r1mega.config.stage import stage_ref
from r1mega.pipeline import manifest
from r1mega.platform.distributed import free_port
from r1mega.platform.lifeline import Lifeline, hold

CHILD_ENV = STAGE_PROCESS_ENV  # set in a stage's child processes: the parent writes the report
RANK_GRACE_S = 10  # after one rank of a stage fails, the others get this long to exit before they are killed
STOP_GRACE_S = 10  # after SIGTERM/SIGHUP, the stage processes get this long to exit (SIGTERM) before they are killed
INTERRUPT_GRACE_S = 60  # after Ctrl-C (or an error in the scheduler), the same, without a signal from here
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # handled like Ctrl-C while stages run
FORKSERVER_PRELOAD = (__name__, "r1mega.pipeline.stage_imports")  # imported once by the fork server


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


def _stage_process(items: list[str], name: str, log: str, nice: int, env: Optional[dict] = None,
                   lifeline=None) -> None:
    """A child: ``r1mega run ITEMS --only NAME`` with its output appended to ``log``, at CPU priority ``nice``,
    with ``env`` added to its environment (a multi-process stage's rank, world size and rendezvous); it dies
    (SIGKILL) when the scheduler's process is gone (``lifeline``: :mod:`r1mega.platform.lifeline`)."""
    if lifeline is not None:
        hold(lifeline, f"stage {name}")
    os.environ.update(env or {})
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
    rank = f" (rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']})" if env else ""
    print(f"[r1mega] stage {name}: process {os.getpid()}{rank}, nice {os.nice(0)}", flush=True)
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


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached the scheduler: its stages were stopped as after Ctrl-C (a KeyboardInterrupt, so
    whatever handles Ctrl-C handles it too); ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


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
        self.ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))
        self.lifeline = Lifeline(self.ctx)  # the stage processes die with this process, even after kill -9
        self.running: dict[str, tuple] = {}  # name -> (processes (rank order), rank 0's log tail, stage dir, start time)
        self.failing: dict[str, tuple] = {}  # name -> (when, rank): its first failed rank (the others get RANK_GRACE_S)
        self.done: set[str] = set()
        self.failed: list[tuple] = []
        self.stopped: list[str] = []
        self.started: set[str] = set()
        self.signalled: Optional[int] = None  # SIGTERM/SIGHUP received: the loop raises Interrupted at its next turn
        self.stopping = False  # stopping the running stages (after a signal, Ctrl-C or an error)
        self.hurry = False  # a second signal while stopping: kill what is left without waiting
        self.pid = os.getpid()

    def _startable(self) -> Optional[int]:
        """Index in ``todo`` of the first stage that may start now, or None."""
        if self.failed or self.stopped or self.signalled is not None:
            return None
        free = self.max_parallel - sum(len(procs) for procs, *_ in self.running.values())
        for i, (st, _) in enumerate(self.todo):
            if st.name not in self.started and self.deps[st.name] <= self.done:
                return i if st.processes <= free else None  # list order is the priority: no overtaking
        return None

    def _start(self, i: int) -> None:
        st, d = self.todo[i]
        self.started.add(st.name)
        d.mkdir(parents=True, exist_ok=True)
        log = d / "stage.log"
        tail = _Tail(log)
        procs = []  # registered before they start: an error or Ctrl-C while starting the next rank stops these too
        beside = f" beside {', '.join(self.running)}" if self.running else ""
        self.running[st.name] = (procs, tail, d, time.time())
        port = free_port() if st.processes > 1 else None
        for rank in range(st.processes):
            env = None
            if port is not None:
                env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(st.processes),
                       "LOCAL_WORLD_SIZE": str(st.processes), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            rank_log = log if rank == 0 else d / f"stage.rank{rank}.log"
            proc = self.ctx.Process(target=_stage_process, name=f"stage-{st.name}-{rank}",
                                    args=(self.items, st.name, str(rank_log), st.nice, env, self.lifeline.child_end))
            proc.start()
            procs.append(proc)
        nice = f" at nice {st.nice}" if st.nice else ""
        where = (f"processes {', '.join(str(p.pid) for p in procs)} (ranks 0-{len(procs) - 1})" if len(procs) > 1
                 else f"process {procs[0].pid}")
        self.log(f"[r1mega] stage {st.name} ({st.kind}): started in {where}{nice}{beside}; log {log}")

    def _echo(self, name: str, tail: "_Tail", final: bool = False) -> None:
        for line in tail.lines(final):
            sys.stdout.write(f"{name:<{self.width}} | {line}\n")
        sys.stdout.flush()

    def _reap(self) -> None:
        for name, (procs, tail, d, t0) in list(self.running.items()):
            self._echo(name, tail)
            alive = [p for p in procs if p.is_alive()]
            bad = [r for r, p in enumerate(procs) if not p.is_alive() and p.exitcode != 0]
            if bad:
                self.failing.setdefault(name, (time.time(), bad[0]))
            if alive and bad:  # a failed rank: the others would wait for it in their next collective
                if time.time() - self.failing[name][0] > RANK_GRACE_S:
                    for p in alive:
                        p.kill()
            if alive:
                continue
            for p in procs:
                p.join()
            self._echo(name, tail, final=True)
            del self.running[name]
            m = manifest.read(d) or {}
            if bad:
                rank = self.failing.pop(name)[1]  # the first to fail, not one killed after it
                code = procs[rank].exitcode
                log = d / ("stage.log" if rank == 0 else f"stage.rank{rank}.log")
                self.failed.append((name, code, log))
                which = f" (rank {rank})" if len(procs) > 1 else ""
                self.log(f"[r1mega] stage {name}: FAILED{which} (exit {code}) after {time.time() - t0:.0f} s; log {log}")
            elif m.get("status") != "complete":  # preempted: the stage stays 'running', a rerun resumes it
                self.stopped.append(name)
                self.log(f"[r1mega] stage {name}: stopped before the end (status {m.get('status')}); rerun to resume")
            else:
                self.done.add(name)
                self.results[name] = m.get("metrics", {})
                self.log(f"[r1mega] stage {name}: complete in {time.time() - t0:.0f} s")

    def _on_signal(self, signum, frame) -> None:
        """SIGTERM/SIGHUP: only noted here; the loop raises :class:`Interrupted` at its next turn (within 0.2 s), never
        in the middle of starting a stage's processes. A second one while the stages stop kills them at once."""
        if os.getpid() != self.pid:  # a process forked from this one (not a stage: those come from the fork server)
            signal.signal(signum, signal.SIG_DFL)  # reacts as it would without this handler
            os.kill(os.getpid(), signum)
            return
        if self.signalled is not None or self.stopping:
            self.hurry = True
        else:
            self.signalled = signum

    def _catch_signals(self) -> dict:
        """Route STOP_SIGNALS to :meth:`_on_signal` (main thread only: elsewhere Python cannot, and the signals keep
        their default action); a signal that is ignored (``nohup``) or handled outside Python is left alone.
        Returns the handlers replaced, for :meth:`_restore_signals`."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in STOP_SIGNALS:
            old = signal.getsignal(sig)
            if old is None or old == signal.SIG_IGN:
                continue
            signal.signal(sig, self._on_signal)
            previous[sig] = old
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def _stop_running(self, signum: Optional[int]) -> None:
        """Stop every running stage process: after SIGTERM/SIGHUP (``signum``) each gets SIGTERM and STOP_GRACE_S to
        exit, after Ctrl-C (which reached them too) or an error here INTERRUPT_GRACE_S; then the rest are killed
        (at once after a second signal or Ctrl-C), and all are joined (their fork server reaps them). Manifests are
        the stages' own: a completed stage stays complete, an interrupted one stays 'running' (a rerun resumes it)."""
        self.stopping = True
        procs = [p for ps, *_ in self.running.values() for p in ps]
        if not procs:
            return
        grace = STOP_GRACE_S if signum is not None else INTERRUPT_GRACE_S
        if signum is not None:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            self._say(f"[r1mega] {signal.Signals(signum).name}: stopping stage {', '.join(self.running)} "
                      f"(SIGTERM, killed after {grace} s)")
        deadline = time.time() + grace
        try:
            while any(p.is_alive() for p in procs) and time.time() < deadline and not self.hurry:
                time.sleep(0.1)
        except KeyboardInterrupt:  # Ctrl-C while waiting: no more waiting
            pass
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(timeout=10)
        for name, (ps, tail, d, t0) in list(self.running.items()):
            del self.running[name]
            try:
                status = (manifest.read(d) or {}).get("status")
            except RuntimeError:
                status = "unreadable"
            codes = ", ".join(str(p.exitcode) for p in ps)
            if status == "complete":
                self.done.add(name)
                msg = f"[r1mega] stage {name}: complete (exit {codes})"
            else:
                self.stopped.append(name)
                msg = (f"[r1mega] stage {name}: interrupted after {time.time() - t0:.0f} s (exit {codes}, "
                       f"status {status}); rerun to resume")
            self._say(msg, name, tail)

    def _say(self, msg: str, name: Optional[str] = None, tail: Optional[_Tail] = None) -> None:
        """Log while stopping, where the console may be gone (SIGHUP: the terminal closed): never raises."""
        try:
            if tail is not None:
                self._echo(name, tail, final=True)
            self.log(msg)
        except Exception:  # noqa: BLE001
            pass

    def run(self) -> dict:
        for name in self.results:
            self.log(f"[r1mega] stage {name}: complete, skipped")
        previous = self._catch_signals()
        try:
            try:
                while self.running or (len(self.started) < len(self.todo) and not self.failed and not self.stopped):
                    while (i := self._startable()) is not None:
                        self._start(i)
                    if self.signalled is not None:
                        raise Interrupted(self.signalled)
                    if not self.running and len(self.started) < len(self.todo) and not self.failed and not self.stopped:
                        waiting = {st.name: sorted(self.deps[st.name] - self.done) for st, _ in self.todo
                                   if st.name not in self.started}  # cannot happen with a validated config
                        raise StageFailed(f"stages wait for stages that did not complete: {waiting}")
                    time.sleep(0.2)
                    if self.signalled is not None:
                        raise Interrupted(self.signalled)
                    self._reap()
                if self.signalled is not None:
                    raise Interrupted(self.signalled)
            except BaseException as e:  # SIGTERM/SIGHUP, Ctrl-C (reaches the children too) or an error
                self._stop_running(e.signum if isinstance(e, Interrupted) else self.signalled)
                raise
        finally:
            self._restore_signals(previous)
            self.lifeline.close()  # a stage process that somehow still runs dies now
        if self.failed:
            raise StageFailed("; ".join(f"stage {n!r} failed (exit {rc}), see {p}" for n, rc, p in self.failed))
        return self.results


def run_parallel(cfg, planned: list[tuple], items: list[str], max_parallel: int, log=None) -> dict:
    """Run the ``planned`` stages (:func:`r1mega.pipeline.runner.plan`'s tuples, in list order) as child
    processes, at most ``max_parallel`` at a time; ``items`` are the command line's config file and
    overrides, passed on to every child. Returns {stage: final metrics} of the completed stages."""
    return _Scheduler(cfg, planned, items, max_parallel, log or (lambda msg: print(msg, flush=True))).run()
