"""Code accuracy: run the task's tests against the response's final ```python block in the sandbox.

reward = passed test cases / test cases. A task's tests (``gold`` / metadata of the sample) are one of:

* ``{"test": "<code defining check(candidate)>", "entry_point": "f"}`` (HumanEval): the ``check`` function is
  split by AST into one test case per top-level statement that contains an ``assert``; the other statements
  of its body (imports, assignments) are setup, run in order before the tests after them. Asserts whose
  condition is a constant (HumanEval's ``assert True, "This prints if this assert fails"``) are dropped: they
  would give free credit. Module-level test code (``METADATA``, helpers) runs first, in the test namespace.
  A loop of asserts is one test case.
* ``{"tests": ["assert f(1) == 2", ...], "setup": "..."}`` (MBPP-style): one test case per string.
* ``{"io": [{"input": "...", "output": "..."}, ...]}``: stdin/stdout cases, the program runs as ``__main__``.

Optional ``"prefix"``: trusted code put before the program (e.g. the imports of a HumanEval prompt).
If the program does not define ``entry_point`` but the spec has a ``"prompt"`` (a function header to
complete), the program is taken as the body: ``prompt + code``.
"""
from __future__ import annotations

import ast
import json
import secrets
from typing import Any, Optional

from r1mega.config.rewards import CodeRewardConfig
from r1mega.rewards.harness import HARNESS_SOURCE
from r1mega.rewards.sandbox import resolve_python, run_python, select_backend


def split_check(test_code: str, check_name: str = "check") -> tuple[str, list[dict]]:
    """(prelude source, steps) of HumanEval-style test code; see the module docstring."""
    tree = ast.parse(test_code)
    prelude, check = [], None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == check_name:
            check = node
        else:
            prelude.append(node)
    if check is None:
        raise ValueError(f"test code defines no {check_name}() function")
    arg = check.args.args[0].arg if check.args.args else "candidate"
    steps: list[dict] = []
    if arg != "candidate":
        steps.append({"kind": "setup", "src": f"{arg} = candidate"})
    n = 0
    for stmt in check.body:
        asserts = [a for a in ast.walk(stmt) if isinstance(a, ast.Assert)]
        if isinstance(stmt, ast.Expr) and isinstance(getattr(stmt, "value", None), ast.Constant):
            continue  # docstring
        if not asserts:
            steps.append({"kind": "setup", "src": ast.unparse(stmt)})
        elif isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant):
            continue  # assert True, "..."
        else:
            steps.append({"kind": "test", "src": ast.unparse(stmt), "index": n})
            n += 1
    return ast.unparse(ast.Module(body=prelude, type_ignores=[])), steps


def build_payload(code: str, spec: dict, cfg: CodeRewardConfig, pidns: bool) -> dict:
    """The JSON the harness reads: program, steps or io cases, limits and a fresh token."""
    entry = spec.get("entry_point")
    program = code
    if entry and spec.get("prompt") and not _defines(code, entry):
        program = spec["prompt"] + code
    if spec.get("prefix"):
        program = spec["prefix"].rstrip("\n") + "\n\n" + program
    payload: dict[str, Any] = {
        "token": secrets.token_hex(16), "program": program, "test_timeout_s": cfg.test_timeout_s, "pidns": pidns,
        "limits": {"cpu": int(cfg.cpu_time_s), "as": int(cfg.memory_mb) * 1024 * 1024,
                   "nproc": int(cfg.max_processes), "fsize": 16 * 1024 * 1024},
    }
    if "io" in spec:
        payload["mode"] = "io"
        payload["io"] = [{"input": str(c["input"]), "output": str(c["output"]), "index": i}
                         for i, c in enumerate(spec["io"])]
        payload["n_tests"] = len(payload["io"])
    elif "test" in spec:
        prelude, steps = split_check(spec["test"], spec.get("check_name", "check"))
        payload.update(mode="assert", entry_point=entry, prelude=prelude, steps=steps)
        payload["n_tests"] = sum(1 for s in steps if s["kind"] == "test")
    elif "tests" in spec:
        steps = [{"kind": "setup", "src": spec["setup"]}] if spec.get("setup") else []
        steps += [{"kind": "test", "src": t, "index": i} for i, t in enumerate(spec["tests"])]
        payload.update(mode="assert", entry_point=None, prelude="", steps=steps)
        payload["n_tests"] = len(spec["tests"])
    else:
        raise ValueError("code spec needs 'test' (+ 'entry_point'), 'tests' or 'io'")
    return payload


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
               for n in tree.body)


def parse_verdicts(output: bytes, token: str) -> tuple[set, set, bool]:
    """(passed indices, failed indices, saw 'done') from the harness output; other lines are ignored."""
    passed, failed, done = set(), set(), False
    prefix = token.encode() + b" "
    for line in output.split(b"\n"):
        if not line.startswith(prefix):
            continue
        rest = line[len(prefix):].strip().split()
        if rest == [b"done"]:
            done = True
        elif len(rest) == 2 and rest[0].isdigit():
            idx = int(rest[0])
            if rest[1] == b"pass" and idx not in failed:
                passed.add(idx)
            elif rest[1] == b"fail":
                failed.add(idx)
                passed.discard(idx)
    return passed, failed, done


def run_code_tests(code: Optional[str], spec: dict, cfg: CodeRewardConfig) -> dict:
    """Run the tests; ``{'reward', 'passed', 'total', 'status', 'backend'}``. Never raises for bad code."""
    if not code or not code.strip():
        return {"reward": 0.0, "passed": 0, "total": 0, "status": "no_code", "backend": ""}
    if len(code) > cfg.max_code_chars:
        return {"reward": 0.0, "passed": 0, "total": 0, "status": "too_long", "backend": ""}
    python = resolve_python(cfg.python)
    backend = select_backend(cfg.backend, python, cfg.sandbox_uid)
    payload = build_payload(code, spec, cfg, pidns=backend == "bwrap")
    total = payload.pop("n_tests")
    if total == 0:
        return {"reward": 0.0, "passed": 0, "total": 0, "status": "no_tests", "backend": backend}
    res = run_python(["-I", "-c", HARNESS_SOURCE], json.dumps(payload).encode(), python=python, backend=backend,
                     uid=cfg.sandbox_uid, wall_timeout_s=cfg.wall_timeout_s, max_output_bytes=cfg.max_output_bytes)
    if res.status in ("output_limit", "error"):
        return {"reward": 0.0, "passed": 0, "total": total, "status": res.status, "backend": backend,
                "message": res.message}
    passed, _, done = parse_verdicts(res.output, payload["token"])
    passed = {i for i in passed if 0 <= i < total}
    status = res.status if res.status != "ok" else ("ok" if done else "incomplete")
    return {"reward": len(passed) / total, "passed": len(passed), "total": total, "status": status,
            "backend": backend, "wall_s": round(res.wall_s, 4)}


__all__ = ["run_code_tests", "split_check", "build_payload", "parse_verdicts"]
