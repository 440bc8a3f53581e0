"""The run coordinator's node threads, and how it takes the outcomes they deliver.

A running node occupies one thread; its outcome goes to the coordinator's
outbox, which the coordinator drains in one go
(:func:`pylo.workers._runner.take_all`, as the engine drains its lanes) at each
wake. The threads are the process's, shared by the runs going on at once:
a thread left idle by one node takes the next node at once (of its run or
another), where starting a thread costs a run of one node (a batch node) a
good part of what it adds to its execution.

When the last run using them ends, its coordinator wakes the idle threads
and joins them before ``run_pipeline`` returns, so no thread of pylo's
outlives the runs (a process that forks next is single-threaded again).
A thread still in a node then (an interrupted run does not wait for a
stuck task) ends once that node ends and no other node comes within
:data:`IDLE_SECONDS`.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from pylo.pipeline._executors import Outcome

__all__ = ["IDLE_SECONDS", "JOIN_SECONDS", "NodeThreads"]

logger = logging.getLogger(__name__)

#: How long a node thread waits for another node before it ends.
IDLE_SECONDS = 2.0
#: How long the end of the last run waits for each idle thread to end (they are woken: at once, unless stalled).
JOIN_SECONDS = 5.0

_Job = tuple[Callable[..., Outcome], Callable[[Any], None], tuple[Any, ...]]

#: Jobs, and None for "end": a thread takes whichever comes first.
_jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
#: Threads that took an "end", for the run that sent it to join.
_ended: queue.SimpleQueue[threading.Thread] = queue.SimpleQueue()
_lock = threading.Lock()
_idle = 0  # waiting threads no job is promised to yet
_made = 0
_users = 0  # NodeThreads that have submitted a node and not stopped


def _loop() -> None:
    global _idle
    while True:
        try:
            taken = _jobs.get(timeout=IDLE_SECONDS)
        except queue.Empty:
            with _lock:
                if _idle > 0:  # no job is promised to this thread: it may end
                    _idle -= 1
                    return
            continue  # a job was promised meanwhile: take it
        if taken is None:  # the last run ended: its coordinator joins this thread
            _ended.put(threading.current_thread())
            return
        work, deliver, job = taken
        # A fresh context per node, as a thread of its own would give: nothing one node sets reaches the next.
        outcome = contextvars.Context().run(work, *job)
        with _lock:
            _idle += 1  # before delivering: the coordinator may submit at once
        deliver((job[0], outcome))


def _end_idle_threads() -> None:
    """Wake every idle node thread with an "end" and join the threads that take one."""
    global _idle
    with _lock:
        if _users:
            return  # a run that started meanwhile uses them
        count, _idle = _idle, 0  # promised an end each, as a job is promised
    for _ in range(count):
        _jobs.put(None)
    me = threading.current_thread()
    for _ in range(count):
        try:
            thread = _ended.get(timeout=JOIN_SECONDS)
        except queue.Empty:
            logger.debug("a pipeline node thread did not end within %s s of its wake-up", JOIN_SECONDS)
            return
        if thread is not me:
            thread.join(JOIN_SECONDS)


class NodeThreads:
    """Runs started nodes on the process's node threads (made as needed); cheaper than an executor.

    Each job's outcome goes to ``deliver``. The coordinator never starts
    more than ``size`` nodes at once, so a run holds at most ``size``
    threads. Threads are daemons: an interrupted run does not wait for a node
    stuck in its task. :meth:`stop` at the run's end releases them.
    """

    def __init__(self, size: int, work: Callable[..., Outcome], deliver: Callable[[Any], None]) -> None:
        self._size = size
        self._work = work
        self._deliver = deliver
        self._using = False

    def submit(self, job: tuple[Any, ...]) -> None:
        global _idle, _made, _users
        with _lock:
            if not self._using:
                self._using = True
                _users += 1
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
        """The run ended: when no other run uses the node threads, end the idle ones and join them.

        A run inside a node of another (a child run) leaves them to the
        outer run. Threads still in a node are not waited for.
        """
        global _users
        with _lock:
            if not self._using:
                return
            self._using = False
            _users -= 1
            if _users:
                return
        _end_idle_threads()
