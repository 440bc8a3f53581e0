"""The coordinator: records inputs, schedules chunks, keeps budgets, flushes.

Data flow of one execution::

    iterable ──► _record_inputs ──(batches)──► store.add_batches
                                                  │ (all inputs are durable
                                                  ▼  before any task runs)
    _Plan: per-batch state bytes + where each batch's inputs come from
        │  _Scheduler.take(n): chunks of pending offsets, never across batches
        ▼
    backend.submit(lane, chunk) ··· lanes run chunks ··· backend.poll()
        │  ChunkResult(attempted prefix, failures, results)
        ▼
    Coordinator._apply: state bytes by offset, counts, lane budgets
        │  every N outcomes or T seconds, and at the end
        ▼
    store.record_flush(Flush)   (one transaction; the only writer)

The coordinator runs in the caller's thread. It is the only code that writes
to the store, so lanes (threads, processes, remote machines) never need store
access, and every durability rule lives here, once, for every backend.

Why record every input before the first task runs: a resume must need
nothing from the user but the function, even after ``kill -9`` at any
moment. Inputs that were never recorded could not be resumed.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pylo._codec import Codec
from pylo.errors import StoreError
from pylo.stores.base import (
    FAILED,
    FINISHED,
    PENDING,
    BatchRecord,
    ExecutionRecord,
    ExecutionStatus,
    FailureRow,
    Flush,
    Store,
)
from pylo.workers.base import Backend, ChunkResult, RunnerSettings

__all__ = ["STOP_REQUESTED", "Coordinator", "RunConfig", "create_resumed", "new_record", "record_end", "record_fresh"]

#: An event that, once set, makes an execution started in this context stop
#: taking inputs: its running chunks end, it flushes and ends ``stopped``
#: (resumable), as when ``max_failures`` is reached. The pipeline layer sets
#: it to pause or cancel a batch node (through ``pylo.pipeline._host``).
STOP_REQUESTED: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "pylo_stop_requested", default=None
)

logger = logging.getLogger(__name__)

#: Most inputs per stored batch (and so per chunk).
MAX_BATCH = 1024
#: Inputs in the first batch, before the average input size is known.
FIRST_BATCH = 64
#: Encoded bytes a batch aims at, so huge inputs make small batches.
TARGET_BATCH_BYTES = 4 << 20
#: Batches whose inputs one query reads back from the store.
READ_AHEAD = 16
#: Batches written per store transaction while recording.
BATCHES_PER_WRITE = 16
#: Inputs in a lane's first chunk, before its speed is known.
FIRST_CHUNK = 8
#: A chunk aims to take about this long, so results flow back steadily.
TARGET_CHUNK_SECONDS = 0.05
#: Seconds to wait for lanes to hand back partial chunks when interrupted.
INTERRUPT_GRACE = 2.0

_FINISHED_RUN = bytes([FINISHED]) * MAX_BATCH
_FAILED_TO_PENDING = bytes.maketrans(bytes([FAILED]), bytes([PENDING]))


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Frozen settings of a run; validated by the facade before use."""

    number_of_workers: int
    max_worker_failures: int
    task_executions_before_flush: int
    flush_seconds: float
    store_exceptions: bool
    store_results: bool = False
    retry: Any = None
    max_failures: int | None = None
    timeout: float | None = None
    rate_limit: float | None = None
    progress: bool | None = None

    def runner_settings(self, codec: Codec) -> RunnerSettings:
        return RunnerSettings(
            store_exceptions=self.store_exceptions,
            store_results=self.store_results,
            retry=self.retry,
            codec_name=codec.name,
            max_failures=self.max_failures,
            timeout=self.timeout,
            rate_limit=self.rate_limit,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-serializable options kept on the execution record."""
        return {
            "number_of_workers": self.number_of_workers,
            "max_worker_failures": self.max_worker_failures,
            "task_executions_before_flush": self.task_executions_before_flush,
            "flush_seconds": self.flush_seconds,
            "store_exceptions": self.store_exceptions,
            "store_results": self.store_results,
            "retry": None if self.retry is None else repr(self.retry),
            "max_failures": self.max_failures,
            "timeout": self.timeout,
            "rate_limit": self.rate_limit,
        }


@dataclass(slots=True)
class _Batch:
    """What the coordinator keeps in memory about one stored batch."""

    batch_no: int
    first_position: int
    states: bytearray
    # Inputs of the batch in memory, or None to load them from the store.
    inputs: Sequence[Any] | None = None


@dataclass(slots=True)
class _Plan:
    """Every batch of an execution, and how to get at their inputs."""

    batches: list[_Batch]
    reader: _PayloadReader
    total: int
    finished: int = 0
    failed: int = 0


@dataclass(slots=True)
class _Chunk:
    batch: _Batch
    offsets: Sequence[int]  # offsets within the batch; a range when contiguous
    lane: int = -1
    applied: int = 0  # outcomes [0, applied) are already in the batch's states


@dataclass(slots=True)
class _Lane:
    number: int
    failures: int = 0
    in_flight: int = 0
    active: bool = True
    chunk_size: int = FIRST_CHUNK


def new_record(
    execution_id: str,
    task_name: str,
    codec: Codec,
    config: RunConfig,
    *,
    parent: ExecutionRecord | None = None,
) -> ExecutionRecord:
    """The record a new execution starts with."""
    now = time.time()
    return ExecutionRecord(
        id=execution_id,
        parent_id=None if parent is None else parent.id,
        input_source=execution_id if parent is None else parent.input_source,
        status=ExecutionStatus.RUNNING,
        created_at=now,
        updated_at=now,
        ended_at=None,
        task_name=task_name,
        codec=codec.name,
        pid=os.getpid(),
        host=socket.gethostname(),
        options=config.describe(),
    )


def record_fresh(
    store: Store,
    record: ExecutionRecord,
    task_inputs: Iterable[Any],
    codec: Codec,
) -> _Plan:
    """Create the execution and record every input, in batches.

    Collections (lists, tuples, ranges, sets, dicts...) are already in
    memory, so tasks get the caller's own objects. Any other iterable is read
    once, and its inputs are read back from the store batch by batch while
    the tasks run, so memory does not grow with the number of inputs.
    """
    store.create_execution(record)
    in_memory: Sequence[Any] | None = None
    if isinstance(task_inputs, Collection):
        in_memory = task_inputs if isinstance(task_inputs, Sequence) else list(task_inputs)
        iterator: Iterator[Any] = iter(in_memory)
    else:
        iterator = iter(task_inputs)

    batches: list[_Batch] = []
    pending_writes: list[BatchRecord] = []
    position = 0
    size = FIRST_BATCH
    while True:
        if in_memory is not None:
            items = in_memory[position : position + size]
            if not isinstance(items, list):  # ranges and tuples slice to their own type
                items = list(items)
        else:
            items = list(itertools.islice(iterator, size))
        if not items:
            break
        payload = codec.encode_batch(items, position)
        count = len(items)
        batch_no = len(batches)
        batches.append(
            _Batch(
                batch_no=batch_no,
                first_position=position,
                states=bytearray(count),
                inputs=None if in_memory is None else in_memory[position : position + count],
            )
        )
        pending_writes.append(BatchRecord(batch_no, position, count, bytes(count), payload))
        if len(pending_writes) >= BATCHES_PER_WRITE:
            store.add_batches(record.id, pending_writes)
            pending_writes = []
        position += count
        # Aim each batch at TARGET_BATCH_BYTES, given the average input size so far.
        average = max(1.0, len(payload) / count)
        size = max(1, min(MAX_BATCH, int(TARGET_BATCH_BYTES / average)))
    if pending_writes:
        store.add_batches(record.id, pending_writes)
    store.record_flush(
        record.id,
        Flush(states={}, failures=(), results=(), total=position, finished=0, failed=0, inputs_complete=True),
    )
    return _Plan(batches=batches, reader=_PayloadReader(store, record.id, codec), total=position)


def create_resumed(
    store: Store,
    record: ExecutionRecord,
    parent: ExecutionRecord,
    codec: Codec,
) -> _Plan:
    """Create a resume of ``parent``: its finished inputs stay finished, the rest are pending."""
    store.create_execution(record)
    batches: list[_Batch] = []
    pending_writes: list[BatchRecord] = []
    total = finished = 0
    for stored in store.read_batches(parent.id):
        states = stored.states.translate(_FAILED_TO_PENDING)
        batches.append(_Batch(stored.batch_no, stored.first_position, bytearray(states)))
        pending_writes.append(BatchRecord(stored.batch_no, stored.first_position, stored.size, states))
        total += stored.size
        finished += states.count(FINISHED)
        if len(pending_writes) >= BATCHES_PER_WRITE * 8:  # no payloads: rows are small
            store.add_batches(record.id, pending_writes)
            pending_writes = []
    if pending_writes:
        store.add_batches(record.id, pending_writes)
    store.record_flush(
        record.id,
        Flush(states={}, failures=(), results=(), total=total, finished=finished, failed=0, inputs_complete=True),
    )
    reader = _PayloadReader(store, record.id, codec, record.input_source)
    return _Plan(batches=batches, reader=reader, total=total, finished=finished)


class _PayloadReader:
    """Reads batches' inputs back from the store, several batches per query.

    Used when inputs are not in memory (a generator, or a resume). The
    scheduler opens batches in order, so one query fetches the next
    READ_AHEAD batches that still have pending inputs; only their encoded
    bytes wait in memory, and each is decoded when its turn comes.
    """

    def __init__(self, store: Store, execution_id: str, codec: Codec, source: str | None = None) -> None:
        self._store = store
        self._execution_id = execution_id
        self._source = source or execution_id
        self._codec = codec
        self._fetched: dict[int, bytes] = {}

    def load(self, batches: Sequence[_Batch], index: int) -> Sequence[Any]:
        """Decoded inputs of ``batches[index]``."""
        batch_no = batches[index].batch_no
        if batch_no not in self._fetched:
            wanted = [batch_no]
            for later in batches[index + 1 :]:
                if len(wanted) >= READ_AHEAD:
                    break
                if PENDING in later.states:
                    wanted.append(later.batch_no)
            self._fetched = dict(self._store.read_payloads(self._execution_id, wanted))
        payload = self._fetched.pop(batch_no, None)
        # Name the execution that holds the inputs: a resume reads its parent's.
        where = f"batch {batch_no} of execution {self._source!r} in the store at {self._store.location}"
        if payload is None:
            raise StoreError(f"the inputs of {where} are missing")
        try:
            return self._codec.decode_batch(payload)
        except Exception as exc:  # a damaged payload: say where, never a bare pickle error
            raise StoreError(f"cannot decode the inputs of {where}: {type(exc).__name__}: {exc}") from exc


class _Scheduler:
    """Cuts pending inputs into chunks, batch by batch, in position order."""

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self._next_batch = 0
        self._returned: collections.deque[tuple[_Chunk, Sequence[Any]]] = collections.deque()
        self._batch: _Batch | None = None
        self._inputs: Sequence[Any] = ()
        self._offsets: Sequence[int] = ()
        self._cursor = 0

    def give_back(self, chunk: _Chunk, inputs: Sequence[Any]) -> None:
        """Return a chunk no lane started, to be handed out again first."""
        self._returned.append((chunk, inputs))

    def take(self, size: int) -> tuple[_Chunk, Sequence[Any]] | None:
        """Next chunk of at most ``size`` pending inputs, or None when none are left."""
        if self._returned:
            return self._returned.popleft()
        while self._cursor >= len(self._offsets):
            if not self._open_next_batch():
                return None
        assert self._batch is not None
        start = self._cursor
        stop = min(start + size, len(self._offsets))
        self._cursor = stop
        offsets = self._offsets[start:stop]
        if isinstance(offsets, range):
            inputs = self._inputs[offsets.start : offsets.stop]
        else:
            inputs = [self._inputs[offset] for offset in offsets]
        return _Chunk(self._batch, offsets), inputs

    def _open_next_batch(self) -> bool:
        batches = self._plan.batches
        while self._next_batch < len(batches):
            batch = batches[self._next_batch]
            self._next_batch += 1
            states = batch.states
            if PENDING not in states:
                continue
            if states.count(PENDING) == len(states):
                self._offsets = range(len(states))
            else:
                self._offsets = [i for i, state in enumerate(states) if state == PENDING]
            if batch.inputs is not None:
                self._inputs = batch.inputs
            else:
                self._inputs = self._plan.reader.load(batches, self._next_batch - 1)
            self._batch = batch
            self._cursor = 0
            return True
        self._batch = None
        self._inputs = ()
        self._offsets = ()
        return False


@dataclass(slots=True)
class _Outcomes:
    """Outcomes applied in memory but not yet flushed."""

    dirty: set[int] = field(default_factory=set)
    failures: list[FailureRow] = field(default_factory=list)
    results: list[tuple[int, bytes]] = field(default_factory=list)
    count: int = 0


class Coordinator:
    """Runs one execution's plan on a backend; the only writer to the store."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        execution_id: str,
        plan: _Plan,
        config: RunConfig,
        codec: Codec,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self._store = store
        self._backend = backend
        self._id = execution_id
        self._plan = plan
        self._config = config
        self._codec = codec
        self._on_progress = on_progress
        self._scheduler = _Scheduler(plan)
        self._max_chunk = min(MAX_BATCH, config.task_executions_before_flush)
        self._lanes = [_Lane(n, chunk_size=min(FIRST_CHUNK, self._max_chunk)) for n in range(config.number_of_workers)]
        self._in_flight: dict[int, _Chunk] = {}
        self._in_flight_inputs: dict[int, Sequence[Any]] = {}
        self._next_chunk_id = 0
        self._outcomes = _Outcomes()
        self._failed_here = 0  # failures in this execution (for max_failures)
        self._stopping = False
        self._stop_requested = STOP_REQUESTED.get()
        self._target_chunk_seconds = min(TARGET_CHUNK_SECONDS, config.flush_seconds / 4)
        self._flush_due = time.monotonic() + config.flush_seconds

    # -- the loop ---------------------------------------------------------

    def run(self, function: Callable[[Any], Any]) -> ExecutionStatus:
        """Run every pending input; flush; return the final status.

        Raises:
            BaseException: Whatever interrupted the run (KeyboardInterrupt,
                SystemExit, a store failure...), after recording what it can.
        """
        backend = self._backend
        try:
            backend.start(function, len(self._lanes), self._config.runner_settings(self._codec))
            self._loop()
        except BaseException as exc:
            self._end_early(exc)
            raise
        else:
            backend.shutdown(wait=True)
        status = ExecutionStatus.COMPLETED if self._pending() == 0 else ExecutionStatus.STOPPED
        self._flush(status=status, ended_at=time.time())
        return status

    def _loop(self) -> None:
        backend = self._backend
        threshold = self._config.task_executions_before_flush
        stop = self._stop_requested
        while True:
            if stop is not None and not self._stopping and stop.is_set():
                logger.info("execution %s stopping: a stop was requested", self._id)
                self._stopping = True
                backend.cancel()
            if not self._stopping:
                self._feed()
            if not self._in_flight:
                return
            # Wake at least every flush_seconds, even with nothing reported:
            # lanes deep in a long chunk have outcomes to collect.
            interrupt: BaseException | None = None
            for result in backend.poll(max(0.0, self._flush_due - time.monotonic())):
                try:
                    self._apply(result)
                except BaseException as exc:
                    # Take in the other results of this poll before raising:
                    # they are finished work, to be saved, not rerun.
                    interrupt = interrupt or exc
                # Per result, not per poll: a flush holds at most about
                # `threshold` outcomes (a chunk is never larger than it).
                if self._outcomes.count >= threshold:
                    self._flush()
            if interrupt is not None:
                raise interrupt
            if time.monotonic() >= self._flush_due:
                for partial in backend.progress():
                    self._apply(partial, final=False)
                self._flush()

    def _feed(self) -> None:
        # Round by round (every lane's first chunk, then second ones), so
        # with many lanes and few inputs no lane waits while another holds
        # queued work.
        for depth in range(1, 2 + self._backend.prefetch):
            for lane in self._lanes:
                if not lane.active or lane.in_flight >= depth:
                    continue
                taken = self._scheduler.take(lane.chunk_size)
                if taken is None:
                    return
                chunk, inputs = taken
                chunk.lane = lane.number
                chunk_id = self._next_chunk_id
                self._next_chunk_id += 1
                self._in_flight[chunk_id] = chunk
                self._in_flight_inputs[chunk_id] = inputs
                lane.in_flight += 1
                self._backend.submit(lane.number, chunk_id, inputs, self._budget(lane))

    def _budget(self, lane: _Lane) -> int:
        budget = self._config.max_worker_failures - lane.failures
        if self._config.max_failures is not None:
            budget = min(budget, self._config.max_failures - self._failed_here)
        return max(0, budget)

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
        if result.attempted:
            self._resize(lane, result)
        left = len(chunk.offsets) - result.attempted
        if left and not self._stopping and result.interrupt is None and (lane.active or result.attempted == 0):
            # Inputs the lane did not attempt go to another lane, unless the
            # lane stopped on its budget part way: by rule 4 the rest of the
            # chunk it was running stays pending.
            if result.attempted == 0:
                self._scheduler.give_back(chunk, inputs)
            else:
                self._scheduler.give_back(
                    _Chunk(chunk.batch, chunk.offsets[result.attempted :]), inputs[result.attempted :]
                )
        if result.interrupt is not None:
            raise result.interrupt

    def _record(self, chunk: _Chunk, result: ChunkResult) -> None:
        """Apply outcomes ``[chunk.applied, result.attempted)`` of a chunk."""
        batch = chunk.batch
        states = batch.states
        offsets = chunk.offsets
        begin, end = chunk.applied, result.attempted
        if isinstance(offsets, range):
            start = offsets.start
            states[start + begin : start + end] = _FINISHED_RUN[: end - begin]
        else:
            for offset in offsets[begin:end]:
                states[offset] = FINISHED
        first = batch.first_position
        outcomes = self._outcomes
        lane_number = result.lane
        new_failures = 0
        for index, failure in result.failures:
            if index < begin:
                continue
            new_failures += 1
            offset = offsets[index]
            states[offset] = FAILED
            outcomes.failures.append(
                FailureRow(
                    position=first + offset,
                    exc_type=failure.exc_type,
                    message=failure.message,
                    traceback=failure.traceback,
                    exception=failure.exception,
                    attempts=failure.attempts,
                    worker=lane_number,
                    failed_at=failure.failed_at,
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
        self._count_failures(self._lanes[lane_number], new_failures)
        if self._on_progress is not None:
            self._on_progress(attempted - new_failures, new_failures)

    def _count_failures(self, lane: _Lane, failures: int) -> None:
        if not failures:
            return
        lane.failures += failures
        self._failed_here += failures
        if lane.active and lane.failures >= self._config.max_worker_failures:
            lane.active = False
            logger.info(
                "worker %d of execution %s stopped: it saw %d failed inputs (max_worker_failures)",
                lane.number,
                self._id,
                lane.failures,
            )
        max_failures = self._config.max_failures
        if max_failures is not None and not self._stopping and self._failed_here >= max_failures:
            logger.info("execution %s stopping: %d failed inputs (max_failures)", self._id, self._failed_here)
            self._stopping = True
            self._backend.cancel()

    def _resize(self, lane: _Lane, result: ChunkResult) -> None:
        """Aim the lane's next chunk at TARGET_CHUNK_SECONDS of work."""
        per_input = result.elapsed / result.attempted
        wanted = int(self._target_chunk_seconds / per_input) if per_input > 0 else self._max_chunk
        # Grow gradually (a fast first input says little) but shrink at once.
        lane.chunk_size = max(1, min(wanted, lane.chunk_size * 8, self._max_chunk))

    def _pending(self) -> int:
        plan = self._plan
        return plan.total - plan.finished - plan.failed

    def _flush(
        self,
        *,
        status: ExecutionStatus | None = None,
        ended_at: float | None = None,
    ) -> None:
        outcomes = self._outcomes
        batches = self._plan.batches
        flush = Flush(
            states={batch_no: bytes(batches[batch_no].states) for batch_no in outcomes.dirty},
            failures=outcomes.failures,
            results=outcomes.results,
            total=self._plan.total,
            finished=self._plan.finished,
            failed=self._plan.failed,
            status=status,
            ended_at=ended_at,
        )
        self._store.record_flush(self._id, flush)
        self._outcomes = _Outcomes()
        self._flush_due = time.monotonic() + self._config.flush_seconds

    # -- ending early -----------------------------------------------------

    def _end_early(self, exc: BaseException) -> None:
        """Save what can be saved after ``exc`` cut the run short."""
        store_failed = isinstance(exc, StoreError)
        backend = self._backend
        try:
            backend.cancel()
            if not store_failed:
                # Lanes stop after their current input; take what they finished.
                deadline = time.monotonic() + INTERRUPT_GRACE
                while self._in_flight and (left := deadline - time.monotonic()) > 0:
                    for result in backend.poll(left):
                        self._apply_quietly(result)
        except BaseException:  # a second Ctrl-C while draining: save what we have
            logger.debug("draining lanes of execution %s was cut short", self._id, exc_info=True)
        finally:
            backend.shutdown(wait=False)
        interrupted = not isinstance(exc, Exception)
        status = ExecutionStatus.INTERRUPTED if interrupted else ExecutionStatus.ABORTED
        try:
            self._flush(status=status, ended_at=time.time())
        except BaseException:
            logger.error("could not save the last outcomes of execution %s", self._id, exc_info=True)
            record_end(self._store, self._id, status)

    def _apply_quietly(self, result: ChunkResult) -> None:
        if result.chunk_id not in self._in_flight:
            return
        self._stopping = True
        try:
            self._apply(result)
        except BaseException:  # another lane's interrupt; the first one is raised
            pass


def record_end(store: Store, execution_id: str, status: ExecutionStatus) -> None:
    """Mark an execution ended, with the counts of its last good flush, writing no outcomes.

    For runs that end where no full flush is possible: recording the inputs
    failed, or the final flush itself failed (a full disk, say). This small
    write may still succeed, so the execution does not look ``running``
    forever to readers on other hosts. Failing here is only logged: the
    caller is already raising the error that matters.
    """
    try:
        stored = store.get_execution(execution_id)
        store.record_flush(
            execution_id,
            Flush(
                states={},
                failures=(),
                results=(),
                total=stored.total,
                finished=stored.finished,
                failed=stored.failed,
                status=status,
                ended_at=time.time(),
            ),
        )
    except BaseException:
        logger.error("could not record the end of execution %s", execution_id, exc_info=True)
