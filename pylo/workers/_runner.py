"""Runs a chunk of inputs through the task function, inside a lane.

This is the innermost loop of pylo, shared by every backend. Its per-input
cost must stay at a function call, an exception handler and a flag check;
everything else (retries, results) takes a slower path only when asked for.

:class:`BaseLaneRunner` keeps what does not depend on how a task is called
(the chunk's budget, the live view for ``progress()``, failure records, result
encoding); :class:`LaneRunner` calls plain functions, and the asyncio
backend's ``AsyncLaneRunner`` awaits coroutines with the same bookkeeping.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from pylo._codec import get_codec
from pylo._ratelimit import TokenBucket
from pylo._tracebacks import describe_exception, qualified_name, refresh_sources, safe_str
from pylo.errors import ResultSerializationError, TaskTimeout
from pylo.workers.base import ChunkResult, Lanes, RunnerSettings, TaskFailure

__all__ = [
    "Abandoned",
    "BaseLaneRunner",
    "FailureGate",
    "LaneRunner",
    "LocalLanes",
    "StopFlag",
    "describe_failure",
    "partial_results",
    "qualified_name",
    "take_all",
]

_Message = TypeVar("_Message", covariant=True)


class StopFlag(Protocol):
    """Anything with ``is_set()`` and ``set()``: a threading or multiprocessing Event."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class FailureGate:
    """Counts failures across all lanes against ``max_failures``, as they happen.

    Lanes share one gate, so the execution-wide limit stops every lane
    before its next input, not when the coordinator hears of it. Works with
    threading primitives, or multiprocessing ones (a shared ``Value`` and a
    ``Lock``) across processes.
    """

    def __init__(self, limit: int, stop: StopFlag, counter: Any, lock: Any) -> None:
        self._limit = limit
        self._stop = stop
        self._counter = counter  # anything with a mutable ``value``
        self._lock = lock

    def count_failure(self) -> bool:
        """Count one failure; True when the limit is reached (lanes are stopped)."""
        with self._lock:
            self._counter.value += 1
            reached = self._counter.value >= self._limit
        if reached:
            self._stop.set()
        return reached


class _Queue(Protocol[_Message]):
    """A ``queue.Queue`` or ``queue.SimpleQueue`` as a backend's lanes fill it."""

    def get(self, block: bool = ..., timeout: float | None = ...) -> _Message: ...

    def get_nowait(self) -> _Message: ...


def take_all(outbox: _Queue[_Message], timeout: float | None) -> list[_Message]:
    """Wait up to ``timeout`` seconds (None: forever) for a message, then take all queued.

    Returns an empty list when the timeout passed first. Taking every waiting
    message at once lets the coordinator apply a burst of results in one go.
    """
    try:
        first = outbox.get(timeout=timeout)
    except queue.Empty:
        return []
    found = [first]
    while True:
        try:
            found.append(outbox.get_nowait())
        except queue.Empty:
            return found


def partial_results(runners: Iterable[BaseLaneRunner]) -> list[ChunkResult]:
    """``Backend.progress`` of lanes in this process: each running chunk that has outcomes."""
    found = []
    for runner in runners:
        partial = runner.progress()
        if partial is not None and partial.attempted:
            found.append(partial)
    return found


class LocalLanes(Lanes):
    """Lanes whose runners live in this process and hand their results to one queue (threads, asyncio)."""

    def __init__(self, join_timeout: float) -> None:
        self._join_timeout = join_timeout
        self._outbox: queue.SimpleQueue[ChunkResult | BaseException] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._runners: Sequence[BaseLaneRunner] = ()
        self._setup_failed = threading.Lock()  # taken by the first lane whose initializer raised
        self._held: list[ChunkResult] = []  # results that came with an error, for the next poll

    def poll(self, timeout: float | None) -> list[ChunkResult]:
        if self._held:
            held, self._held = self._held, []
            return held
        found = take_all(self._outbox, timeout)
        results = [item for item in found if not isinstance(item, BaseException)]
        for item in found:
            if isinstance(item, BaseException):
                # The results that came with it are finished work: the coordinator
                # takes them in from the next poll, while it winds down.
                self._held = results
                raise item
        return results

    def report_setup_failure(self, failed: BaseException) -> None:
        """Hand the coordinator a lane's initializer failure: the first one only, the others say the same."""
        if self._setup_failed.acquire(blocking=False):
            self._outbox.put(failed)

    def progress(self) -> list[ChunkResult]:
        return partial_results(self._runners)

    def cancel(self) -> None:
        self._stop.set()


