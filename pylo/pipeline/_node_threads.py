"""The run coordinator's node threads, and how it takes the outcomes they deliver.

A running node occupies one of at most ``max_parallel`` threads (made as
needed); its outcome goes to the coordinator's outbox, which the
coordinator drains in one go (:func:`take_all`) at each wake.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from pylo.pipeline._executors import Outcome

__all__ = ["NodeThreads", "take_all"]


class NodeThreads:
    """At most ``size`` threads running started nodes, made as needed; cheaper than an executor.

    Each job's outcome goes to ``deliver``. Threads are daemons: an
    interrupted run does not wait for a node stuck in its task.
    """

    def __init__(self, size: int, work: Callable[..., Outcome], deliver: Callable[[Any], None]) -> None:
        self._size = size
        self._work = work
        self._deliver = deliver
        self._inbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, job: tuple[Any, ...]) -> None:
        with self._lock:
            grow = self._idle <= 0 and len(self._threads) < self._size
            if not grow:
                self._idle -= 1
        if grow:
            thread = threading.Thread(target=self._loop, name=f"pylo-node-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._inbox.put(job)

    def _loop(self) -> None:
        while True:
            job = self._inbox.get()
            if job is None:
                return
            outcome = self._work(*job)
            with self._lock:
                self._idle += 1  # before delivering: the coordinator may submit at once
            self._deliver((job[0], outcome))

    def stop(self) -> None:
        """Let every thread end once its current node ends; do not wait for them."""
        for _ in self._threads:
            self._inbox.put(None)


def take_all(outbox: queue.SimpleQueue[tuple[int, Outcome]], timeout: float) -> list[tuple[int, Outcome]]:
    """Wait up to ``timeout`` seconds for one outcome, then take every waiting one."""
    try:
        first = outbox.get(timeout=timeout) if timeout > 0 else outbox.get_nowait()
    except queue.Empty:
        return []
    found = [first]
    while True:
        try:
            found.append(outbox.get_nowait())
        except queue.Empty:
            return found
