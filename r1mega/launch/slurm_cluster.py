"""A throw-away one-node Slurm cluster on this machine, for tests and for trying the sbatch scripts.

Starts munged, slurmctld and slurmd (Debian's slurm-wlm 22.05 + munge, installed with apt when
missing and we are root) with every file under one private state directory: config, pid files,
logs, spool, controller state and the munge socket. Ports are picked free at each start, so a
crashed earlier run holding the usual 6817/6818 does not get in the way, and the daemons of an
earlier run in the same directory are stopped first (by their pid files). No systemd, no
slurmdbd: job state comes from ``scontrol show job`` / ``squeue``.

    python -m r1mega.launch.slurm_cluster start /tmp/myslurm   # prints: export SLURM_CONF=...
    SLURM_CONF=/tmp/myslurm/slurm.conf sbatch ...
    python -m r1mega.launch.slurm_cluster stop /tmp/myslurm

Linux + root only (slurmd runs jobs as their submitter and must be root to do so).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol",
            "sinfo", "scancel")
# Daemons in stop order; pid file (relative to the state dir) and the name its /proc/PID/cmdline holds.
DAEMONS = (("slurmd", "slurmd.pid"), ("slurmctld", "slurmctld.pid"), ("munged", "munge/munged.pid"))
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here at all (not Linux, not root, no apt): callers skip, not fail."""


class SlurmError(RuntimeError):
    """Slurm should run here but something went wrong (install, daemon start, job)."""


# ---- installation ------------------------------------------------------------------------------
def missing_binaries() -> List[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def ensure_installed(log=print) -> None:
    """Install slurm-wlm + munge with apt when a binary is missing (~20 s). SlurmUnavailable when
    that is impossible here (no apt-get, not root, not Linux); SlurmError when apt fails."""
    if not missing_binaries():
        return
    if not sys.platform.startswith("linux"):
        raise SlurmUnavailable(f"Slurm test cluster needs Linux (this is {sys.platform})")
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"Slurm binaries missing ({', '.join(missing_binaries())}) and not root: "
                               "cannot apt-get install slurm-wlm munge")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"Slurm binaries missing ({', '.join(missing_binaries())}) and no apt-get")
    log(f"installing {' '.join(PACKAGES)} with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0 and cmd[1] == "install":
            raise SlurmError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}")
    if missing_binaries():
        raise SlurmError(f"still missing after apt-get install: {', '.join(missing_binaries())}")


def check_usable() -> None:
    """SlurmUnavailable unless we can run daemons here (root on Linux)."""
    if not sys.platform.startswith("linux"):
        raise SlurmUnavailable(f"Slurm test cluster needs Linux (this is {sys.platform})")
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm test cluster needs root (slurmd runs jobs as their submitter)")


# ---- helpers -----------------------------------------------------------------------------------
def _free_ports(n: int) -> List[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _pid_alive(pid: int, name: str) -> bool:
    """True when PID runs and is the daemon NAME (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(part.decode(errors="replace")) == name for part in cmdline[:2])


def _read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_pid(pid: int, name: str, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after TIMEOUT; True when something was running."""
    if not _pid_alive(pid, name):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid, name):
                return True
            time.sleep(0.1)
    return True


