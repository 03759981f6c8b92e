"""Running untrusted Python: bubblewrap when it works here, otherwise rlimits with a loud warning.

``bwrap`` backend (what CI and the tests use):

* ``--unshare-all`` (user, pid, net, ipc, uts, cgroup namespaces): no network at all (not even the host's
  127.0.0.1), its own pid 1, so ``os.kill(os.getppid(), 9)`` hits the sandbox's init, not the trainer;
* ``--die-with-parent`` + ``--new-session``; we kill the whole process group at the wall-time limit;
* a filesystem built from read-only binds of ``/usr`` (and the interpreter's prefix if elsewhere), an empty
  private ``/tmp`` tmpfs of bounded size as working dir, fresh ``/proc`` and ``/dev``, and ``/`` remounted
  read-only: the repository, ``/root``, the host ``/tmp`` are not there to read or write;
* run as an unprivileged uid (``sandbox_uid``, default 65534) when we are root, so that RLIMIT_NPROC applies
  (the kernel ignores it for root);
* rlimits (CPU, address space, process count, file size, no core dumps) are set by the trusted harness inside
  before any untrusted code runs; the output pipe is read up to ``max_output_bytes``, then the run is killed.

``rlimit`` fallback (no usable bwrap): same uid drop, rlimits and output/wall limits, plus ``unshare --net``
when available, but files the uid can write (``/tmp``...) stay writable and host files it can read stay readable.
It logs a warning once per process.
"""
from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

log = logging.getLogger(__name__)
_warned = False
_running: set = set()  # sandboxes started by this process and not yet stopped (:func:`kill_running`)
TMPFS_BYTES = 64 * 1024 * 1024
_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0"}


@dataclass
class SandboxResult:
    status: str                 # ok (exited) | timeout | output_limit | error (could not start)
    returncode: Optional[int]
    output: bytes               # stdout+stderr, at most max_output_bytes
    wall_s: float
    backend: str
    message: str = ""


def _drop_uid(uid: int) -> dict:
    """Popen kwargs that run the child as ``uid`` when we are root (no preexec_fn: thread-safe)."""
    if os.geteuid() != 0:
        return {}
    return {"user": uid, "group": uid, "extra_groups": []}


