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

Assert-style tests run in a judge sandbox, apart from the program (:mod:`r1mega.rewards.relay`): the program's
functions are called through a relay and their return values come back as plain data
(:mod:`r1mega.rewards.plain`), compared by the test code with strict ``==`` (:func:`strict_source`). io cases
send the program's stdout back and are compared here (:func:`io_verdicts`). See docs/rewards.md.
"""
from __future__ import annotations

import ast
import builtins
import json
import secrets
from typing import Any, Optional

from r1mega.config.rewards import CodeRewardConfig
from r1mega.rewards.harness import IO_SOURCE
from r1mega.rewards.relay import run_assert_tests
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


class _Strict(ast.NodeTransformer):
    """``a == b`` -> ``__r1_eq__(a, b)``, ``a != b`` -> ``not __r1_eq__(a, b)``, ``in`` / ``not in`` alike
    (single comparisons; chains keep Python's operators)."""

    FUNCS = {ast.Eq: ("__r1_eq__", False), ast.NotEq: ("__r1_eq__", True),
             ast.In: ("__r1_in__", False), ast.NotIn: ("__r1_in__", True)}

    def visit_Compare(self, node):
        self.generic_visit(node)
        if len(node.ops) != 1 or type(node.ops[0]) not in self.FUNCS:
            return node
        name, negate = self.FUNCS[type(node.ops[0])]
        left, right = node.left, node.comparators[0]
        args = [right, left] if name == "__r1_in__" else [left, right]
        call = ast.Call(func=ast.Name(name, ast.Load()), args=args, keywords=[])
        return ast.UnaryOp(ast.Not(), call) if negate else call


def strict_source(src: str) -> str:
    """Test code with its equality / membership tests made strict (see :mod:`r1mega.rewards.plain`)."""
    return ast.unparse(ast.fix_missing_locations(_Strict().visit(ast.parse(src))))


def _names(src: str) -> tuple[set, set]:
    """(names read, names bound) anywhere in ``src``."""
    loads, binds = set(), set()
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else binds).add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            binds.add(n.name)
        elif isinstance(n, ast.arg):
            binds.add(n.arg)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            binds.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            binds.add(n.name)
    return loads, binds


def remote_names(trusted: list[str], tests: list[str], entry: Optional[str]) -> dict:
    """{name in the test code: candidate function it calls}: ``candidate`` and the entry point, plus every name
    the tests read that no trusted code binds and that is not a builtin (MBPP's ``assert f(1) == 2``)."""
    loads, binds = set(), set()
    for src in trusted + tests:
        try:
            r, b = _names(src)
        except SyntaxError:
            continue
        binds |= b
        if src in tests:
            loads |= r
    remote = {n: n for n in sorted(loads - binds) if not hasattr(builtins, n) and not n.startswith("__r1_")}
    if entry:
        remote.update({"candidate": entry, entry: entry})
    return remote


