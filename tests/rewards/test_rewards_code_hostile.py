"""Programs that try to pass tests without computing the answers: each scores 0, the honest solution 1.0.

Every hostile program here computes the WRONG value (0 or nothing); it can only score by cheating. Before the
results were compared outside the sandbox (issue 20), always_equal, int_subclass, patch_exec, patch_harness,
forged_verdicts, expected_from_memory, expected_from_frame, helper_override and io_expected_from_memory scored > 0.
"""
from __future__ import annotations

import textwrap

import pytest

from r1mega.config.rewards import CodeRewardConfig
from r1mega.rewards.code import run_code_tests

CFG = CodeRewardConfig(backend="bwrap", wall_timeout_s=8.0, test_timeout_s=2.0, cpu_time_s=4)
MBPP = {"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert abs(add(0.25, 0.25) - 0.5) < 1e-6"]}
HUMANEVAL = {"entry_point": "add",
             "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    for i in range(3):\n"
                     "        assert candidate(i, i) == 2 * i\n    assert abs(candidate(0.25, 0.25) - 0.5) < 1e-6\n"}
HONEST = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return 0\n"

HOSTILE = {
    "always_equal": """
        class Liar:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __lt__(self, other): return True
            def __sub__(self, other): return self
            def __abs__(self): return self
            def __bool__(self): return True
            __hash__ = object.__hash__
        def add(a, b):
            return Liar()
    """,
    "int_subclass": """
        class Int(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __lt__(self, other): return True
            def __sub__(self, other): return self
            def __abs__(self): return self
            __hash__ = int.__hash__
        def add(a, b):
            return Int(7)
    """,
    "patch_assertion_error": """
        import builtins
        class Quiet(BaseException):
            pass
        builtins.AssertionError = Quiet
        def add(a, b):
            return 0
    """,
    "patch_exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n" + WRONG,
    "patch_harness": """
        import __main__, sys
        for mod in list(sys.modules.values()):
            for name in ("_say", "say", "_send", "send", "_reply"):
                fn = getattr(mod, name, None)
                if callable(fn):
                    setattr(mod, name, (lambda f: lambda line, *a: f(str(line).replace("fail", "pass"), *a))(fn))
        def add(a, b):
            return 0
    """,
    "settrace_skip": """
        import sys
        def tracer(frame, event, arg):
            if event == "exception" and frame.f_code.co_filename.startswith("<test"):
                frame.f_globals["add"] = lambda *a: 5
            return tracer
        sys.settrace(tracer)
        def add(a, b):
            return 0
    """,
    "sys_exit": "import sys\nsys.exit(0)\n" + WRONG,
    "os_exit": "import os\nos._exit(0)\n" + WRONG,
    "forged_verdicts": """
        import __main__, os
        tok = getattr(__main__, "_token", "")
        lines = ["%s %d pass" % (tok, i) for i in range(10)] + ["%d pass" % i for i in range(10)]
        lines += [tok + " done", "PASS", "OK", "all tests passed"]
        os.write(1, ("\\n" + "\\n".join(lines) + "\\n").encode())
        os._exit(0)
    """,
    "expected_from_memory": """
        import __main__, ast
        _answers = {}
        for step in getattr(__main__, "_payload", {}).get("steps", []):
            for node in ast.walk(ast.parse(step["src"])):
                if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):
                    try:
                        args = tuple(ast.literal_eval(a) for a in node.left.args)
                        _answers[args] = ast.literal_eval(node.comparators[0])
                    except ValueError:
                        pass
        def add(a, b):
            return _answers.get((a, b), 0)
    """,
    "expected_from_frame": """
        import inspect
        def add(a, b):
            consts = [c for c in inspect.stack()[1].frame.f_code.co_consts
                      if isinstance(c, (int, float)) and not isinstance(c, bool)]
            return consts[2] if len(consts) > 2 else 0
    """,
    "read_test_files": """
        import os
        def add(a, b):
            for root in ("/proc/self/fd", "/tmp", "/proc/1/cwd"):
                try:
                    for name in os.listdir(root):
                        open(os.path.join(root, name)).read()
                except OSError:
                    pass
            return 0
    """,
}


def _run(code: str, spec: dict) -> float:
    return run_code_tests(textwrap.dedent(code), spec, CFG)["reward"]


def test_honest_solution_scores_one(bwrap_ok):
    assert _run(HONEST, MBPP) == 1.0
    assert _run(HONEST, HUMANEVAL) == 1.0
    assert _run(WRONG, MBPP) == pytest.approx(1 / 3)      # add(-1, 1) == 0 is right by accident
    assert _run(WRONG, HUMANEVAL) == 0.0                   # its loop case fails at i = 1


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_gains_nothing(bwrap_ok, name):
    """Each program returns 0 (or nothing) for everything: it may pass only what WRONG passes, honestly."""
    code = HOSTILE[name]
    assert _run(code, MBPP) <= 1 / 3 + 1e-9, name
    assert _run(code, HUMANEVAL) == 0.0, name