def _world_reachable(path: str) -> bool:
    """Every directory on the way is world-searchable and the file world-executable."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        d = os.path.dirname(path)
        while True:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
            if d == "/":
                return True
            d = os.path.dirname(d)
    except OSError:
        return False


@lru_cache(maxsize=8)
def resolve_python(setting: str = "auto") -> str:
    """The interpreter the sandbox runs: ``setting`` if not 'auto'; else this interpreter's real binary if the
    sandbox uid can reach it, else /usr/bin/python3 (or the first python3 on PATH under /usr)."""
    if setting != "auto":
        return setting
    cands = [os.path.realpath(sys.executable)]
    if os.geteuid() != 0:
        return cands[0]
    cands += ["/usr/bin/python3", "/usr/local/bin/python3"]
    for c in cands:
        if os.path.exists(c) and _world_reachable(c):
            return os.path.realpath(c)
    return cands[0]


def _python_binds(python: str) -> list[str]:
    """Read-only binds that make ``python`` and its standard library visible inside the sandbox."""
    real = os.path.realpath(python)
    prefix = os.path.dirname(os.path.dirname(real))  # .../bin/python3 -> ...
    if prefix == "/usr" or prefix.startswith("/usr/"):
        return []
    return ["--ro-bind", prefix, prefix]


def bwrap_argv(python: str, inner: list[str]) -> list[str]:
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    for f in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(f):
            argv += ["--ro-bind", f, f]
    argv += _python_binds(python)
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
             "--size", str(1024 * 1024), "--tmpfs", "/dev/shm", "--hostname", "sandbox",
             "--chdir", "/tmp", "--remount-ro", "/dev", "--remount-ro", "/", "--"]
    return argv + [python] + inner


def fallback_argv(python: str, inner: list[str], uid: int) -> tuple[list[str], bool]:
    """(argv, whether Popen must drop to ``uid``) for the rlimit backend: a fresh network namespace via
    ``unshare`` when it works here (as root: unshare then setuid; otherwise an unprivileged user+net namespace)."""
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0 and _probe((unshare, "--net", "--setgid", str(uid), "--setuid", str(uid),
                                                 "--", "/bin/true"), None):
        return [unshare, "--net", "--setgid", str(uid), "--setuid", str(uid), "--", python] + inner, False
    if unshare and _probe((unshare, "--user", "--net", "--", "/bin/true"), uid):
        return [unshare, "--user", "--net", "--", python] + inner, True
    return [python] + inner, True


@lru_cache(maxsize=8)
def _probe(argv: tuple, uid: Optional[int]) -> bool:
    try:
        kw = _drop_uid(uid) if uid is not None else {}
        return subprocess.run(list(argv), capture_output=True, timeout=10, **kw).returncode == 0
    except Exception:
        return False


@lru_cache(maxsize=8)
def bwrap_works(python: str, uid: int) -> tuple[bool, str]:
    """Whether a trivial program runs under bwrap here (as ``uid``); the reason if not."""
    if not shutil.which("bwrap"):
        return False, "bwrap not found on PATH"
    try:
        p = subprocess.run(bwrap_argv(python, ["-c", "print('ok')"]), capture_output=True, timeout=30,
                           env=_ENV, **_drop_uid(uid))
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"
    if p.returncode == 0 and p.stdout.strip() == b"ok":
        return True, ""
    return False, (p.stderr or p.stdout).decode(errors="replace").strip()[:300]


def select_backend(requested: str, python: str, uid: int) -> str:
    """'bwrap' or 'rlimit' for the configured ``backend``; raises if 'bwrap' is required and unusable."""
    global _warned
    if requested == "rlimit":
        return "rlimit"
    ok, why = bwrap_works(python, uid)
    if ok:
        return "bwrap"
    if requested == "bwrap":
        raise RuntimeError(f"rewards.code.backend='bwrap' but bubblewrap does not work here: {why}")
    if not _warned:
        _warned = True
        log.warning("!!! CODE SANDBOX DEGRADED: bubblewrap unusable (%s). Generated code runs with rlimits, an "
                    "unprivileged uid and (if possible) no network, but CAN read world-readable host files and "
                    "write world-writable paths such as /tmp. Install bubblewrap (apt-get install bubblewrap).", why)
        print("WARNING: r1mega code sandbox degraded to rlimits only (bubblewrap unusable: %s)" % why,
              file=sys.stderr, flush=True)
    return "rlimit"


def run_python(inner_args: list[str], stdin: bytes, *, python: str, backend: str, uid: int, wall_timeout_s: float,
               max_output_bytes: int) -> SandboxResult:
    """Run ``python *inner_args`` in the sandbox with ``stdin``; read at most ``max_output_bytes`` of output."""
    t0 = time.monotonic()
    try:
        proc = start_python(inner_args, python=python, backend=backend, uid=uid)
    except Exception as e:
        return SandboxResult("error", None, b"", 0.0, backend, f"could not start: {type(e).__name__}: {e}")
    out = bytearray()
    status = "ok"
    pending = memoryview(stdin)
    fd_out, fd_in = proc.stdout.fileno(), proc.stdin.fileno()
    os.set_blocking(fd_in, False)
    if not pending:
        proc.stdin.close()
        fd_in = -1
    deadline = t0 + wall_timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            r, w = ready([fd_out], [fd_in] if fd_in >= 0 else [], left)
            if w:
                try:
                    n = os.write(fd_in, pending[:65536])
                    pending = pending[n:]
                except (BrokenPipeError, OSError):
                    pending = pending[:0]
                if not pending:
                    proc.stdin.close()
                    fd_in = -1
            if r:
                chunk = os.read(fd_out, 65536)
                if not chunk:
                    break
                out += chunk
                if len(out) > max_output_bytes:
                    status = "output_limit"
                    del out[max_output_bytes:]
                    break
    finally:
        if not stop_python(proc) and status == "ok":
            status = "timeout"
    return SandboxResult(status, proc.returncode, bytes(out), time.monotonic() - t0, backend)


def ready(read: list[int], write: list[int], timeout: float) -> tuple[list[int], list[int]]:
    """The fds of ``read`` / ``write`` ready within ``timeout`` seconds. poll(), not select(): select() refuses
    fd numbers >= 1024, which a long-lived process holding many files (a trainer, a test session) reaches."""
    p = select.poll()
    for fd in read:
        p.register(fd, select.POLLIN | select.POLLPRI)
    for fd in write:
        p.register(fd, select.POLLOUT | (select.POLLIN | select.POLLPRI if fd in read else 0))
    r, w = [], []
    for fd, ev in p.poll(max(0.0, timeout) * 1000):
        if fd in read and ev & (select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR):
            r.append(fd)
        if fd in write and ev & (select.POLLOUT | select.POLLHUP | select.POLLERR):
            w.append(fd)
    return r, w


def start_python(inner_args: list[str], *, python: str, backend: str, uid: int) -> subprocess.Popen:
    """Start ``python *inner_args`` in the sandbox with stdin/stdout pipes (stderr joins stdout), in its own
    session; the caller talks to it and must end it with :func:`stop_python`. Raises if it cannot start."""
    if backend == "bwrap":
        argv, drop = bwrap_argv(python, inner_args), True
    else:
        argv, drop = fallback_argv(python, inner_args, uid)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=_ENV, cwd="/", start_new_session=True, close_fds=True,
                            **(_drop_uid(uid) if drop else {}))
    _running.add(proc)
    return proc


def stop_python(proc: subprocess.Popen) -> bool:
    """Kill the run's process group (also leftovers of a finished run), reap it, close its pipes; False if it
    would not die within 5 s of the kill."""
    _kill_group(proc)
    _running.discard(proc)
    died = True
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait(5)
        died = False
    for f in (proc.stdout, proc.stdin):
        try:
            if f and not f.closed:
                f.close()
        except OSError:
            pass
    if os.environ.get("R1MEGA_REWARD_WORKER"):
        _reap()
    return died


def kill_running() -> None:
    """Kill every sandbox this process started and has not stopped (its process group): the reward worker does this
    when its pool's owner is gone, before it dies itself (bwrap's ``--die-with-parent`` would end a bwrap sandbox
    anyway; the rlimit fallback's would run on)."""
    for proc in list(_running):
        _kill_group(proc)


def _reap() -> None:
    """In a reward worker (a child subreaper with no other children): collect adopted zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


__all__ = ["SandboxResult", "run_python", "start_python", "stop_python", "kill_running", "select_backend", "resolve_python", "bwrap_works", "bwrap_argv"]
