"""Asyncio lanes: ``async def`` tasks on one event loop, in a thread of its own.

Right for I/O-bound work with many requests in flight (HTTP clients, database
drivers, anything awaitable): ``concurrency`` lanes are ``concurrency``
coroutines, each awaiting one input at a time, so at most ``concurrency``
tasks are in flight, for the cost of a coroutine each rather than a thread.

The loop runs in a daemon thread the backend owns; the coordinator stays in
the caller's thread. So a caller that is itself inside an event loop (a
notebook cell, a coroutine calling through ``asyncio.to_thread``) works: the
two loops never meet. How chunks flow::

    coordinator thread                      loop thread "pylo-asyncio"
    ──────────────────                      ──────────────────────────
    submit(lane, chunk) ──► handoff list ──► _deliver ──► inbox[lane] (asyncio.Queue)
      (one call_soon_threadsafe wakes the                  │
       loop per burst of submits)                          ▼
                                            lane coroutine "pylo-lane-N":
                                              AsyncLaneRunner.run(chunk)
                                              ``await task(item)`` per input
                                                           │ ChunkResult
    poll(timeout) ◄──── outbox (queue.SimpleQueue) ◄───────┘
    progress()    ◄──── each runner's live chunk (read as on threads)
    cancel()      ────► stop flag: lanes stop before their next input
    shutdown()    ────► call_soon_threadsafe: cancel every task, end the loop;
                        join the thread

Semantics specific to asyncio:

* ``initializer`` runs once per lane, in the lane's coroutine, before its
  first chunk; an ``async def`` one is awaited there, a plain one is called
  on the loop. So a ``ContextVar`` it sets is the lane's own (each lane is
  a task with a context of its own). A lane whose initializer raised
  answers its chunks without running them.

* ``timeout`` bounds each input, retries included: the input runs in an
  asyncio task of its own, which is cancelled past the timeout, and the input
  fails with ``TaskTimeout``. A task that swallows the cancellation and goes
  on is abandoned after ``ABANDON_GRACE`` (it keeps running on the loop, its
  outcome ignored) and the lane goes on. A task that blocks the loop past its
  timeout cannot be cancelled; when it returns, its input is failed with
  ``TaskTimeout`` all the same, and a warning says why.
* ``rate_limit``: one token bucket for every lane, without a lock (the loop
  is one thread); a lane waits for its token with ``asyncio.sleep``, before
  the input's timeout starts.
* A ``KeyboardInterrupt``, ``SystemExit`` or other ``BaseException`` that is
  not an ``Exception`` interrupts the execution, as on threads.
* A ``CancelledError`` that pylo did not cause (the task awaited something
  that was cancelled, or raised it) fails the input like an ``Exception``:
  asyncio libraries use it to report an aborted operation, which says nothing
  about the rest of the execution. pylo's own cancellations (a timeout, or
  shutdown after an interrupt) are never recorded as the task's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

from pylo._ratelimit import TokenBucket
from pylo.workers._aiorunner import AsyncLaneRunner
from pylo.workers._initializer import await_initializer
from pylo.workers._runner import FailureGate, LocalLanes
from pylo.workers.base import ChunkResult, LocalBackend, RunnerSettings

__all__ = ["AsyncioBackend", "AsyncioLanes"]

logger = logging.getLogger(__name__)

#: Seconds tasks get to end once cancelled at shutdown (they may clean up).
SHUTDOWN_GRACE = 1.0

_Chunk = tuple[int, Sequence[Any], int]  # chunk id, inputs, budget


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Finish async generators, then close the loop.

    Closing shuts the default executor down without waiting: its idle
    ``asyncio.to_thread`` threads end at once, and one still in a call (a
    task cancelled while it waited for the thread) ends when its call
    returns. ``shutdown_default_executor`` would wait for such a call with no
    bound on Python 3.11, even when the wait is cancelled.
    """
    try:
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), SHUTDOWN_GRACE))
    except TimeoutError:
        logger.warning("async generators did not close within %g s of the end of the execution", SHUTDOWN_GRACE)
    finally:
        loop.close()


