"""Hostile generated code in the sandbox: each attack is contained with reward 0, the host is untouched, the
trainer (this test process) survives the whole batch, and the batch finishes within its time bound."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import textwrap
import time
import uuid

import pytest

from r1mega.config.rewards import CodeRewardConfig, RewardsConfig
from r1mega.rewards import RewardSample
from r1mega.rewards import sandbox as sb
from r1mega.rewards.code import run_code_tests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = {"tests": ["assert f(1) == 2", "assert f(5) == 6"]}
GOOD = "def f(x):\n    return x + 1\n"


def _resp(code: str) -> str:
    return f"<think>t</think><answer>\n```python\n{textwrap.dedent(code)}\n```\n</answer>"


def _code_cfg(**kw) -> RewardsConfig:
    code = CodeRewardConfig(wall_timeout_s=4.0, cpu_time_s=3, test_timeout_s=2.0, memory_mb=512, max_processes=16,
                            max_output_bytes=200_000, timeout_margin_s=4.0, **kw)
    return RewardsConfig(preset="accuracy_only", code=code)


def _nobody_procs() -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-u", "65534"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip() and " Z" not in line]


def test_hostile_batch_is_contained(computer, bwrap_ok, tmp_path):
    tag = uuid.uuid4().hex
    host_marker = f"/tmp/host_marker_{tag}"
    repo_marker = os.path.join(REPO, f"pwned_{tag}")
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    secret = secret_dir / "secret.txt"
    secret.write_text("TOPSECRET")
    for p in (tmp_path, secret_dir):   # even world-readable host files must be invisible
        os.chmod(p, 0o755)
    os.chmod(secret, 0o644)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]

    hostile = {
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except Exception:\n        pass\n",
        "infinite_loop": "while True:\n    pass\n",
        "loop_ignoring_alarm": "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n",
        "memory_bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n",
        "huge_alloc": "x = bytearray(8 * 1024 ** 3)\n" + GOOD,
        "write_host_tmp": f"open({host_marker!r}, 'w').write('owned')\n",
        "write_repo": f"import os\nos.makedirs({REPO!r}, exist_ok=True)\nopen({repo_marker!r}, 'w').write('x')\n" + GOOD,
        # detectors: the program is correct only if the attack worked, so reward 0 proves it did not
        "read_secret": f"data = open({str(secret)!r}).read()\nassert 'TOPSECRET' in data\n" + GOOD,
        "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n" + GOOD,
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)\n"
                       "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n",
        "stdout_flood": "import sys\nsys.stdout.write('x' * 100_000_000)\n" + GOOD,
        "fake_verdicts": "import os\nprint('0 pass\\n1 pass')\nos._exit(0)\n",
        "patch_builtins": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\n"
                          "def f(x):\n    return 0\n",
    }
    cfg = _code_cfg(backend="bwrap")
    rc = computer(cfg)
    samples = [RewardSample(_resp(code), "code", SPEC) for code in hostile.values()]
    samples.append(RewardSample(_resp(GOOD), "code", SPEC))     # a correct program in the same batch
    t = time.monotonic()
    out = rc.score(samples)
    wall = time.monotonic() - t

    acc = dict(zip(list(hostile) + ["good"], out.components["accuracy"]))
    expected = {**{k: 0.0 for k in hostile}, "good": 1.0}
    if os.path.realpath(REPO).startswith("/tmp/"):
        # A checkout under /tmp: inside the sandbox /tmp is a private tmpfs, so "writing into the repo"
        # succeeds there, harmlessly, and the program's tests pass. The host check below is what counts.
        expected["write_repo"] = acc["write_repo"]
    assert acc == expected, out.details
    # bound: 14 programs on 2 workers, each killed at wall_timeout_s=4 at the latest
    assert wall < 7 * cfg.code.wall_timeout_s + 10
    statuses = {k: d["accuracy"] for k, d in zip(hostile, out.details)}
    assert statuses["stdout_flood"] == "output_limit"
    assert not os.path.exists(host_marker)
    assert not os.path.exists(repo_marker)
    with pytest.raises(BlockingIOError):
        listener.accept()                      # nobody connected
    listener.close()
    time.sleep(0.5)
    assert _nobody_procs() == []               # no sandbox process left behind (fork bomb included)
    # the trainer and the pool are fine: a normal batch still works
    assert rc.score([RewardSample(_resp(GOOD), "code", SPEC)]).components["accuracy"] == [1.0]


def test_rlimit_fallback_contains_the_basics(bwrap_ok):
    """Without bwrap (forced): loops, memory, fork bombs, floods and parent-killing are still contained."""
    cfg = CodeRewardConfig(backend="rlimit", wall_timeout_s=3.0, cpu_time_s=2, test_timeout_s=1.0, memory_mb=512,
                           max_processes=16, max_output_bytes=100_000)
    cases = {
        "infinite_loop": "while True:\n    pass\n",
        "memory": "x = bytearray(8 * 1024 ** 3)\n" + GOOD,
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except Exception:\n        break\n",
        "flood": "print('y' * 10_000_000)\n" + GOOD,
        "kill_parent": "import os\nos.kill(os.getppid(), 9)\n",
    }
    t = time.monotonic()
    for name, code in cases.items():
        r = run_code_tests(code, SPEC, cfg)
        assert r["reward"] == 0.0 and r["backend"] == "rlimit", (name, r)
    assert run_code_tests(GOOD, SPEC, cfg)["reward"] == 1.0
    assert time.monotonic() - t < 25


def test_missing_bwrap_warns_loudly_once(monkeypatch, caplog):
    monkeypatch.setattr(sb, "bwrap_works", lambda python, uid: (False, "bwrap not found on PATH"))
    monkeypatch.setattr(sb, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="r1mega.rewards.sandbox"):
        assert sb.select_backend("auto", "/usr/bin/python3", 65534) == "rlimit"
        assert sb.select_backend("auto", "/usr/bin/python3", 65534) == "rlimit"
    warnings = [r for r in caplog.records if "SANDBOX DEGRADED" in r.getMessage()]
    assert len(warnings) == 1
    with pytest.raises(RuntimeError, match="bubblewrap does not work"):
        sb.select_backend("bwrap", "/usr/bin/python3", 65534)


def test_sandbox_view_of_the_filesystem(bwrap_ok):
    probe = textwrap.dedent("""
        import os
        res = []
        for d in ["/", "/usr", "/dev", "/tmp"]:
            try:
                open(os.path.join(d, "probe"), "w").write("x")
                res.append(d + ":w")
            except OSError:
                res.append(d + ":ro")
        print(" ".join(res), os.getuid(), sorted(os.listdir("/")))
    """)
    py = sb.resolve_python("auto")
    r = sb.run_python(["-I", "-c", probe], b"", python=py, backend="bwrap", uid=65534, wall_timeout_s=10,
                      max_output_bytes=10_000)
    line = r.output.decode()
    assert r.status == "ok", line
    assert "/:ro /usr:ro /dev:ro /tmp:w 65534" in line
    assert "work" not in line and "root" not in line


def test_detectors_score_when_not_sandboxed(monkeypatch, tmp_path):
    """The read/network detectors above are live: run with no isolation at all they DO score 1."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    monkeypatch.setattr(sb, "fallback_argv", lambda python, inner, uid: ([python] + inner, False))
    import r1mega.rewards.code as code_mod
    monkeypatch.setattr(code_mod, "select_backend", lambda requested, python, uid: "rlimit")
    cfg = CodeRewardConfig(backend="rlimit", wall_timeout_s=10)
    read = f"data = open({str(secret)!r}).read()\nassert 'TOPSECRET' in data\n" + GOOD
    net = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n" + GOOD
    assert run_code_tests(read, SPEC, cfg)["reward"] == 1.0
    assert run_code_tests(net, SPEC, cfg)["reward"] == 1.0
    listener.close()