def describe_failure(
    exc: BaseException,
    attempts: int,
    settings: RunnerSettings,
    quiet_files: frozenset[str] = frozenset({__file__}),
) -> TaskFailure:
    """The one way a failure is described, wherever it happened (a lane, a dead process, a lost Dask worker).

    Keeps only the attempt count and the time when exceptions are not
    stored. Frames of ``quiet_files`` (pylo's own calling of the task) are
    left out of the traceback.
    """
    now = time.time()
    if not settings.store_exceptions:
        return TaskFailure(None, None, None, None, attempts, now)
    exc_type, message, text, encoded = describe_exception(exc, get_codec(settings.codec_name), quiet_files)
    return TaskFailure(exc_type, message, text, encoded, attempts, now)


class BaseLaneRunner:
    """What every lane runner keeps, however it calls the task.

    Subclasses run a chunk between :meth:`_open_chunk` and
    :meth:`_close_chunk`, publish it in ``self._live`` while it runs, and
    report each failed input with :meth:`_note_failure`.
    """

    #: Source files whose frames lead every task traceback; left out of failure records.
    _quiet_files: frozenset[str] = frozenset({__file__})

    def __init__(
        self,
        function: Callable[[Any], Any],
        lane: int,
        settings: RunnerSettings,
        stop: StopFlag,
        gate: FailureGate | None = None,
        limiter: TokenBucket | None = None,
    ) -> None:
        self._function = function
        self._gate = gate
        self._limiter = limiter
        self._lane = lane
        self._settings = settings
        self._stop = stop
        self._codec = get_codec(settings.codec_name)
        # Each lane retries with its own copy: tenacity keeps per-call state.
        self._retry = settings.retry.copy() if settings.retry is not None else None
        self._live: _Live | None = None  # the chunk running, for progress()
        refresh_sources(settings)  # source files edited since the last run are read again for tracebacks
        self._opened = _Live(-1, 0.0, [], [], 0)  # the chunk opened last

    def _outcome(self, live: _Live, index: int, failure: TaskFailure | None, value: Any) -> bool:
        """Keep an input's outcome (its result, or its failure); True when the chunk must stop."""
        if failure is None and self._settings.store_results:
            failure = self._store_result(live, index, value)
        return failure is not None and self._note_failure(live, index, failure)

    def _open_chunk(self, chunk_id: int, budget: int) -> _Live | None:
        """Start a chunk that may see ``budget`` failures (the coordinator's share for it).

        Publishes it for :meth:`progress`; returns None for a chunk whose
        budget lets it attempt nothing (then report it with ``_close_chunk(0)``).
        """
        live = _Live(chunk_id, time.perf_counter(), [], [], budget)
        self._opened = live
        if budget <= 0:
            return None
        self._live = live
        return live

    def _fast(self, watched: object) -> bool:
        """True when the plain loop will do: no retry, rate limit, watched timeout or results."""
        return self._retry is None and self._limiter is None and watched is None and not self._settings.store_results

    def _close_chunk(self, attempted: int, interrupt: BaseException | None = None) -> ChunkResult:
        """End the chunk opened last and describe it."""
        live = self._opened
        self._live = None
        return ChunkResult(
            chunk_id=live.chunk_id,
            lane=self._lane,
            attempted=attempted,
            failures=live.failures,
            results=live.results,
            interrupt=interrupt,
            elapsed=time.perf_counter() - live.started,
        )

    def _note_failure(self, live: _Live, index: int, failure: TaskFailure) -> bool:
        """Record a failed input; True when the lane must stop (budget or max_failures used up)."""
        live.failures.append((index, failure))
        # Every failure goes through the gate, also the one that ends the chunk's budget.
        reached = self._gate is not None and self._gate.count_failure()
        return reached or len(live.failures) >= live.budget

    def _store_result(self, live: _Live, index: int, value: Any) -> TaskFailure | None:
        """Keep a finished input's encoded result; a value the codec cannot store fails the input."""
        try:
            live.results.append((index, self._codec.encode_value(value)))
        except Exception as exc:
            return self.failure(
                ResultSerializationError(
                    f"the task returned {type(value).__qualname__}, which cannot be "
                    f"stored with the {self._codec.name} codec: {safe_str(exc)}"
                ),
                1,
            )
        return None

    def progress(self) -> ChunkResult | None:
        """The outcomes so far of the chunk this lane is running, or None.

        Called from another thread while the lane runs: it reads the count
        of completed inputs first, then keeps only failures and results below
        it, which were appended before that count was published.
        """
        live = self._live
        if live is None:
            return None
        done = live.done
        return ChunkResult(
            chunk_id=live.chunk_id,
            lane=self._lane,
            attempted=done,
            failures=[entry for entry in live.failures[:] if entry[0] < done],
            results=[entry for entry in live.results[:] if entry[0] < done],
            interrupt=None,
            elapsed=time.perf_counter() - live.started,
        )

    def failure(self, exc: BaseException, attempts: int) -> TaskFailure:
        """Describe a failure; keeps only counts when exceptions are not stored."""
        return describe_failure(exc, attempts, self._settings, self._quiet_files)

    def _gave_up(self, gave_up: Any, attempts: int) -> TaskFailure:
        """Describe an input a retry policy gave up on (a ``tenacity.RetryError``)."""
        last = gave_up.last_attempt
        cause = last.exception() if last.failed else None
        return self.failure(cause if cause is not None else gave_up, attempts)