class AsyncioLanes(LocalLanes):
    """One execution's lanes: coroutines of an event loop in a thread of their own."""

    # One chunk queued behind the running one hides the hop to the
    # coordinator's thread. More would hoard inputs: with hundreds of lanes
    # the first feed hands out (1 + prefetch) first-size chunks per lane, and
    # with prefetch 2 a 10,000-input job left 83 of 500 lanes with nothing
    # (benchmarks/io_bound.py: 1.33x its ideal, against 1.05x with 1).
    prefetch = 1

    def __init__(self, join_timeout: float) -> None:
        super().__init__(join_timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._finished: asyncio.Future[None] | None = None
        self._runners: list[AsyncLaneRunner] = []
        self._lane_tasks: list[asyncio.Task[None]] = []
        self._inboxes: list[asyncio.Queue[_Chunk]] = []
        self._closing = threading.Event()
        # Chunks submitted but not yet in their lane's inbox; the lock keeps
        # one wake-up of the loop per burst of submits, not one per chunk.
        self._handoff: list[tuple[int, _Chunk]] = []
        self._handoff_lock = threading.Lock()
        self._wake_scheduled = False
        self._settings = RunnerSettings()

    def start(self, function: Callable[[Any], Any], lanes: int, settings: RunnerSettings) -> None:
        self._settings = settings
        gate = None
        if settings.max_failures is not None:
            # Only the loop's thread counts failures: a plain counter, no lock.
            counter = types.SimpleNamespace(value=0)
            gate = FailureGate(settings.max_failures, self._stop, counter, contextlib.nullcontext())
        limiter = None
        if settings.rate_limit is not None:
            limiter = TokenBucket(settings.rate_limit, 1.0, TokenBucket.initial_state(1.0))
        self._runners = [
            AsyncLaneRunner(function, lane, settings, self._stop, self._closing, gate, limiter) for lane in range(lanes)
        ]
        # Queues and futures bind to a loop when first used, not when made.
        self._inboxes = [asyncio.Queue() for _ in range(lanes)]
        loop = asyncio.new_event_loop()
        self._loop = loop
        # Made before the thread starts, so shutdown can resolve it at any time.
        self._finished = loop.create_future()
        self._thread = threading.Thread(target=self._thread_main, args=(loop,), name="pylo-asyncio", daemon=True)
        self._thread.start()

    # -- the loop's thread ---------------------------------------------------

    def _thread_main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # a bug in pylo, or a task stopped the loop
            self._outbox.put(exc)
        finally:
            try:
                _close_loop(loop)
            finally:
                asyncio.set_event_loop(None)

    async def _main(self) -> None:
        assert self._finished is not None
        # The loop keeps only weak references to tasks: hold the lanes here.
        self._lane_tasks = [
            asyncio.create_task(self._lane_main(number, runner, inbox), name=f"pylo-lane-{number}")
            for number, (runner, inbox) in enumerate(zip(self._runners, self._inboxes, strict=True))
        ]
        try:
            await self._finished
        finally:
            self._closing.set()
            await self._cancel_every_task()

    async def _lane_main(self, lane: int, runner: AsyncLaneRunner, inbox: asyncio.Queue[_Chunk]) -> None:
        outbox = self._outbox
        settings = self._settings
        # Awaited here, in the lane's own task: a ContextVar it sets is this lane's.
        failed = await await_initializer(settings.initializer, settings.initargs, f"worker {lane} (a coroutine)")
        if failed is not None:
            self.report_setup_failure(failed)
        while True:
            try:
                chunk_id, inputs, budget = await inbox.get()
            except asyncio.CancelledError:
                if self._closing.is_set():
                    raise
                # A task cancelled its own lane and returned before the
                # request landed; the lane is idle now, so it is spent here.
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                continue
            if failed is not None:  # this lane cannot run inputs: they stay pending
                outbox.put(ChunkResult(chunk_id, lane, 0, (), (), None, 0.0))
                continue
            try:
                result = await runner.run(chunk_id, inputs, budget)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and self._closing.is_set():
                    raise
                outbox.put(exc)  # a bug in pylo itself: the coordinator raises it
                return
            outbox.put(result)

    async def _cancel_every_task(self) -> None:
        """Cancel the lanes and any task the user's code left running, within a grace."""
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.debug("task %s ended with an exception at shutdown", task.get_name(), exc_info=task.exception())
        if pending:
            logger.warning(
                "%d asyncio tasks did not end within %g s of being cancelled; they are abandoned",
                len(pending),
                SHUTDOWN_GRACE,
            )

    def _deliver(self) -> None:
        """Move submitted chunks into their lanes' inboxes (runs in the loop)."""
        with self._handoff_lock:
            chunks, self._handoff = self._handoff, []
            self._wake_scheduled = False
        inboxes = self._inboxes
        for lane, chunk in chunks:
            inboxes[lane].put_nowait(chunk)

    def _end_loop(self) -> None:
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    # -- the coordinator's side ----------------------------------------------

    def submit(self, lane: int, chunk_id: int, inputs: Sequence[Any], budget: int) -> None:
        assert self._loop is not None, "submit before start"
        with self._handoff_lock:
            self._handoff.append((lane, (chunk_id, inputs, budget)))
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        self._loop.call_soon_threadsafe(self._deliver)

    def shutdown(self, wait: bool) -> None:
        # Both cases cancel whatever still runs: with wait True nothing is in
        # flight, and with wait False cancelling *is* abandoning a coroutine.
        self._stop.set()
        thread, loop = self._thread, self._loop
        self._thread = None
        if thread is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._end_loop)
        except RuntimeError:
            pass  # the loop already closed after a failure, reported through poll
        thread.join(self._join_timeout)
        if thread.is_alive():
            logger.warning("the asyncio worker thread did not end within %g s; it is abandoned", self._join_timeout)


class AsyncioBackend(LocalBackend):
    """Runs each lane as a coroutine of an event loop in a thread of its own, one loop per execution.

    ``join_timeout``: the longest wait, at shutdown, for the loop's thread to end.
    """

    name = "asyncio"
    runs_coroutines = True
    lanes_class = AsyncioLanes
