"""A process pool that survives its workers: per-call hard timeouts, kill-and-replace.

``concurrent.futures.ProcessPoolExecutor`` cannot cancel one running call and breaks as a whole when a worker
dies, so this pool drives its own workers over one pipe each. A call that exceeds its timeout gets its worker
SIGKILLed and replaced (outcome ``timeout``); a worker that dies mid-call is replaced (outcome ``crashed``);
an exception in the called function is outcome ``error``. :meth:`WorkerPool.run` never raises because of a
task: every task gets an :class:`Outcome`.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Optional

from r1mega.platform.lifeline import Lifeline
from r1mega.rewards.worker import PRELOAD, worker_main

log = logging.getLogger(__name__)


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class Task:
    fn: str                 # a key of r1mega.rewards.worker.FUNCTIONS
    args: tuple
    timeout_s: float


@dataclass
class Outcome:
    status: str             # ok | timeout | error | crashed
    value: Any = None
    error: str = ""
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Worker:
    index: int
    proc: Any
    conn: Any
    started: float
    ready: bool = False
    task: Optional[int] = None
    sent_at: float = 0.0
    deadline: float = 0.0


@dataclass
class PoolStats:
    timeouts: int = 0
    crashes: int = 0
    errors: int = 0
    restarts: int = 0
    calls: int = 0
    extra: dict = field(default_factory=dict)


class WorkerPool:
    """``num_workers`` reward worker processes. Not thread-safe across concurrent :meth:`run` calls (a lock
    serialises them)."""

    def __init__(self, num_workers: int = 0, start_method: str = "forkserver", worker_memory_mb: int = 4096,
                 startup_timeout_s: float = 120.0, preload: tuple = ()):
        self.num_workers = num_workers or min(os.cpu_count() or 1, 16)
        self.preload = tuple(dict.fromkeys(PRELOAD + tuple(preload)))
        self.start_method = start_method
        self.worker_memory_mb = worker_memory_mb
        self.startup_timeout_s = startup_timeout_s
        self.stats = PoolStats()
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            try:
                self._ctx.set_forkserver_preload([m for m in self.preload if _importable(m)])
            except Exception:
                pass
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._starter: Optional[threading.Thread] = None
        self._pid = os.getpid()
        self._lifeline: Optional[Lifeline] = None  # the workers die with the process that owns the pool

    # -- worker lifecycle -------------------------------------------------------------------------------
    def _spawn(self, index: int) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        if self._lifeline is None:
            self._lifeline = Lifeline(self._ctx)
        proc = self._ctx.Process(target=worker_main, name=f"r1mega-reward-{index}", daemon=True,
                                 args=(child, index, self.worker_memory_mb, self.preload, self._lifeline.child_end))
        proc.start()
        child.close()
        return _Worker(index=index, proc=proc, conn=parent, started=time.monotonic())

    def _ensure_started(self) -> None:
        if self._closed:
            raise RuntimeError("WorkerPool is closed")
        if os.getpid() != self._pid:  # used after a fork: the workers (and their lifeline) belong to the parent
            self._workers, self._pid, self._lifeline = [], os.getpid(), None
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn(len(self._workers)))

    def _kill(self, w: _Worker) -> None:
        try:
            w.proc.kill()
        except Exception:
            pass
        try:
            w.proc.join(5)
        except Exception:
            pass
        try:
            w.conn.close()
        except Exception:
            pass

    def _replace(self, w: _Worker) -> None:
        self._kill(w)
        self.stats.restarts += 1
        self._workers[w.index] = self._spawn(w.index)

    # -- running ----------------------------------------------------------------------------------------
    def start(self, background: bool = False) -> None:
        """Start the workers now rather than at the first :meth:`run` (whose wait for worker start-up, ~3 s
        on 2 cores for the math verifier's imports, would otherwise fall into the first reward step).
        ``background``: in a daemon thread, overlapping the caller's own set-up; a :meth:`run` meanwhile
        waits for it."""
        def go():
            with self._lock:
                if not self._closed:
                    self._ensure_started()

        if background:
            self._starter = threading.Thread(target=go, name="r1mega-reward-pool-start", daemon=True)
            self._starter.start()
        else:
            go()

    def run(self, tasks: list[Task]) -> list[Outcome]:
        """Run every task; outcomes in task order. Each call's timeout counts from when a worker takes it."""
        with self._lock:
            self._ensure_started()
            return self._run(tasks)

    def _run(self, tasks: list[Task]) -> list[Outcome]:
        results: list[Optional[Outcome]] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        failed_starts = 0
        while pending or any(w.task is not None for w in self._workers):
            now = time.monotonic()
            for w in self._workers:
                if w.ready and w.task is None and pending:
                    i = pending.popleft()
                    try:
                        w.conn.send((i, tasks[i].fn, tasks[i].args))
                    except Exception as e:
                        if isinstance(e, (OSError, EOFError)):  # the worker is gone; the task never started
                            pending.appendleft(i)
                            self._replace(w)
                        else:  # unpicklable arguments
                            results[i] = Outcome("error", error=f"cannot send task: {type(e).__name__}: {e}")
                            self.stats.errors += 1
                        continue
                    w.task, w.sent_at, w.deadline = i, now, now + tasks[i].timeout_s
                    self.stats.calls += 1
            deadlines = [w.deadline for w in self._workers if w.task is not None]
            deadlines += [w.started + self.startup_timeout_s for w in self._workers if not w.ready]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            waitables = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
            ready = set(wait(waitables, timeout))
            now = time.monotonic()
            for w in list(self._workers):
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is None:
                        failed_starts += 0 if w.ready else 1
                        self._lost(w, results, "crashed", "worker died")
                    elif msg[0] == "ready":
                        w.ready = True
                        failed_starts = 0
                    else:
                        task_id, ok, value = msg
                        if task_id == w.task:
                            wall = now - w.sent_at
                            if ok:
                                results[task_id] = Outcome("ok", value, wall_s=wall)
                            else:
                                results[task_id] = Outcome("error", error=str(value), wall_s=wall)
                                self.stats.errors += 1
                            w.task = None
                elif w.proc.sentinel in ready:
                    failed_starts += 0 if w.ready else 1
                    self._lost(w, results, "crashed", f"worker exited with code {w.proc.exitcode}")
            for w in list(self._workers):
                if w.task is not None and now >= w.deadline:
                    self._lost(w, results, "timeout", f"no answer within {tasks[w.task].timeout_s:.3g} s")
                elif not w.ready and now >= w.started + self.startup_timeout_s:
                    failed_starts += 1
                    log.error("reward worker %d did not start within %.0f s", w.index, self.startup_timeout_s)
                    self._replace(w)
            if failed_starts >= 2 * self.num_workers and pending:
                log.error("reward workers keep failing to start; %d tasks get an error", len(pending))
                for i in pending:
                    results[i] = Outcome("error", error="reward workers failed to start")
                    self.stats.errors += 1
                pending.clear()
        return [r if r is not None else Outcome("error", error="lost") for r in results]

    def _lost(self, w: _Worker, results: list, status: str, message: str) -> None:
        """The worker is dead or stuck: its task (if any) gets ``status``; the worker is replaced."""
        if w.task is not None:
            results[w.task] = Outcome(status, error=message, wall_s=time.monotonic() - w.sent_at)
            if status == "timeout":
                self.stats.timeouts += 1
            else:
                self.stats.crashes += 1
        self._replace(w)

    def close(self) -> None:
        if self._closed:
            return
        if self._starter is not None:  # a background start still spawning: let it finish, then stop its workers
            self._starter.join(self.startup_timeout_s)
        self._closed = True
        if os.getpid() != self._pid:
            return
        for w in self._workers:
            try:
                w.conn.send(None)
            except Exception:
                pass
        for w in self._workers:
            w.proc.join(1)
            if w.proc.is_alive():
                self._kill(w)
        self._workers = []
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


__all__ = ["WorkerPool", "Task", "Outcome", "PoolStats"]
