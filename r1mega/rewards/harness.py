"""Programs that run INSIDE sandboxes (their source goes to ``python -I -c``; they import nothing from r1mega,
:mod:`r1mega.rewards.plain` is pasted in front). Each reads a JSON payload line from stdin, sets rlimits, and
writes tagged lines ``\\n<token> ...\\n`` to stdout. None of them ever sees an expected value.

* :data:`SERVER_SOURCE`, the candidate's sandbox: exec the untrusted program (``__name__ == 'solution'``), say
  ``ready``, then answer call requests read one line at a time from a private copy of stdin (the program's own
  stdin is /dev/null): ``{"id", "fn", "args", "kwargs"}`` -> ``<id> ok <encoded value>`` or ``<id> err <Name>``.
  Each call has an alarm of ``test_timeout_s``. The program can take over this process; all it can then send is
  values for calls it was asked to make, which it could as well have returned.
* :data:`JUDGE_SOURCE`, the tests' sandbox (trusted code, a separate sandbox the candidate cannot reach): exec
  the prefix, the task's prompt (its helpers, e.g. HumanEval's ``poly``), the test prelude, then each step;
  the candidate's functions are stubs that write ``call <request>`` and read the reply (``<id> ...``) from
  stdin, decoding it strictly to plain data. Steps compare with ``__r1_eq__``/``__r1_in__`` (strict equality,
  inserted by :mod:`r1mega.rewards.code`). One verdict per test step: ``<index> pass|fail``, then ``done``.
* :data:`IO_SOURCE`: run the program as ``__main__`` per case in a child process with the case's input, and
  report ``out <index> <json {"exit", "out"}>``; the comparison with the expected output is done outside.
"""
from pathlib import Path

_PLAIN = Path(__file__).with_name("plain.py").read_text()

_PREAMBLE = r'''
import json, os, resource, signal, sys
_write = os.write
_in = open(os.dup(0), "rb")
_payload = json.loads(_in.readline().decode("utf-8"))
_token = _payload.pop("token")
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
'''

_SERVER = r'''
def _serve():
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        code = compile(_payload.pop("program"), "<solution>", "exec")
        _timed(lambda: exec(code, ns), _t)
    except BaseException:
        _say("load_failed")
        return
    _say("ready")
    while True:
        line = _in.readline()
        if not line:
            return
        rid = -1
        try:
            req = json.loads(line)
            rid = int(req["id"])
            fn = ns[req["fn"]]
            args, kwargs = decode(req["args"]), decode(req["kwargs"])
            value = _timed(lambda: fn(*args, **kwargs), _t)
            out = "ok " + dumps(value)
        except _Timeout:
            out = "err Timeout"
        except BaseException as e:
            out = "err " + type(e).__name__
        _say("%d %s" % (rid, out))
_serve()
sys.stdout.flush()
os._exit(0)
'''

_JUDGE = r'''
import builtins
_ids = [0]
class _CallFailed(BaseException):
    """No value came back (timeout, crash, unserialisable): the test fails, test code cannot catch it."""
class CandidateError(Exception):
    pass
def _exception(name):
    cls = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls("raised by the candidate")
    return CandidateError(name[:100])
def _remote(fn):
    def call(*args, **kwargs):
        _ids[0] += 1
        rid = _ids[0]
        _say("call " + json.dumps({"id": rid, "fn": fn, "args": encode(list(args)), "kwargs": encode(kwargs)}))
        while True:
            line = _in.readline().decode("utf-8", "replace")
            if not line:
                raise _CallFailed("no reply")
            got, _, rest = line.rstrip("\n").partition(" ")
            if got == str(rid):
                break
        kind, _, value = rest.partition(" ")
        if kind == "ok":
            try:
                return loads(value)
            except Unplain as e:
                raise _CallFailed(str(e))
        if kind == "err":
            raise _exception(value)
        raise _CallFailed(kind)
    call.__name__ = fn
    return call
def _judge():
    ns = {"__name__": "__tests__", "__builtins__": builtins, "__r1_eq__": same, "__r1_in__": contains}
    for part in ("prefix", "prompt", "prelude"):
        try:
            exec(compile(_payload.get(part) or "", "<%s>" % part, "exec"), ns)
        except BaseException:
            pass
    for name, fn in _payload["remote"].items():
        ns[name] = _remote(fn)
    for i, step in enumerate(_payload["steps"]):
        try:
            step_code = compile(step["src"], "<test %d>" % i, "exec")
            _timed(lambda: exec(step_code, ns), _t)
            ok = True
        except BaseException:
            ok = False
        if step["kind"] == "test":
            _say("%d %s" % (step["index"], "pass" if ok else "fail"))
_judge()
_say("done")
sys.stdout.flush()
os._exit(0)
'''

_IO = r'''
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
def _run_io():
    prog = compile(_payload.pop("program"), "<solution>", "exec")
    cap = int(_payload["case_output_bytes"])
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
                if total > cap:
                    break
                chunks.append(buf)
            return os.waitpid(pid, 0)[1]
        try:
            status = _timed(_talk, _t)
        except BaseException:
            status = -1
        if total > cap:
            status = -2
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
        out = b"".join(chunks).decode("utf-8", "replace")
        _say("out %d %s" % (case["index"], json.dumps({"exit": status, "out": out})))
_run_io()
_say("done")
sys.stdout.flush()
os._exit(0)
'''

SERVER_SOURCE = _PLAIN + _PREAMBLE + _SERVER
JUDGE_SOURCE = _PLAIN + _PREAMBLE + _JUDGE
IO_SOURCE = _PLAIN + _PREAMBLE + _IO
