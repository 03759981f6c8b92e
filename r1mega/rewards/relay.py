"""Assert-style code tests with the comparison outside the candidate's process: two sandboxes and a relay.

The judge sandbox runs the (trusted) test code with the candidate's functions replaced by stubs; each stub call
becomes a request line that this relay, in the reward worker, passes to the candidate's sandbox, and the
candidate's tagged reply line goes back to the judge, which decodes it strictly to plain data. The verdicts come
from the judge's stdout only. The candidate sees function names and arguments, never the tests or expected
values; what it sends back is taken as the return value of the one call that is outstanding.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from r1mega.rewards.harness import JUDGE_SOURCE, SERVER_SOURCE
from r1mega.rewards.sandbox import ready, start_python, stop_python

GRACE_S = 1.0   # beyond test_timeout_s before a silent candidate is killed (its own alarm fires first)


class _Lines:
    """Tagged lines (``<token> ...``) from a process's stdout, read with deadlines and a byte budget."""

    def __init__(self, proc, token: str, budget: int):
        self.fd, self.prefix, self.budget = proc.stdout.fileno(), token + " ", budget
        self.buf, self.total, self.eof, self.over = b"", 0, False, False

    def next(self, deadline: float) -> Optional[str]:
        """The next tagged line (without the token), or None at EOF / deadline / over budget."""
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                if text.startswith(self.prefix):
                    return text[len(self.prefix):]
            left = deadline - time.monotonic()
            if self.eof or self.over or left <= 0 or not ready([self.fd], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            self.eof = not chunk
            self.total += len(chunk)
            self.over = self.total > self.budget
            self.buf += chunk


def _send(proc, text: str, deadline: float) -> bool:
    data = memoryview(text.encode("utf-8"))
    fd = proc.stdin.fileno()
    os.set_blocking(fd, False)
    try:
        while data:
            left = deadline - time.monotonic()
            if left <= 0 or not ready([], [fd], left)[1]:
                return False
            data = data[os.write(fd, data[:65536]):]
    except OSError:
        return False
    return True


def run_assert_tests(server_payload: dict, judge_payload: dict, *, python: str, backend: str, uid: int,
                     wall_timeout_s: float, test_timeout_s: float, max_output_bytes: int) -> dict:
    """Run the judge against the candidate; ``{'passed': set, 'status', 'wall_s', 'calls'}``."""
    t0 = time.monotonic()
    deadline = t0 + wall_timeout_s
    procs = []
    try:
        for src in (SERVER_SOURCE, JUDGE_SOURCE):
            procs.append(start_python(["-I", "-c", src], python=python, backend=backend, uid=uid))
    except Exception as e:
        for p in procs:
            stop_python(p)
        return {"passed": set(), "status": "error", "message": f"could not start: {type(e).__name__}: {e}"}
    server, judge = procs
    cand = _Lines(server, server_payload["token"], max_output_bytes)
    tests = _Lines(judge, judge_payload["token"], max_output_bytes)
    passed, status, calls, alive = set(), "incomplete", 0, True
    try:
        alive = _send(server, json.dumps(server_payload) + "\n", deadline)
        _send(judge, json.dumps(judge_payload) + "\n", deadline)
        ready = None
        while True:
            line = tests.next(deadline)
            if line is None:
                status = "timeout" if time.monotonic() >= deadline else \
                    ("output_limit" if tests.over else "incomplete")
                break
            kind, _, rest = line.partition(" ")
            if kind == "done":
                status = "ok"
                break
            if kind.isdigit() and rest == "pass":
                passed.add(int(kind))
            if kind != "call":
                continue
            calls += 1
            rid = json.loads(rest)["id"]
            if alive and ready is None:
                ready = cand.next(min(deadline, time.monotonic() + test_timeout_s + GRACE_S)) == "ready"
                alive = ready
            reply = None
            if alive:
                alive = _send(server, rest + "\n", deadline)
                call_deadline = min(deadline, time.monotonic() + test_timeout_s + GRACE_S)
                while alive:
                    got = cand.next(call_deadline)
                    if got is None:
                        alive = False
                    elif got.split(" ", 1)[0] == str(rid):
                        reply = got
                        break
            if cand.over:
                status = "output_limit"
                break
            if not _send(judge, (reply or f"{rid} dead") + "\n", deadline):
                break
    finally:
        for p in procs:
            stop_python(p)
    return {"passed": passed, "status": status, "wall_s": round(time.monotonic() - t0, 4), "calls": calls}


__all__ = ["run_assert_tests"]