def build_payload(code: str, spec: dict, cfg: CodeRewardConfig, pidns: bool) -> dict:
    """What the sandboxes get: ``server`` (the program), ``judge`` (tests, for assert specs) or ``io`` (inputs
    only), plus ``n_tests`` and, for io, the expected outputs (kept here, never sent)."""
    entry = spec.get("entry_point")
    program = code
    if entry and spec.get("prompt") and not _defines(code, entry):
        program = spec["prompt"] + code
    if spec.get("prefix"):
        program = spec["prefix"].rstrip("\n") + "\n\n" + program
    base: dict[str, Any] = {
        "test_timeout_s": cfg.test_timeout_s, "pidns": pidns,
        "limits": {"cpu": int(cfg.cpu_time_s), "as": int(cfg.memory_mb) * 1024 * 1024,
                   "nproc": int(cfg.max_processes), "fsize": 16 * 1024 * 1024},
    }
    server = dict(base, token=secrets.token_hex(16), program=program)
    if "io" in spec:
        cases = [{"input": str(c["input"]), "index": i} for i, c in enumerate(spec["io"])]
        server.update(io=cases, case_output_bytes=cfg.max_output_bytes // (len(cases) + 2))
        return {"mode": "io", "server": server, "expected": [str(c["output"]) for c in spec["io"]],
                "n_tests": len(cases)}
    if "test" in spec:
        prelude, steps = split_check(spec["test"], spec.get("check_name", "check"))
    elif "tests" in spec:
        prelude, entry = "", None
        steps = [{"kind": "setup", "src": spec["setup"]}] if spec.get("setup") else []
        steps += [{"kind": "test", "src": t, "index": i} for i, t in enumerate(spec["tests"])]
    else:
        raise ValueError("code spec needs 'test' (+ 'entry_point'), 'tests' or 'io'")
    trusted = [spec.get("prefix") or "", spec.get("prompt") or "", prelude]
    trusted += [s["src"] for s in steps if s["kind"] == "setup"]
    remote = remote_names(trusted, [s["src"] for s in steps], entry)
    judge = dict(base, token=secrets.token_hex(16), prefix=spec.get("prefix") or "", prompt=spec.get("prompt") or "",
                 prelude=prelude, remote=remote, steps=[dict(s, src=strict_source(s["src"])) for s in steps])
    return {"mode": "assert", "server": server, "judge": judge,
            "n_tests": sum(1 for s in steps if s["kind"] == "test")}


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
               for n in tree.body)


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def io_verdicts(output: bytes, token: str, expected: list[str]) -> tuple[set, bool]:
    """(passed case indices, saw 'done') from the io harness's ``out`` records, compared here with ``expected``;
    a program that exited non-zero or printed too much fails its case. Other lines are ignored."""
    passed, seen, done = set(), set(), False
    prefix = token + " "
    for line in output.decode("utf-8", "replace").split("\n"):
        if not line.startswith(prefix):
            continue
        kind, _, rest = line[len(prefix):].partition(" ")
        if kind == "done":
            done = True
        idx, _, record = rest.partition(" ")
        if kind != "out" or not idx.isdigit() or int(idx) in seen or int(idx) >= len(expected):
            continue
        seen.add(int(idx))   # the first record of a case counts
        try:
            rec = json.loads(record)
            if rec.get("exit") == 0 and _norm(str(rec["out"])) == _norm(expected[int(idx)]):
                passed.add(int(idx))
        except (ValueError, KeyError, AttributeError):
            pass
    return passed, done


def run_code_tests(code: Optional[str], spec: dict, cfg: CodeRewardConfig) -> dict:
    """Run the tests; ``{'reward', 'passed', 'total', 'status', 'backend'}``. Never raises for bad code."""
    if not code or not code.strip():
        return {"reward": 0.0, "passed": 0, "total": 0, "status": "no_code", "backend": ""}
    if len(code) > cfg.max_code_chars:
        return {"reward": 0.0, "passed": 0, "total": 0, "status": "too_long", "backend": ""}
    python = resolve_python(cfg.python)
    backend = select_backend(cfg.backend, python, cfg.sandbox_uid)
    payload = build_payload(code, spec, cfg, pidns=backend == "bwrap")
    total = payload["n_tests"]
    if total == 0:
        return {"reward": 0.0, "passed": 0, "total": 0, "status": "no_tests", "backend": backend}
    kw = dict(python=python, backend=backend, uid=cfg.sandbox_uid, wall_timeout_s=cfg.wall_timeout_s,
              max_output_bytes=cfg.max_output_bytes)
    if payload["mode"] == "io":
        res = run_python(["-I", "-c", IO_SOURCE], (json.dumps(payload["server"]) + "\n").encode(), **kw)
        passed, done = io_verdicts(res.output, payload["server"]["token"], payload["expected"])
        status, wall = (res.status if res.status != "ok" else ("ok" if done else "incomplete")), res.wall_s
        message = res.message
    else:
        res = run_assert_tests(payload["server"], payload["judge"], test_timeout_s=cfg.test_timeout_s, **kw)
        passed, status, wall, message = res["passed"], res["status"], res.get("wall_s", 0.0), res.get("message", "")
    if status in ("output_limit", "error"):
        return {"reward": 0.0, "passed": 0, "total": total, "status": status, "backend": backend,
                "message": message}
    passed = {i for i in passed if 0 <= i < total}
    return {"reward": len(passed) / total, "passed": len(passed), "total": total, "status": status,
            "backend": backend, "wall_s": round(wall, 4)}


__all__ = ["run_code_tests", "split_check", "build_payload", "strict_source", "remote_names", "io_verdicts"]
