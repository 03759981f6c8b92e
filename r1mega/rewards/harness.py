"""Test harness that runs INSIDE the sandbox (its source is passed to ``python -c``; it imports nothing from
r1mega). It reads one JSON payload from stdin, sets the resource limits, then runs the untrusted program and
its tests, writing one line per verdict to fd 1: ``<token> <index> pass|fail``, then ``<token> done``.

The token is random per run and arrives on stdin, which is read to the end before untrusted code runs, so a
program that prints fake verdicts (or exits early) gains nothing: missing verdicts count as failures.

Modes:
* ``assert``: exec the program (``__name__ != '__main__'``), then the test steps in order: ``setup`` steps
  (imports, helper assignments) are executed, each ``test`` step is one verdict; every step has an alarm of
  ``test_timeout_s``. With ``entry_point``, test code sees ``candidate`` = the program's function, in a copy of the
  program's namespace (HumanEval tests call prompt helpers such as ``poly`` by name); without, tests run in the program's namespace (MBPP-style asserts naming the function).
* ``io``: for each case run the program as ``__main__`` in a child process with the case's input on stdin;
  the verdict compares stdout with the expected output (whitespace-normalised per line). Tests see a snapshot of the builtins taken before the
  program ran (a program replacing ``builtins.abs`` does not change what the asserts call). After each case every
  other process in the sandbox is killed (pid namespace only), so a leftover child cannot tamper with the next.
"""

HARNESS_SOURCE = r'''
import json, os, resource, signal, sys
_write = os.write
_payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
_token = _payload["token"]
_lim = _payload["limits"]
def _set(res, value):
    try:
        resource.setrlimit(res, (value, value))
    except (ValueError, OSError):
        pass
_set(resource.RLIMIT_CORE, 0)
_set(resource.RLIMIT_FSIZE, _lim["fsize"])
_set(resource.RLIMIT_NOFILE, 256)
try:
    resource.setrlimit(resource.RLIMIT_CPU, (_lim["cpu"], _lim["cpu"] + 1))
except (ValueError, OSError):
    pass
_set(resource.RLIMIT_AS, _lim["as"])
_set(resource.RLIMIT_NPROC, _lim["nproc"])
import builtins
_builtins = dict(builtins.__dict__)  # tests see these originals even if the program patches builtins
_devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(_devnull, 0)
sys.setrecursionlimit(10000)
def _say(line):
    try:
        _write(1, ("\n%s %s\n" % (_token, line)).encode())
    except OSError:
        pass
class _Timeout(BaseException):
    pass
def _alarm(signum, frame):
    raise _Timeout()
signal.signal(signal.SIGALRM, _alarm)
def _timed(fn, seconds):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
_t = float(_payload["test_timeout_s"])
def _sweep():
    if not _payload.get("pidns"):
        return
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (me, 1):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
def _norm(text):
    return "\n".join(line.rstrip() for line in text.strip().splitlines())
def _run_assert():
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    code = compile(_payload["program"], "<solution>", "exec")
    try:
        _timed(lambda: exec(code, ns), _t)
    except BaseException:
        return
    entry = _payload.get("entry_point")
    if entry:
        if not callable(ns.get(entry)):
            return
        tns = dict(ns)  # HumanEval tests may call the prompt's helpers (poly, encode_cyclic) by name
        tns["__builtins__"] = dict(_builtins)
        try:
            exec(compile(_payload.get("prelude", ""), "<tests>", "exec"), tns)
        except BaseException:
            pass
        tns["candidate"] = ns[entry]
    else:
        tns = ns
        tns["__builtins__"] = dict(_builtins)
    for i, step in enumerate(_payload["steps"]):
        try:
            step_code = compile(step["src"], "<test %d>" % i, "exec")
            _timed(lambda: exec(step_code, tns), _t)
            ok = True
        except BaseException:
            ok = False
        if step["kind"] == "test":
            _say("%d %s" % (step["index"], "pass" if ok else "fail"))
def _run_io():
    prog = compile(_payload["program"], "<solution>", "exec")
    for case in _payload["io"]:
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)
                os.close(w_in)
                os.close(r_out)
                os.dup2(r_in, 0)
                os.dup2(w_out, 1)
                sys.stdin = open(0, "r", closefd=False)
                sys.stdout = open(1, "w", closefd=False)
                exec(prog, {"__name__": "__main__", "__builtins__": __builtins__})
                sys.stdout.flush()
            except BaseException:
                os._exit(1)
            os._exit(0)
        os.close(r_in)
        os.close(w_out)
        data = case["input"].encode()
        chunks = []
        total = 0
        def _talk():
            nonlocal total
            try:
                os.write(w_in, data)
            except OSError:
                pass
            os.close(w_in)
            while True:
                buf = os.read(r_out, 65536)
                if not buf:
                    break
                total += len(buf)
                if total > _lim["fsize"]:
                    break
                chunks.append(buf)
            return os.waitpid(pid, 0)[1]
        try:
            status = _timed(_talk, _t)
            ok = status == 0 and total <= _lim["fsize"] and \
                _norm(b"".join(chunks).decode("utf-8", "replace")) == _norm(case["output"])
        except BaseException:
            ok = False
        for fd in (w_in, r_out):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
        _sweep()
        _say("%d %s" % (case["index"], "pass" if ok else "fail"))
if _payload["mode"] == "io":
    _run_io()
else:
    _run_assert()
_say("done")
sys.stdout.flush()
os._exit(0)
'''
