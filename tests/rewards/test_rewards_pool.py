"""The worker pool survives stuck, crashing and failing calls in one run and keeps its size."""
from __future__ import annotations

import time

from r1mega.rewards.pool import Task, WorkerPool


def test_pool_survives_timeout_crash_and_error_in_one_run():
    with WorkerPool(num_workers=2, start_method="forkserver", worker_memory_mb=2048) as pool:
        tasks = [Task("sleep", (60,), 1.0), Task("crash", (), 5.0), Task("nope", (), 5.0),
                 Task("echo", ({"a": [1, 2]},), 5.0), Task("sleep", (0.1,), 5.0)]
        t = time.monotonic()
        out = pool.run(tasks)
        assert time.monotonic() - t < 15
        assert [o.status for o in out] == ["timeout", "crashed", "error", "ok", "ok"]
        assert "KeyError" in out[2].error and out[3].value == {"a": [1, 2]}
        assert pool.stats.timeouts == 1 and pool.stats.crashes == 1 and pool.stats.restarts == 2
        pids = [w.proc.pid for w in pool._workers]
        assert len(pids) == 2 and all(w.proc.is_alive() for w in pool._workers)
        # the replaced workers do real work
        assert pool.run([Task("math", ("1", "1", 1, 15, "AB", None), 5.0)])[0].value == 1.0
    assert pool._workers == []


def test_pool_started_in_the_background_before_the_first_run():
    """``start(background=True)`` (a stage's set-up) starts the workers in a thread: they are up without any
    run, a run meanwhile waits for them, and a pool closed before its start finished stays closed."""
    with WorkerPool(num_workers=2, start_method="forkserver", worker_memory_mb=2048) as pool:
        pool.start(background=True)
        deadline = time.monotonic() + 60
        while len(pool._workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool._workers) == 2 and all(w.proc.is_alive() for w in pool._workers)
        pids = [w.proc.pid for w in pool._workers]
        assert pool.run([Task("echo", (7,), 30.0)])[0].value == 7
        assert [w.proc.pid for w in pool._workers] == pids  # the run used the started workers
    closed = WorkerPool(num_workers=1, start_method="forkserver")
    closed.close()
    closed.start()  # no error, no workers
    assert closed._workers == []
    # closed while its background start is still spawning (a stage failing during set-up): no worker outlives it
    racing = WorkerPool(num_workers=2, start_method="forkserver", worker_memory_mb=2048)
    racing.start(background=True)
    spawned = racing._workers  # the list the start appends to (close() then replaces it)
    racing.close()
    assert not racing._starter.is_alive() and racing._workers == []
    assert len(spawned) == 2 and all(not w.proc.is_alive() for w in spawned)