def _mem_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return max(1, int(line.split()[1]) // 1024 * 9 // 10)
    except OSError:
        pass
    return 1


def parse_job(text: str) -> Dict[str, str]:
    """`scontrol show job -o` output -> {Key: value}."""
    out: Dict[str, str] = {}
    for m in re.finditer(r"(\w[\w:/]*)=(\S*)", text):
        out.setdefault(m.group(1), m.group(2))
    return out


SLURM_CONF = """\
# r1mega one-node test cluster (written by r1mega.launch.slurm_cluster; regenerated at each start)
ClusterName=r1mega-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd / cgroup v2 in containers: track processes by parentage, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Quick turn-around for tests: short kill wait, finished jobs stay visible to scontrol for 10 min.
KillWait=5
MinJobAge=600
JobRequeue=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class LocalSlurmCluster:
    """One-node Slurm under STATE_DIR. ``start()``, then run sbatch & co. with ``env()``; ``stop()``."""

    def __init__(self, state_dir: os.PathLike, cpus: Optional[int] = None, log=print):
        self.dir = Path(state_dir).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket.2"
        self.log = log

    # -- environment for client commands
    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), env=kw.pop("env", None) or self.env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        return r

    # -- lifecycle
    def stop(self, cancel_jobs: bool = True) -> List[str]:
        """Cancel jobs (so no job processes outlive slurmd), then stop the daemons by their pid
        files. Safe to call on a dead or half-started cluster; returns what was stopped."""
        stopped = []
        if cancel_jobs and self.conf.exists() and _pid_alive(_read_pid(self.dir / "slurmctld.pid") or -1, "slurmctld"):
            try:
                r = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
                jobs = r.stdout.split()
                if jobs:
                    self.run("scancel", *jobs, check=False, timeout=10)
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and self.run("squeue", "-h", "-o", "%i", check=False,
                                                                   timeout=10).stdout.strip():
                        time.sleep(0.5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for name, rel in DAEMONS:
            pid = _read_pid(self.dir / rel)
            if pid and _stop_pid(pid, name):
                stopped.append(f"{name} ({pid})")
            (self.dir / rel).unlink(missing_ok=True)
        return stopped

    def start(self, timeout: float = 60) -> "LocalSlurmCluster":
        check_usable()
        ensure_installed(self.log)
        stale = self.stop()  # leftovers of an earlier run in the same directory
        if stale:
            self.log(f"stopped stale daemons: {', '.join(stale)}")
        for sub in ("state", "spool", "log", "munge"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        for sub in ("state", "spool", "log", "munge"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(SLURM_CONF.format(host=self.host, dir=self.dir, munge_socket=self.munge_socket,
                                               ctld_port=ctld_port, slurmd_port=slurmd_port, cpus=self.cpus,
                                               mem=_mem_mb()))
        try:
            self._start_munge()
            self._daemon(["slurmctld", "-i", "-f", str(self.conf)], "slurmctld.pid", "slurmctld")
            self._daemon(["slurmd", "-f", str(self.conf)], "slurmd.pid", "slurmd")
            self.wait_idle(timeout)
        except BaseException:
            self.stop(cancel_jobs=False)
            raise
        return self

    def _start_munge(self) -> None:
        mdir = self.dir / "munge"
        shutil.chown(mdir, "munge", "munge")
        mdir.chmod(0o755)  # munged wants its socket dir world-readable+searchable, not writable
        key = Path("/etc/munge/munge.key")
        cmd = ["munged", f"--socket={self.munge_socket}", f"--pid-file={mdir}/munged.pid",
               f"--log-file={mdir}/munged.log", f"--seed-file={mdir}/munged.seed"]
        if not key.exists():  # the Debian package creates it; make a private one otherwise
            keyfile = mdir / "munge.key"
            keyfile.write_bytes(os.urandom(1024))
            shutil.chown(keyfile, "munge", "munge")
            keyfile.chmod(0o400)
            cmd.append(f"--key-file={keyfile}")
        self._daemon(["runuser", "-u", "munge", "--", *cmd], "munge/munged.pid", "munged",
                     ready=lambda: self.munge_socket.exists())
        r = subprocess.run(f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}", shell=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10)
        if r.returncode != 0 or "STATUS:" not in r.stdout or "Success" not in r.stdout:
            raise SlurmError(f"munge round trip failed:\n{r.stdout}")

    def _daemon(self, cmd: List[str], pid_rel: str, name: str, ready=None, timeout: float = 20) -> None:
        r = subprocess.run(cmd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)} exited {r.returncode}: {r.stdout.strip()}\n{self.logs(name)}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = _read_pid(self.dir / pid_rel)
            if pid and _pid_alive(pid, name) and (ready is None or ready()):
                return
            time.sleep(0.1)
        raise SlurmError(f"{name} did not come up within {timeout:.0f} s\n{self.logs(name)}")

    def logs(self, name: str = "", tail: int = 40) -> str:
        paths = {"munged": [self.dir / "munge" / "munged.log"], "slurmctld": [self.dir / "log" / "slurmctld.log"],
                 "slurmd": [self.dir / "log" / "slurmd.log"]}
        out = []
        for key, files in paths.items():
            if name and key != name:
                continue
            for f in files:
                if f.exists():
                    lines = f.read_text(errors="replace").splitlines()[-tail:]
                    out.append(f"--- {f} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(out)

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until the node is idle (slurmd registered with the controller)."""
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            r = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10)
            last = (r.stdout + r.stderr).strip()
            if r.returncode == 0 and last.split()[-1:] == ["idle"]:
                return
            time.sleep(0.3)
        raise SlurmError(f"node not idle after {timeout:.0f} s (sinfo: {last!r})\n{self.logs()}")

    # -- jobs
    def sbatch(self, args: Iterable[str], env: Optional[Dict[str, str]] = None, cwd=None) -> int:
        r = self.run("sbatch", "--parsable", *args, env=self.env(env), cwd=cwd)
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> Dict[str, str]:
        r = self.run("scontrol", "show", "job", "-o", str(job_id), check=False, timeout=10)
        return parse_job(r.stdout) if r.returncode == 0 else {}

    def job_state(self, job_id: int) -> str:
        return self.job(job_id).get("JobState", "UNKNOWN")

    def wait_job(self, job_id: int, timeout: float = 120, until=TERMINAL_STATES, poll: float = 0.5) -> Dict[str, str]:
        """Poll ``scontrol show job`` until its state is in UNTIL; returns the job record."""
        deadline, info = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in until:
                return info
            time.sleep(poll)
        raise SlurmError(f"job {job_id} not in {sorted(until)} after {timeout:.0f} s: "
                         f"{info.get('JobState')} ({info.get('Reason')})\n{self.logs('slurmd', 20)}")

    def __enter__(self) -> "LocalSlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m r1mega.launch.slurm_cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("state_dir", help="private directory for config, logs, pid files, spool and state")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the node (default: all)")
    a = p.parse_args(argv)
    c = LocalSlurmCluster(a.state_dir, cpus=a.cpus, log=lambda m: print(m, file=sys.stderr))
    try:
        if a.action == "start":
            c.start()
            print(f"export SLURM_CONF={c.conf}")
        elif a.action == "stop":
            print("stopped: " + (", ".join(c.stop()) or "nothing was running"), file=sys.stderr)
        else:
            print(c.run("sinfo", check=False).stdout, end="")
    except (SlurmUnavailable, SlurmError) as e:
        print(f"slurm_cluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
