"""Megatron-Core's checkpoint writer server dies with the process that started it.

``dist_checkpointing``'s file writer collects the write results of its (forked) writer processes through a queue
of a ``multiprocessing`` Manager, started with ``spawn`` at the first save and kept for the life of the process
(``filesystem_async._get_write_results_queue``). A Manager's server process never watches its parent: after
``kill -9`` of a trainer it ran on forever (found by ``tests/pipeline/test_lifeline.py``). Here the same Manager
is started with :func:`r1mega.platform.lifeline.die_with_parent` as its initializer (run in the server process),
from the thread that saves. Any device.

The queue handed to Megatron survives that server's death (SIGKILL, found by ``tools/chaos.py``): r1mega's saves
are synchronous, so the writer puts its results and the saver takes them in the same process, and a result the
dead server cannot take is kept locally. Before, the rank whose server was gone raised a connection error in the
middle of the save while the other ranks had entered the save's next collective: a 2-process stage hung.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import queue

_applied = False
_GONE = (OSError, EOFError)  # what a proxy of a dead Manager raises (ConnectionRefusedError, BrokenPipeError, ...)


class _ResultsQueue:
    """The Manager's queue, with a local one behind it for what the Manager, gone, cannot take (put/get_nowait, the
    two calls Megatron makes)."""

    def __init__(self, remote):
        self.remote, self.local = remote, collections.deque()

    def put(self, item) -> None:
        try:
            self.remote.put(item)
        except _GONE:
            self.local.append(item)

    def get_nowait(self):
        if self.local:
            return self.local.popleft()
        try:
            return self.remote.get_nowait()
        except _GONE:  # nothing here and the Manager is gone: Megatron reports an empty queue as a failed save
            raise queue.Empty from None


def _results_queue():
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
    from multiprocessing.managers import SyncManager

    from r1mega.platform.lifeline import die_with_parent

    if fa._results_queue is None:
        manager = SyncManager(ctx=mp.get_context("spawn"))
        manager.start(initializer=die_with_parent)
        fa._results_queue = _ResultsQueue(manager.Queue())
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
