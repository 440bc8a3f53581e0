"""Thread lanes: one daemon thread per lane, each with its own inbox.

Right for I/O-bound tasks (network calls, disk, subprocesses) and for tasks
that release the GIL. Lanes are daemon threads so that a task stuck forever
can be abandoned instead of keeping the process alive.

Each lane's thread calls the ``initializer`` (if any) before it takes its
first chunk; a thread whose initializer raised answers its chunks without
running them, and the first such failure goes to the coordinator.

Timeouts: a thread cannot be killed. With ``timeout`` set, a watchdog
thread checks each lane's current input; one that runs too long is failed
with ``TaskTimeout``, its thread is abandoned (left to finish or hang on its
own, its outcome ignored) and a fresh thread takes over the lane's inbox.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pylo._ratelimit import TokenBucket
from pylo.workers._initializer import run_initializer
from pylo.workers._runner import Abandoned, FailureGate, LaneRunner, LocalLanes
from pylo.workers.base import ChunkResult, LocalBackend, RunnerSettings

__all__ = ["ThreadBackend", "ThreadLanes"]

logger = logging.getLogger(__name__)

_STOP = None
_Inbox = queue.SimpleQueue[tuple[int, Sequence[Any], int] | None]


class ThreadLanes(LocalLanes):
    """One execution's lanes: a thread and an inbox each."""

    # Two chunks queued per lane hide the hop back to the coordinator.
    prefetch = 2

    def __init__(self, join_timeout: float) -> None:
        super().__init__(join_timeout)
        self._threads: list[threading.Thread] = []
        self._inboxes: list[_Inbox] = []
        self._runners: list[LaneRunner] = []
        self._watchdog_done = threading.Event()
        self._make_runner: Callable[[int], LaneRunner] | None = None
        self._settings = RunnerSettings()

    def start(self, function: Callable[[Any], Any], lanes: int, settings: RunnerSettings) -> None:
        self._settings = settings
        gate = None
        if settings.max_failures is not None:
            gate = FailureGate(settings.max_failures, self._stop, _Count(), threading.Lock())
        limiter = None
        if settings.rate_limit is not None:
            limiter = TokenBucket(settings.rate_limit, 1.0, TokenBucket.initial_state(1.0), threading.Lock())
        watched = settings.timeout is not None

        def make_runner(lane: int) -> LaneRunner:
            return LaneRunner(function, lane, settings, self._stop, gate, limiter, watched=watched)

        self._make_runner = make_runner
        for lane in range(lanes):
            self._inboxes.append(queue.SimpleQueue())
            self._runners.append(make_runner(lane))
            self._threads.append(self._start_lane(lane))
        if settings.timeout is not None:
            watchdog = threading.Thread(target=self._watch, args=(settings.timeout,), name="pylo-watchdog", daemon=True)
            watchdog.start()

    def _start_lane(self, lane: int) -> threading.Thread:
        thread = threading.Thread(
            target=self._lane_main,
            args=(lane, self._runners[lane], self._inboxes[lane]),
            name=f"pylo-lane-{lane}",
            daemon=True,
        )
        thread.start()
        return thread

    def _lane_main(self, lane: int, runner: LaneRunner, inbox: _Inbox) -> None:
        outbox = self._outbox
        settings = self._settings
        failed = run_initializer(settings.initializer, settings.initargs, f"worker {lane} (a thread)")
        if failed is not None:
            self.report_setup_failure(failed)
        while True:
            message = inbox.get()
            if message is _STOP:
                return
            chunk_id, inputs, budget = message
            if failed is not None:  # this thread cannot run inputs: they stay pending
                outbox.put(ChunkResult(chunk_id, lane, 0, (), (), None, 0.0))
                continue
            try:
                outbox.put(runner.run(chunk_id, inputs, budget))
            except Abandoned:
                return  # a watchdog reported this chunk and gave the lane to a new thread
            except BaseException as exc:  # a bug in pylo itself: hand it to the coordinator
                outbox.put(exc)
                return

    def _watch(self, timeout: float) -> None:
        interval = min(0.1, timeout / 4)
        while not self._watchdog_done.wait(interval):
            now = time.monotonic()
            for lane, runner in enumerate(self._runners):
                result = runner.abandon_if_stuck(timeout, now)
                if result is None:
                    continue
                logger.warning(
                    "worker %d: a task ran past its timeout of %g s; its thread is abandoned and replaced",
                    lane,
                    timeout,
                )
                assert self._make_runner is not None
                self._runners[lane] = self._make_runner(lane)
                self._outbox.put(result)
                if not self._stop.is_set():
                    self._threads[lane] = self._start_lane(lane)

    def submit(self, lane: int, chunk_id: int, inputs: Sequence[Any], budget: int) -> None:
        self._inboxes[lane].put((chunk_id, inputs, budget))

    def shutdown(self, wait: bool) -> None:
        self._stop.set()
        self._watchdog_done.set()
        for inbox in self._inboxes:
            inbox.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join(self._join_timeout)
        self._threads.clear()


class ThreadBackend(LocalBackend):
    """Runs each lane in its own thread of this process (``join_timeout``: see LocalBackend)."""

    name = "threads"
    lanes_class = ThreadLanes


class _Count:
    """A plain mutable counter, shaped like ``multiprocessing.Value``."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0
