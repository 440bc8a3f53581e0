"""The coordinator: runs an execution's plan on lanes, keeps budgets, flushes.

Data flow of one execution::

    Plan (pylo._plan): batches, their state bytes, where their inputs are
        │  Scheduler.take(n): chunks of pending offsets, never across batches
        ▼
    lanes.submit(lane, chunk, budget) ··· lanes run chunks ··· lanes.poll()
        │  ChunkResult(attempted prefix, failures, results)
        ▼
    Coordinator._apply: state bytes by offset, counts, Budgets
        │  every N outcomes or T seconds, and at the end
        ▼
    store.record_flush(Flush)   (one transaction; the only writer)

The coordinator runs in the thread that started the execution; several
coordinators (executions) may run at once in one process, each with lanes
of its own. It is the only code that writes to the store, so lanes (threads,
processes, remote machines) never need store access, and every durability
rule lives here, once, for every backend. Budgets have one owner too:
:class:`pylo._budgets.Budgets`.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pylo import _stops
from pylo._budgets import Budgets
from pylo._codec import Codec
from pylo._options import RunOptions
from pylo._plan import MAX_BATCH, Chunk, Plan, Scheduler, record_end
from pylo._sizing import ChunkSizer
from pylo.errors import StoreError
from pylo.stores.base import FAILED, FINISHED, ChunkRow, ExecutionStatus, FailureRow, Flush, Store
from pylo.workers.base import Backend, ChunkResult, Lanes

__all__ = ["ALARM", "STOP_REQUESTED", "Coordinator"]

#: An event that, once set, makes an execution started in this context stop
#: taking inputs: its running chunks end, it flushes and ends ``stopped``
#: (resumable), as when ``max_failures`` is reached. The pipeline layer sets
#: it to pause or cancel a batch node (through ``pylo.pipeline._host``).
STOP_REQUESTED: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "pylo_stop_requested", default=None
)

#: A one-shot alarm ``(at, ring)`` for an execution started in this context:
#: its loop calls ``ring()`` once, at its first wake at or after
#: ``time.monotonic()`` reaches ``at``, and until then waits no later than
#: ``at``. A batch node that runs on its pipeline coordinator's own thread
#: sets it, so that only a node still running by then starts the thread
#: that keeps the run's clocks (see ``pylo.pipeline._lone_node``).
ALARM: contextvars.ContextVar[tuple[float, Callable[[], None]] | None] = contextvars.ContextVar(
    "pylo_alarm", default=None
)

logger = logging.getLogger(__name__)

#: Inputs in a lane's first chunk, before its speed is known.
FIRST_CHUNK = 8
#: Seconds to wait for lanes to hand back partial chunks when interrupted.
INTERRUPT_GRACE = 2.0

_FINISHED_RUN = bytes([FINISHED]) * MAX_BATCH


@dataclass(slots=True)
class _Lane:
    number: int
    in_flight: int = 0
    chunk_size: int = FIRST_CHUNK


@dataclass(slots=True)
class _Outcomes:
    """Outcomes applied in memory but not yet flushed."""

    dirty: set[int] = field(default_factory=set)
    failures: list[FailureRow] = field(default_factory=list)
    results: list[tuple[int, bytes]] = field(default_factory=list)
    chunks: list[ChunkRow] = field(default_factory=list)
    count: int = 0


def _runs(first: int, offsets: Sequence[int], worker: int) -> list[ChunkRow]:
    """The contiguous runs of ``offsets`` (ascending, within one batch) as positions ``worker`` ran."""
    rows: list[ChunkRow] = []
    start = previous = -2
    for offset in offsets:
        if offset != previous + 1:
            if previous >= 0:
                rows.append(ChunkRow(first + start, first + previous, worker))
            start = offset
        previous = offset
    if previous >= 0:
        rows.append(ChunkRow(first + start, first + previous, worker))
    return rows


class Coordinator:
    """Runs one execution's plan on lanes of a backend; the only writer to the store."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        execution_id: str,
        plan: Plan,
        options: RunOptions,
        codec: Codec,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self._store = store
        self._backend = backend
        self._running: Lanes | None = None
        self._id = execution_id
        self._plan = plan
        self._options = options
        self._codec = codec
        self._on_progress = on_progress
        self._max_chunk = min(MAX_BATCH, options.task_executions_before_flush)
        self._scheduler = Scheduler(plan, self._max_chunk)
        # No more lanes than inputs to run: 20,000 workers for 2 inputs start 2.
        lanes = max(1, min(options.number_of_workers, plan.total - plan.finished))
        self._lanes = [_Lane(n, chunk_size=min(FIRST_CHUNK, self._max_chunk)) for n in range(lanes)]
        # Made again once the lanes say how many chunks each may have in flight.
        self._budgets = Budgets(options.max_worker_failures, options.max_failures, lanes, 1)
        self._in_flight: dict[int, Chunk] = {}
        self._in_flight_inputs: dict[int, Sequence[Any]] = {}
        self._next_chunk_id = 0
        self._outcomes = _Outcomes()
        self._stopping = False
        self._stop_code: str | None = None  # what stopped the feeding of inputs, when something did (_stops)
        self._raised_by_task: BaseException | None = None  # a task's KeyboardInterrupt or SystemExit, raised here
        self._stop_requested = STOP_REQUESTED.get()
        self._alarm = ALARM.get()
        self._sizer: ChunkSizer | None = None  # made when the lanes start: they say how much work a chunk aims at
        self._flush_due = time.monotonic() + options.flush_seconds
        self._ended = False  # the final status is durable

    # -- the loop ---------------------------------------------------------

    def run(self, function: Callable[[Any], Any]) -> ExecutionStatus:
        """Run every pending input; flush; return the final status.

        Every moment of the run is inside one ``try``, from starting the
        lanes to the final flush: an interrupt anywhere (a Ctrl-C while
        the lanes are being joined, say) ends the execution ``interrupted``
        with every outcome heard so far, never leaves it ``running``.

        Raises:
            BaseException: Whatever interrupted the run (KeyboardInterrupt,
                SystemExit, a store failure...), after recording what it can.
        """
        try:
            if self._pending():  # nothing to run (a resume of a complete execution): no workers
                settings = self._options.runner_settings(self._codec)
                self._running = lanes = self._backend.start(function, len(self._lanes), settings)
                slots = 1 + lanes.prefetch
                self._sizer = ChunkSizer(lanes.chunk_seconds, self._options.flush_seconds, self._max_chunk)
                self._budgets = Budgets(
                    self._options.max_worker_failures, self._options.max_failures, len(self._lanes), slots
                )
                self._loop()
                lanes.shutdown(wait=True)
            status = ExecutionStatus.COMPLETED if self._pending() == 0 else ExecutionStatus.STOPPED
            self._flush(status=status, ended_at=time.time(), stop=self._stopped_by(status))
        except BaseException as exc:
            if not self._ended:  # an interrupt after the final flush changes nothing
                self._end_early(exc)
            raise
        return status

    def _loop(self) -> None:
        lanes = self._started()
        threshold = self._options.task_executions_before_flush
        stop = self._stop_requested
        while True:
            if stop is not None and not self._stopping and stop.is_set():
                logger.info("execution %s stopping: a stop was requested", self._id)
                self._stopping, self._stop_code = True, _stops.STOP_REQUESTED
                lanes.cancel()
            if not self._stopping:
                self._feed()
            if not self._in_flight:
                return
            # Wake at least every flush_seconds, even with nothing reported:
            # lanes deep in a long chunk have outcomes to collect.
            wait = self._flush_due - time.monotonic()
            if self._alarm is not None:
                wait = self._ring_or_wait(wait)
            interrupt: BaseException | None = None
            for result in lanes.poll(max(0.0, wait)):
                # Take in the other results of this poll before raising what
                # an apply or a flush raised (a Ctrl-C lands in either): they
                # are finished work, out of the lanes' outbox already, which
                # the last flush saves; dropped, they would run again.
                try:
                    self._apply(result)
                    # Per result, not per poll: a flush holds at most about
                    # `threshold` outcomes (a chunk is never larger than it).
                    if interrupt is None and self._outcomes.count >= threshold:
                        self._flush()
                except BaseException as exc:
                    interrupt = interrupt or exc
            if interrupt is not None:
                raise interrupt
            if time.monotonic() >= self._flush_due:
                for partial in lanes.progress():
                    self._apply(partial, final=False)
                self._flush()

    def _ring_or_wait(self, wait: float) -> float:
        """Ring the alarm if it is due (once); else the wait shortened to end no later than it."""
        assert self._alarm is not None
        at, ring = self._alarm
        left = at - time.monotonic()
        if left > 0:
            return min(wait, left)
        self._alarm = None
        ring()
        return wait

    @property
    def ended(self) -> bool:
        """True once the execution's final status has been written (or tried to the last)."""
        return self._ended

    def _started(self) -> Lanes:
        assert self._running is not None, "lanes are started first thing in run()"
        return self._running

    def _feed(self) -> None:
        # Round by round (every lane's first chunk, then second ones), so
        # with many lanes and few inputs no lane waits while another holds
        # queued work.
        lanes = self._started()
        budgets = self._budgets
        for depth in range(1, 2 + lanes.prefetch):
            for lane in self._lanes:
                if lane.in_flight >= depth or not budgets.active(lane.number):
                    continue
                budget = budgets.grant(lane.number, lane.in_flight)
                if not budget:
                    continue  # what the lane has left is promised to its chunks in flight
                taken = self._scheduler.take(lane.chunk_size)
                if taken is None:
                    budgets.release(lane.number, budget, 0)
                    return
                chunk, inputs = taken
                chunk.lane = lane.number
                chunk.budget = budget
                chunk_id = self._next_chunk_id
                self._next_chunk_id += 1
                self._in_flight[chunk_id] = chunk
                self._in_flight_inputs[chunk_id] = inputs
                lane.in_flight += 1
                lanes.submit(lane.number, chunk_id, inputs, budget)

    # -- outcomes ---------------------------------------------------------

    def _apply(self, result: ChunkResult, *, final: bool = True) -> None:
        """Take in a chunk's outcomes; ``final`` False for a partial report."""
        chunk = self._in_flight.get(result.chunk_id)
        if chunk is None:
            return  # a partial report of a chunk that has ended since
        if result.attempted > chunk.applied:
            self._record(chunk, result)
        if not final:
            return
        del self._in_flight[result.chunk_id]
        inputs = self._in_flight_inputs.pop(result.chunk_id)
        lane = self._lanes[result.lane]
        lane.in_flight -= 1
        self._budgets.release(lane.number, chunk.budget, chunk.charged)
        if result.attempted:
            self._resize(lane, result)
        left = len(chunk.offsets) - result.attempted
        active = self._budgets.active(lane.number)
        if left and not self._stopping and result.interrupt is None and (active or result.attempted == 0):
            # Inputs the lane did not attempt go to another lane, unless the
            # lane stopped on its budget part way: by rule 4 the rest of the
            # chunk it was running stays pending.
            if result.attempted == 0:
                self._scheduler.give_back(chunk, inputs)
            else:
                self._scheduler.give_back(
                    Chunk(chunk.batch, chunk.offsets[result.attempted :]), inputs[result.attempted :]
                )
        if result.interrupt is not None:
            self._raised_by_task = result.interrupt
            raise result.interrupt

    def _record(self, chunk: Chunk, result: ChunkResult) -> None:
        """Apply outcomes ``[chunk.applied, result.attempted)`` of a chunk."""
        batch = chunk.batch
        states = batch.states
        offsets = chunk.offsets
        begin, end = chunk.applied, result.attempted
        first = batch.first_position
        outcomes = self._outcomes
        lane_number = result.lane
        if isinstance(offsets, range):
            start = offsets.start
            states[start + begin : start + end] = _FINISHED_RUN[: end - begin]
            outcomes.chunks.append(ChunkRow(first + start + begin, first + start + end - 1, lane_number))
        else:
            for offset in offsets[begin:end]:
                states[offset] = FINISHED
            outcomes.chunks.extend(_runs(first, offsets[begin:end], lane_number))
        new_failures = 0
        for index, failure in result.failures:
            if index < begin:
                continue
            new_failures += 1
            offset = offsets[index]
            states[offset] = FAILED
            # Positional: a frozen dataclass made with keywords costs twice as much (once per failed input).
            outcomes.failures.append(
                FailureRow(
                    first + offset,
                    failure.exc_type,
                    failure.message,
                    failure.traceback,
                    failure.exception,
                    failure.attempts,
                    lane_number,
                    failure.failed_at,
                )
            )
        for index, encoded in result.results:
            if index >= begin:
                outcomes.results.append((first + offsets[index], encoded))
        chunk.applied = end
        attempted = end - begin
        self._plan.finished += attempted - new_failures
        self._plan.failed += new_failures
        outcomes.dirty.add(batch.batch_no)
        outcomes.count += attempted
        chunk.charged += new_failures
        self._count_failures(lane_number, new_failures)
        if self._on_progress is not None:
            self._on_progress(attempted - new_failures, new_failures)

    def _count_failures(self, lane: int, failures: int) -> None:
        if not failures:
            return
        budgets = self._budgets
        was_active = budgets.active(lane)
        budgets.charge(lane, failures)
        if was_active and not budgets.active(lane):
            logger.info(
                "worker %d of execution %s stopped: it saw %d failed inputs (max_worker_failures)",
                lane,
                self._id,
                budgets.failures(lane),
            )
        if budgets.reached and not self._stopping:
            logger.info("execution %s stopping: %d failed inputs (max_failures)", self._id, budgets.failed)
            self._stopping, self._stop_code = True, _stops.MAX_FAILURES
            self._started().cancel()

    def _resize(self, lane: _Lane, result: ChunkResult) -> None:
        """Aim the lane's next chunk at the lanes' ``chunk_seconds`` of work."""
        assert self._sizer is not None, "made when the lanes start, before any chunk reports"
        lane.chunk_size = self._sizer.next_size(lane.chunk_size, result)

    def _pending(self) -> int:
        plan = self._plan
        return plan.total - plan.finished - plan.failed

    def _flush(
        self,
        *,
        status: ExecutionStatus | None = None,
        ended_at: float | None = None,
        stop: _stops.Stop | None = None,
    ) -> None:
        outcomes = self._outcomes
        batches = self._plan.batches
        flush = Flush(
            states={batch_no: bytes(batches[batch_no].states) for batch_no in outcomes.dirty},
            failures=outcomes.failures,
            results=outcomes.results,
            chunks=outcomes.chunks,
            total=self._plan.total,
            finished=self._plan.finished,
            failed=self._plan.failed,
            status=status,
            ended_at=ended_at,
            stop_reason=None if stop is None else stop.code,
            stop_detail=None if stop is None else stop.detail,
        )
        # Handed over before the write: an interrupt just after the store
        # committed must not make the outcomes look unwritten.
        self._outcomes = _Outcomes()
        try:
            self._store.record_flush(self._id, flush)
        except BaseException:
            self._outcomes = outcomes  # not written: the next flush carries them
            raise
        self._ended = status is not None
        self._flush_due = time.monotonic() + self._options.flush_seconds

    # -- ending early -----------------------------------------------------

    def _stopped_by(self, status: ExecutionStatus) -> _stops.Stop | None:
        """Why a run that ended ``stopped`` stopped: what ended the feeding, else every worker's budget."""
        if status is not ExecutionStatus.STOPPED:
            return None
        options = self._options
        return _stops.stopped(self._stop_code, self._plan.failed, options.max_failures, options.max_worker_failures)

    def _end_early(self, exc: BaseException) -> None:
        """Save what can be saved after ``exc`` cut the run short."""
        store_failed = isinstance(exc, StoreError)
        lanes = self._running
        if lanes is not None:
            try:
                lanes.cancel()
                if not store_failed:
                    # Lanes stop after their current input; take what they finished.
                    deadline = time.monotonic() + INTERRUPT_GRACE
                    while self._in_flight and (left := deadline - time.monotonic()) > 0:
                        for result in lanes.poll(left):
                            self._apply_quietly(result)
            except BaseException:  # a second Ctrl-C while draining: save what we have
                logger.debug("draining lanes of execution %s was cut short", self._id, exc_info=True)
            try:
                lanes.shutdown(wait=False)
            except BaseException:  # not even this may keep the outcomes from being saved
                logger.debug("stopping the lanes of execution %s was cut short", self._id, exc_info=True)
        interrupted = not isinstance(exc, Exception)
        status = ExecutionStatus.INTERRUPTED if interrupted else ExecutionStatus.ABORTED
        stop = _stops.ended_by(exc, by_task=exc is self._raised_by_task)
        try:
            self._flush(status=status, ended_at=time.time(), stop=stop)
        except BaseException:
            logger.error("could not save the last outcomes of execution %s", self._id, exc_info=True)
            record_end(self._store, self._id, status, stop)
        self._ended = True

    def _apply_quietly(self, result: ChunkResult) -> None:
        if result.chunk_id not in self._in_flight:
            return
        self._stopping = True
        try:
            self._apply(result)
        except BaseException:  # another lane's interrupt; the first one is raised
            pass