class LaneRunner(BaseLaneRunner):
    """Runs the chunks of one lane, in order, calling a plain function."""

    def __init__(
        self,
        function: Callable[[Any], Any],
        lane: int,
        settings: RunnerSettings,
        stop: StopFlag,
        gate: FailureGate | None = None,
        limiter: TokenBucket | None = None,
        *,
        watched: bool = False,
    ) -> None:
        super().__init__(function, lane, settings, stop, gate, limiter)
        # Watched lanes (timeouts on threads) publish each input's start under
        # this lock, so a watchdog can abandon them without racing the task.
        self._watch_lock = threading.Lock() if watched else None
        self._abandoned = False

    def run(self, chunk_id: int, inputs: Sequence[Any], budget: int) -> ChunkResult:
        """Run ``inputs`` in order until done, out of budget, or stopped."""
        live = self._open_chunk(chunk_id, budget)
        if live is None:
            return self._close_chunk(0)
        loop = self._run_plain if self._fast(self._watch_lock) else self._run_full
        try:
            return self._close_chunk(loop(inputs, live))
        except _Interrupted as stop:
            if isinstance(stop.cause, Abandoned):
                raise stop.cause from None  # this runner is replaced: it reports nothing
            return self._close_chunk(stop.attempted, stop.cause)

    def _run_plain(self, inputs: Sequence[Any], live: _Live) -> int:
        function = self._function
        is_stopped = self._stop.is_set
        index = 0
        try:
            for index, item in enumerate(inputs):
                live.done = index
                if is_stopped():
                    return index
                try:
                    function(item)
                except Exception as exc:
                    if self._note_failure(live, index, self.failure(exc, 1)):
                        return index + 1
        except BaseException as exc:
            raise _Interrupted(index, exc) from None
        return len(inputs)

    def _run_full(self, inputs: Sequence[Any], live: _Live) -> int:
        is_stopped = self._stop.is_set
        watch_lock = self._watch_lock
        index = 0
        try:
            for index, item in enumerate(inputs):
                if watch_lock is None:
                    live.done = index
                else:
                    with watch_lock:
                        if self._abandoned:
                            raise Abandoned()
                        live.done = index
                        live.input_started = None
                if is_stopped():
                    return index
                if self._limiter is not None:
                    # Waiting for a token is not the task's time: the timeout starts after it.
                    self._limiter.acquire()
                if watch_lock is not None:
                    live.input_started = time.monotonic()
                if self._outcome(live, index, *self._attempt(item)):
                    return self._finish(index + 1)
        except BaseException as exc:
            raise _Interrupted(index, exc) from None
        return self._finish(len(inputs))

    def _finish(self, attempted: int) -> int:
        """End a chunk; a watched lane abandoned meanwhile must not report it."""
        if self._watch_lock is not None:
            with self._watch_lock:
                if self._abandoned:
                    raise Abandoned()
                live = self._live
                if live is not None:
                    live.input_started = None
        return attempted

    def abandon_if_stuck(self, timeout: float, now: float) -> ChunkResult | None:
        """Give up on a watched lane whose current input has run past ``timeout``.

        Returns the chunk's result, with the stuck input failed with
        :class:`~pylo.errors.TaskTimeout`, and marks this runner abandoned:
        if the task ever returns, the runner ends without reporting. Returns
        None when the lane is not stuck.
        """
        assert self._watch_lock is not None, "only watched runners can be abandoned"
        with self._watch_lock:
            live = self._live
            if self._abandoned or live is None or live.input_started is None:
                return None
            if now - live.input_started < timeout:
                return None
            self._abandoned = True
            done = live.done
        failures = [entry for entry in live.failures[:] if entry[0] < done]
        failures.append((done, self.failure(TaskTimeout(f"the task ran longer than its timeout of {timeout:g} s"), 1)))
        return ChunkResult(
            chunk_id=live.chunk_id,
            lane=self._lane,
            attempted=done + 1,
            failures=failures,
            results=[entry for entry in live.results[:] if entry[0] < done],
            interrupt=None,
            elapsed=time.perf_counter() - live.started,
        )

    def _attempt(self, item: Any) -> tuple[TaskFailure | None, Any]:
        """Call the task on one input, with retries when configured."""
        if self._retry is None:
            try:
                return None, self._function(item)
            except Exception as exc:
                return self.failure(exc, 1), None
        from tenacity import RetryError

        attempts = 0
        value = None
        try:
            for attempt in self._retry:
                with attempt:
                    attempts += 1
                    value = self._function(item)
        except RetryError as gave_up:
            return self._gave_up(gave_up, attempts), None
        except Exception as exc:  # the policy re-raised the task's own exception
            return self.failure(exc, attempts), None
        return None, value


class Abandoned(BaseException):
    """Raised inside a watched lane that a watchdog gave up on; ends its thread quietly."""


class _Live:
    """The chunk a lane is running, shared with the coordinator's thread."""

    __slots__ = ("budget", "chunk_id", "done", "failures", "input_started", "results", "started")

    def __init__(
        self,
        chunk_id: int,
        started: float,
        failures: list[tuple[int, TaskFailure]],
        results: list[tuple[int, bytes]],
        budget: float,
    ) -> None:
        self.chunk_id = chunk_id
        self.started = started
        self.done = 0
        self.failures = failures
        self.results = results
        self.budget = budget
        self.input_started: float | None = None


class _Interrupted(Exception):
    """Carries a task's BaseException out of the loop with its index."""

    def __init__(self, attempted: int, cause: BaseException) -> None:
        super().__init__(attempted)
        self.attempted = attempted
        self.cause = cause
