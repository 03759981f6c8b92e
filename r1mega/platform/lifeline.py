"""Child processes that die with their parent, however the parent dies (``kill -9`` included).

Two mechanisms, one per way a child is started:

* :class:`Lifeline`, for children we start through ``multiprocessing`` (stage processes, reward workers). The
  parent makes a pipe and keeps its write end; each child gets the read end and watches it from a daemon thread.
  Nothing is ever written: the read end sees end-of-file exactly when every copy of the write end is closed, which
  the kernel does when the parent exits, whatever killed it. The child then SIGKILLs its own descendants (what
  libraries started in it) and itself. Unlike
  ``PR_SET_PDEATHSIG`` this does not depend on who the child's parent process is (``multiprocessing``'s fork
  server is, and it outlives the process that asked for the child) nor on which of the parent's threads
  started it.
* :func:`die_with_parent`, for a process started by a launcher we do not control (a ``torchrun`` rank): Linux's
  ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked us exits (torchrun's agent starts its ranks from
  its main thread, so: when the agent dies). No-op elsewhere.

A child that dies this way is killed as by ``kill -9``; checkpoints and manifests are written atomically, so a
rerun resumes from the last complete one.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1


class Lifeline:
    """The parent's side: ``child_end`` goes to each child (as an argument of ``multiprocessing.Process``), which
    calls :func:`hold` with it; the parent keeps the object (its write end) alive as long as the children may run."""

    def __init__(self, ctx):
        self.child_end, self._parent_end = ctx.Pipe(duplex=False)

    def close(self) -> None:
        """Cut it: every child holding it dies (as when the parent dies)."""
        for conn in (self._parent_end, self.child_end):
            try:
                conn.close()
            except OSError:
                pass


def hold(child_end, what: str = "process", cleanup=None) -> threading.Thread:
    """In the child: die (SIGKILL) as soon as the parent that made ``child_end`` is gone, after calling ``cleanup()``
    (if given: end what this process started that would not die with it). Returns the watching thread."""
    def watch():
        from multiprocessing.connection import wait

        try:
            wait([child_end])  # nothing is ever sent: readable means end-of-file, the parent is gone
        except Exception:  # noqa: BLE001 - cannot watch: treat as gone rather than risk an orphan
            pass
        try:
            sys.stderr.write(f"[r1mega] {what} {os.getpid()}: parent process gone, exiting\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        if cleanup is not None:
            try:
                cleanup()
            except Exception:  # noqa: BLE001
                pass
        kill_descendants()
        os.kill(os.getpid(), signal.SIGKILL)

    t = threading.Thread(target=watch, name="r1mega-lifeline", daemon=True)
    t.start()
    return t


def _children_by_parent() -> dict[int, list[int]]:
    """{ppid: [pid, ...]} of every process, from /proc (Linux)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def kill_descendants() -> None:
    """SIGKILL every process below this one (children first found, then theirs): what libraries started here
    (Megatron's checkpoint writers, a Manager, a fork server) dies with it. Linux; a no-op elsewhere."""
    if not os.path.isdir("/proc"):
        return
    tree, todo, found = _children_by_parent(), [os.getpid()], []
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Linux: get ``sig`` when the parent (its forking thread) exits; if it already has (we were re-parented to
    init before this call), ``sig`` now. False where the platform has no ``PR_SET_PDEATHSIG``."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died while the signal was being armed
        os.kill(os.getpid(), sig)
    return True


__all__ = ["Lifeline", "hold", "die_with_parent", "kill_descendants"]
