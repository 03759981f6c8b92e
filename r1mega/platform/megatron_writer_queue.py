"""Megatron-Core's checkpoint writer server dies with the process that started it.

``dist_checkpointing``'s file writer collects the write results of its (forked) writer processes through a queue
of a ``multiprocessing`` Manager, started with ``spawn`` at the first save and kept for the life of the process
(``filesystem_async._get_write_results_queue``). A Manager's server process never watches its parent: after
``kill -9`` of a trainer it ran on forever (found by ``tests/pipeline/test_lifeline.py``). Here the same Manager
is started with :func:`r1mega.platform.lifeline.die_with_parent` as its initializer (run in the server process),
from the thread that saves; the queue is the same kind of object. Any device.
"""
from __future__ import annotations

import multiprocessing as mp

_applied = False


def _results_queue():
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
    from multiprocessing.managers import SyncManager

    from r1mega.platform.lifeline import die_with_parent

    if fa._results_queue is None:
        manager = SyncManager(ctx=mp.get_context("spawn"))
        manager.start(initializer=die_with_parent)
        fa._results_queue = manager.Queue()
        fa._results_queue_manager = manager  # keep it referenced: its finalizer shuts the server down
    return fa._results_queue


def apply() -> None:
    global _applied
    if _applied:
        return
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa

    if callable(getattr(fa, "_get_write_results_queue", None)) and hasattr(fa, "_results_queue"):
        fa._get_write_results_queue = _results_queue
    _applied = True
