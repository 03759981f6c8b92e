"""A real one-node Slurm for the `slurm` tests, started once per session.

slurm-wlm + munge come from apt (installed here when missing, ~20 s; the tests are skipped only
where that is impossible: not Linux, not root, no apt-get). munged, slurmctld and slurmd run with
all their files in one private directory under the temp dir, on free ports, and are stopped at the
end of the session. The directory is fixed per user so that a crashed earlier session's daemons
(pid files there) are stopped before the new start; a lock file serialises concurrent sessions.
"""
from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from r1mega.launch.slurm_cluster import LocalSlurmCluster, SlurmUnavailable, check_usable, ensure_installed

REPO = Path(__file__).resolve().parents[2]
LOCK_WAIT_S = 300


def _log(msg: str) -> None:
    sys.stderr.write(f"[slurm fixture] {msg}\n")


@pytest.fixture(scope="session")
def slurm_cluster():
    try:
        check_usable()
        ensure_installed(_log)
    except SlurmUnavailable as e:
        pytest.skip(f"no Slurm test cluster: {e}")
    base = Path(tempfile.gettempdir()) / f"r1mega-slurm-test-{os.getuid()}"
    base.mkdir(parents=True, exist_ok=True)
    lock = open(base.with_suffix(".lock"), "w")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"another session holds {lock.name} for more than {LOCK_WAIT_S} s")
            time.sleep(1)
    cluster = LocalSlurmCluster(base, log=_log)
    t0 = time.monotonic()
    try:
        cluster.start()
        _log(f"one-node Slurm up in {time.monotonic() - t0:.1f} s: SLURM_CONF={cluster.conf}")
        yield cluster
    finally:
        stopped = cluster.stop()
        _log(f"stopped {', '.join(stopped) or 'nothing'}")
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
