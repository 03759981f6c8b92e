"""The reward worker process: its main loop and the functions it may run.

A worker only runs functions named in :data:`FUNCTIONS` (no pickled callables), one at a time, and answers
``(task_id, ok, value_or_error)``. It ignores SIGINT (Ctrl-C belongs to the trainer), caps its address space
(RLIMIT_AS) so a blow-up fails the call rather than the machine, and exits when its pipe closes. When the process
that owns the pool dies (even by ``kill -9``, even in the middle of a call), the worker kills the sandboxes it
runs and itself (its lifeline, :mod:`r1mega.platform.lifeline`).
"""
from __future__ import annotations

import importlib
import os
import signal
import time

# Imported by the forkserver once (and by each worker before it says 'ready'), so replacements start fast
# and no import time is charged to a call's timeout. A module's ``_worker_warmup()`` (if any) runs too.
PRELOAD = ("math_verify", "r1mega.rewards.math_accuracy", "r1mega.rewards.language", "r1mega.rewards.code",
           "r1mega.rewards.sandbox")


def _math(pred, gold, verify_timeout_s, numeric_precision, mcq_letters, choices):
    from r1mega.rewards.math_accuracy import math_accuracy

    return math_accuracy(pred, gold, verify_timeout_s, numeric_precision, mcq_letters, choices)


def _language(response, cfg_dict, think_prefilled):
    from r1mega.config.rewards import LanguageRewardConfig
    from r1mega.rewards.language import language_consistency

    return language_consistency(response, LanguageRewardConfig(**cfg_dict), think_prefilled)


def _code(code, spec, cfg_dict):
    from r1mega.config.rewards import CodeRewardConfig
    from r1mega.rewards.code import run_code_tests

    return run_code_tests(code, spec, CodeRewardConfig(**cfg_dict))


def _gym(task, answer, entry):
    from r1mega.rewards.gym import gym_score_in_worker

    return gym_score_in_worker(task, answer, entry)


def _echo(x):
    return x


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


def _crash():
    os._exit(3)


FUNCTIONS = {"math": _math, "language": _language, "code": _code, "gym": _gym,
             "echo": _echo, "sleep": _sleep, "crash": _crash}


def _prctl_setup() -> None:
    """Die with the parent (a stuck worker must not outlive the pool), and adopt orphaned descendants (sandbox
    leftovers in the rlimit fallback) so they are reaped here instead of piling up as zombies. Linux only."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def worker_main(conn, index: int, memory_mb: int, preload: tuple, lifeline=None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _prctl_setup()
    if lifeline is not None:
        from r1mega.platform.lifeline import hold
        from r1mega.rewards.sandbox import kill_running

        hold(lifeline, f"reward worker {index}", cleanup=kill_running)
    os.environ["R1MEGA_REWARD_WORKER"] = str(index)
    if memory_mb:
        import resource

        limit = memory_mb * 1024 * 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass
    for name in preload:
        try:
            mod = importlib.import_module(name)
            warm = getattr(mod, "_worker_warmup", None)
            if callable(warm):
                warm()
        except Exception:
            pass
    try:
        conn.send(("ready", index))
    except (OSError, EOFError):
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        task_id, fn, args = msg
        try:
            out = (task_id, True, FUNCTIONS[fn](*args))
        except BaseException as e:  # noqa: BLE001 - everything becomes a counted error, never a dead worker
            out = (task_id, False, f"{type(e).__name__}: {e}"[:1000])
        try:
            conn.send(out)
        except Exception as e:  # unpicklable result
            try:
                conn.send((task_id, False, f"result not sendable: {type(e).__name__}: {e}"[:1000]))
            except (OSError, EOFError):
                return
