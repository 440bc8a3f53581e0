"""The run coordinator's node threads, and how it takes the outcomes they deliver.

A running node occupies one thread; its outcome goes to the coordinator's
outbox, which the coordinator drains in one go
(:func:`pylo.workers._runner.take_all`, as the engine drains its lanes) at each
wake. The threads are the process's, shared by its runs: a thread left idle
by one run takes the next run's node at once, where starting a thread costs
a run of one node (a batch node) a good part of what it adds to its
execution. A thread idle for :data:`IDLE_SECONDS` ends.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

from pylo.pipeline._executors import Outcome

__all__ = ["IDLE_SECONDS", "NodeThreads"]

#: How long a node thread waits for another node before it ends.
IDLE_SECONDS = 2.0

_Job = tuple[Callable[..., Outcome], Callable[[Any], None], tuple[Any, ...]]

_jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
_lock = threading.Lock()
_idle = 0  # waiting threads no job is promised to yet
_made = 0


def _loop() -> None:
    global _idle
    while True:
        try:
            work, deliver, job = _jobs.get(timeout=IDLE_SECONDS)
        except queue.Empty:
            with _lock:
                if _idle > 0:  # no job is promised to this thread: it may end
                    _idle -= 1
                    return
            continue  # a job was promised meanwhile: take it
        # A fresh context per node, as a thread of its own would give: nothing one node sets reaches the next.
        outcome = contextvars.Context().run(work, *job)
        with _lock:
            _idle += 1  # before delivering: the coordinator may submit at once
        deliver((job[0], outcome))


class NodeThreads:
    """Runs started nodes on the process's node threads (made as needed); cheaper than an executor.

    Each job's outcome goes to ``deliver``. The coordinator never starts
    more than ``size`` nodes at once, so a run holds at most ``size``
    threads. Threads are daemons: an interrupted run does not wait for a node
    stuck in its task.
    """

    def __init__(self, size: int, work: Callable[..., Outcome], deliver: Callable[[Any], None]) -> None:
        self._size = size
        self._work = work
        self._deliver = deliver

    def submit(self, job: tuple[Any, ...]) -> None:
        global _idle, _made
        with _lock:
            grow = _idle <= 0
            if grow:
                _made += 1
                name = f"pylo-node-{_made}"
            else:
                _idle -= 1
        if grow:
            threading.Thread(target=_loop, name=name, daemon=True).start()
        _jobs.put((self._work, self._deliver, job))

    def stop(self) -> None:
        """Nothing to do: each thread goes back to wait for other nodes once its current node ends."""
