"""Programs that try to pass tests without computing the answers: each scores 0, the honest solution 1.0.

Every hostile program here computes the WRONG value (0 or nothing); it can only score by cheating. Before the
results were compared outside the sandbox (issue 20), always_equal, int_subclass, patch_exec, patch_harness,
forged_verdicts, expected_from_memory, expected_from_frame, helper_override and io_expected_from_memory scored > 0.
"""
from __future__ import annotations

import os
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


IO = {"io": [{"input": "2 3\n", "output": "5\n"}, {"input": "-1 4\n", "output": "3\n"}]}
IO_HOSTILE = {
    # the io harness used to keep the expected outputs (and its verdict token) in the memory the program forks from
    "expected_from_memory": """
        import __main__, sys
        line = sys.stdin.read()
        cases = getattr(__main__, "_payload", {}).get("io", [])
        print(next((c.get("output", "") for c in cases if c["input"] == line), "0"))
    """,
    "forged_verdicts": """
        import __main__, os
        tok = getattr(__main__, "_token", "")
        os.write(2, ("\\n" + "\\n".join("%s %d pass" % (tok, i) for i in range(5)) + "\\n").encode())
        # a forged output record is only a claim of what it printed: worth what printing it is worth (here 7)
        os.write(2, ("\\n%s out 0 {\\"exit\\": 0, \\"out\\": \\"7\\"}\\n" % tok).encode())
        os.kill(os.getppid(), 9)
    """,
}


@pytest.mark.parametrize("name", sorted(IO_HOSTILE))
def test_io_hostile_program_gains_nothing(bwrap_ok, name):
    assert _run("a, b = map(int, input().split())\nprint(a + b)\n", IO) == 1.0
    assert _run(IO_HOSTILE[name], IO) == 0.0


def test_prompt_helpers_come_from_the_task_not_the_answer(bwrap_ok):
    """HumanEval/32 checks find_zero(xs) with the prompt's poly(); an answer redefining poly gains nothing."""
    from r1mega.rewards.humaneval import humaneval_spec, load_humaneval

    spec = humaneval_spec(load_humaneval()[32])
    cheat = "def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0\n"
    assert _run(cheat, spec) == 0.0


def test_forged_replies_are_only_values(bwrap_ok):
    """A program that writes reply lines for every call id before being asked: they count as the values it
    returned (first reply per call), here True and 'pass', which equal nothing the tests expect."""
    forge = """
        import __main__, os
        tok = getattr(__main__, "_token", "")
        for rid in range(1, 30):
            os.write(1, ('\\n%s %d ok ["b",true]\\n%s %d ok ["s","pass"]\\n' % (tok, rid, tok, rid)).encode())
        def add(a, b):
            return 0
    """
    assert _run(forge, MBPP) == 0.0          # even add(-1, 1) == 0 fails: the forged True came first
    assert _run(forge, HUMANEVAL) == 0.0


@pytest.mark.parametrize("ret, test, expected", [
    ("True", "assert f(0) == 1", 0.0),                  # a bool is not an int ...
    ("True", "assert f(0) is True", 1.0),
    ("[1, True]", "assert f(0) == [1, 1]", 0.0),        # ... not inside containers either
    ("{True: 'a'}", "assert f(0) == {1: 'a'}", 0.0),
    ("(1, 2)", "assert f(0) == [1, 2]", 0.0),           # a tuple is not a list (as in Python)
    ("5.0", "assert f(0) == 5", 1.0),                   # int vs float: Python's ==
    ("True", "assert f(0) in [1, 2]", 0.0),
    ("True", "assert f(0) != 1", 1.0),
    ("x for x in [1]", "assert list(f(0)) == [1]", 0.0),  # a generator is not plain data
    ("{'a': [1, {2}]}", "assert f(0) == {'a': [1, {2}]}", 1.0),
])
def test_strict_type_rules(bwrap_ok, ret, test, expected):
    assert _run(f"def f(x):\n    return ({ret})\n", {"tests": [test]}) == expected


def test_candidate_exceptions_reach_the_tests_by_name(bwrap_ok):
    spec = {"tests": ["try:\n    f(-1)\nexcept ValueError:\n    pass\nelse:\n    assert False", "assert f(4) == 2"]}
    good = "def f(x):\n    if x < 0:\n        raise ValueError(x)\n    return int(x ** 0.5)\n"
    assert _run(good, spec) == 1.0
    assert _run("def f(x):\n    raise TypeError(x)\n", spec) == 0.0
    assert _run("import os\ndef f(x):\n    os._exit(0)\n", spec) == 0.0   # no reply: not catchable as ValueError


def test_scores_from_a_process_holding_over_1024_files(bwrap_ok):
    """A trainer (or a long test session) holds many files: the sandboxes' pipes then get fd numbers >= 1024,
    which select() refuses ('filedescriptor out of range'); the relay and the runner wait with poll()."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1200")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    base = os.open(os.devnull, os.O_RDONLY)
    held = [os.dup(base) for _ in range(1100)]
    try:
        assert max(held) >= 1024
        assert _run(HONEST, MBPP) == 1.0                  # assert tests: judge + candidate through the relay
        io = "a, b = map(int, input().split())\nprint(a + b)\n"
        assert run_code_tests(io, IO, CFG)["reward"] == 1.0     # stdin/stdout tests: one sandbox, run_python
    finally:
        for fd in held + [base]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
