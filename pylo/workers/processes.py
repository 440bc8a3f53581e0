"""Process lanes: one worker process per lane, for CPU-bound tasks.

Each lane owns one process, started with the chosen ``multiprocessing``
start method. Not a pool: a worker that dies must fail only the input it
was running, be replaced, and leave the other lanes alone, so the backend
starts, watches and ends its processes itself. Chunks travel, not inputs::

    parent: coordinator thread                          child: one per lane
    submit ─────────────(pickled chunk)──────► inbox ─► LaneRunner.run(chunk)
                                                          │ each input: index and
                        live state (shared memory) ◄──────┤ start time, no lock
                                                          │ each failure (and each
    poll, progress ◄────────────── outbox ◄── FAILED ─────┤ result with store_results)
                                          ◄── DONE ───────┘ each chunk
    poll also waits on each process's sentinel (it died) and on the running
    inputs' start times (a timeout: the process is killed, then treated as dead).

When a process dies, the parent reads what is left in its pipe, then the
live state: the input published last was running and fails with
:class:`~pylo.errors.WorkerCrashed` (or :class:`~pylo.errors.TaskTimeout`);
every input before it already has its outcome in the pipe. The failure
counts against the chunk's budget, and a new process takes the lane over
with the chunks still queued for it (each carries its own budget).

The parent writes chunks without blocking (what a full pipe does not take
waits for poll), so it never blocks on a full pipe to a worker that is
itself blocked on its full pipe back; and it needs no writer threads.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import selectors
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pylo._ratelimit import TokenBucket
from pylo.errors import PyloError, TaskTimeout, WorkerCrashed
from pylo.workers._pickling import dumps
from pylo.workers._process_handle import REAP_SECONDS, WorkerProcess, end_strays, how_it_ended, join_all
from pylo.workers._process_wire import (
    BROKEN,
    CHUNK_STARTED,
    DONE,
    FAILED,
    INIT_FAILED,
    INPUT_STARTED,
    KEY,
    KEY_SPAN,
    Kit,
    SharedFlag,
    decode_interrupt,
    frame,
)
from pylo.workers._runner import FailureGate, describe_failure
from pylo.workers.base import Backend, ChunkResult, Lanes, RunnerSettings, TaskFailure

__all__ = ["ProcessBackend", "ProcessLanes"]

logger = logging.getLogger(__name__)

START_METHODS = ("spawn", "fork", "forkserver")
_DIED, _SAID, _ROOM = "died", "said", "room"  # what a worker's handle being ready means
# poll(2) needs no kernel object per call, unlike epoll (the default selector).
_Selector = getattr(selectors, "PollSelector", selectors.SelectSelector)
#: A lane whose new processes die this many times in a row before running
#: anything will not do better: the execution stops with an error.
MAX_STILLBORN = 3
#: Seconds a shared lock may stay taken before a dead worker is blamed for it.
UNJAM_SECONDS = 0.5


@dataclass(slots=True)
class _Sent:
    """A chunk sent to a lane and not reported yet, with what was heard of it so far."""

    serial: int
    chunk_id: int
    size: int
    budget: int
    payload: bytes  # kept to send it again to a replacement process
    failures: list[tuple[int, TaskFailure]] = field(default_factory=list)
    results: list[tuple[int, bytes]] = field(default_factory=list)
    heard: int = 0  # FAILED/RESULT messages received
    last_index: int = -1  # the input the last one was about
    cap: int | None = None  # set when a message went missing: outcomes are known only below it

    def hear(self, seq: int) -> None:
        if seq != self.heard:
            self.miss()
        self.heard = seq + 1

    def miss(self) -> None:
        """A message was lost: trust only the inputs up to the last one heard of."""
        if self.cap is None:
            self.cap = self.last_index + 1


@dataclass(slots=True)
class _Lane:
    number: int
    worker: WorkerProcess | None = None
    chunks: collections.deque[_Sent] = field(default_factory=collections.deque)
    next_serial: int = 0
    stillborn: int = 0  # processes in a row that died before running a chunk


class ProcessBackend(Backend):
    """Runs each lane in a worker process of its own.

    Args:
        start_method: ``"spawn"``, ``"fork"``, ``"forkserver"``, or None for
            the platform's default.

    Raises:
        TypeError, ValueError: ``start_method`` is not one this platform offers.
    """

    name = "processes"
    sends_to = "worker processes"

    def __init__(self, start_method: str | None = None) -> None:
        self.start_method = self.check_start_method(start_method)
        # Any: typeshed's BaseContext lacks Process, which every real context has.
        self._context: Any = multiprocessing.get_context(self.start_method)

    def new_lanes(self) -> ProcessLanes:
        return ProcessLanes(self._context)

    @staticmethod
    def check_start_method(start_method: Any) -> str | None:
        """Validate ``start_method``: None, or one this platform offers.

        Raises:
            TypeError: Not a str.
            ValueError: Not a start method, or not available here.
        """
        if start_method is None:
            return None
        if not isinstance(start_method, str):
            raise TypeError(
                f"start_method must be None or one of {', '.join(map(repr, START_METHODS))}, "
                f"got {type(start_method).__name__} {start_method!r}"
            )
        if start_method not in START_METHODS:
            raise ValueError(
                f"start_method must be None or one of {', '.join(map(repr, START_METHODS))}, got {start_method!r}"
            )
        available = multiprocessing.get_all_start_methods()
        if start_method not in available:
            raise ValueError(
                f"start_method {start_method!r} is not available on this platform; "
                f"use one of {', '.join(map(repr, available))}"
            )
        return start_method


class ProcessLanes(Lanes):
    """One execution's lanes: a worker process each, replaced when it dies."""

    prefetch = 1

    def __init__(self, context: Any) -> None:
        self._context = context
        self._lanes: list[_Lane] = []
        self._ready: list[ChunkResult] = []
        self._errors: list[BaseException] = []
        self._settings = RunnerSettings()
        self._stop_cell = self._context.RawArray("b", 1)
        self._stop = SharedFlag(self._stop_cell)
        self._kit: Kit | None = None
        self._gate: FailureGate | None = None
        self._closed = False
        self._spawned: list[Any] = []  # every Process not yet released, whether or not a lane has it
        self._setup_failed: set[int] = set()  # lanes whose process's initializer raised

    # -- life cycle -------------------------------------------------------------

    def start(self, function: Callable[[Any], Any], lanes: int, settings: RunnerSettings) -> None:
        self._settings = settings
        function_bytes = dumps(function)
        try:
            settings_bytes = dumps(settings)
        except TypeError as exc:
            raise TypeError(f"the retry policy or initializer cannot be sent to worker processes: {exc}") from exc
        context = self._context
        gate_parts = bucket_parts = None
        if settings.max_failures is not None:
            counter, lock = context.RawValue("q", 0), context.Lock()
            gate_parts = (settings.max_failures, counter, lock)
            # The parent counts the failures of workers that die or time out.
            self._gate = FailureGate(settings.max_failures, self._stop, counter, lock)
        if settings.rate_limit is not None:
            bucket_state = context.RawArray("d", TokenBucket.initial_state(1.0))
            bucket_parts = (settings.rate_limit, bucket_state, context.Lock())
        self._kit = Kit(function_bytes, settings_bytes, self._stop_cell, gate_parts, bucket_parts)
        for number in range(lanes):
            lane = _Lane(number)
            self._lanes.append(lane)
            self._start_worker(lane)

    def _start_worker(self, lane: _Lane) -> None:
        """Give ``lane`` a new process, and send it the chunks the lane still has queued."""
        assert self._kit is not None
        worker = WorkerProcess.start(self._context, lane.number, self._kit, self._spawned)
        lane.worker = worker
        for chunk in lane.chunks:
            worker.send(chunk.payload)

    def submit(self, lane: int, chunk_id: int, inputs: Sequence[Any], budget: int) -> None:
        if len(inputs) >= KEY_SPAN:
            raise ValueError(f"a chunk holds at most {KEY_SPAN - 1} inputs, got {len(inputs)}")
        owner = self._lanes[lane]
        serial = owner.next_serial
        owner.next_serial += 1
        chunk = _Sent(serial, chunk_id, len(inputs), budget, frame(dumps((serial, chunk_id, budget, inputs))))
        owner.chunks.append(chunk)
        if owner.worker is not None:
            owner.worker.send(chunk.payload)
        elif self._closed or self._stop.is_set():
            self._answer_unrun(owner)
        else:
            self._start_worker(owner)  # its last process died with nothing queued: a new one now

    def poll(self, timeout: float | None) -> list[ChunkResult]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._errors:
                raise self._errors.pop(0)
            if self._ready:
                found, self._ready = self._ready, []
                return found
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            check = self._seconds_to_next_timeout()
            if check is not None:
                wait = check if wait is None else min(wait, check)
            events = self._wait(wait)
            if events is None:
                return []  # no process left to wait for
            dead: list[_Lane] = []
            for what, lane in events:
                worker = lane.worker
                if worker is None:
                    continue
                if what == _DIED:
                    dead.append(lane)
                elif what == _SAID:
                    self._drain(lane, worker)
                else:
                    worker.push()
            for lane in dead:
                if lane.worker is not None:
                    self._bury(lane, suspect=None)
            self._enforce_timeout()
            if not self._ready and not self._errors and deadline is not None and time.monotonic() >= deadline:
                return []

    def _wait(self, timeout: float | None) -> list[tuple[str, _Lane]] | None:
        """Wait for a message, a death, or room in a pipe with frames to send; None: nothing to wait for."""
        selector = _Selector()
        try:
            for lane in self._lanes:
                worker = lane.worker
                if worker is None:
                    continue
                selector.register(worker.process.sentinel, selectors.EVENT_READ, (_DIED, lane))
                if not worker.eof:
                    selector.register(worker.outbox, selectors.EVENT_READ, (_SAID, lane))
                if worker.unsent:
                    selector.register(worker.inbox, selectors.EVENT_WRITE, (_ROOM, lane))
            if not selector.get_map():
                return None
            return [key.data for key, _ in selector.select(timeout)]
        finally:
            selector.close()

    def progress(self) -> list[ChunkResult]:
        found = []
        for lane in self._lanes:
            worker = lane.worker
            if worker is None or not lane.chunks:
                continue
            # The key first: every outcome below it was sent before it was published.
            key = worker.state[KEY]
            chunk_started = worker.state[CHUNK_STARTED]
            self._drain(lane, worker)
            if not lane.chunks or key < 0:
                continue
            chunk = lane.chunks[0]
            serial, done = divmod(int(key), KEY_SPAN)
            if serial != chunk.serial:
                continue
            done = min(done, chunk.size if chunk.cap is None else chunk.cap)
            if done:
                found.append(self._result(lane, chunk, done, None, time.monotonic() - chunk_started))
        return found

    def cancel(self) -> None:
        self._stop.set()

    def shutdown(self, wait: bool) -> None:
        self._closed = True
        if not wait:
            self._stop.set()
        workers = [lane.worker for lane in self._lanes if lane.worker is not None]
        for lane in self._lanes:
            lane.worker = None
        if wait:
            for worker in workers:
                worker.send(frame(b""))  # the stop message, after any chunk still queued
            join_all(workers)
        # Whatever is left ends now, and is reaped: no orphan, no zombie.
        # SIGKILL: workers ignore SIGTERM (see _process_child).
        for worker in workers:
            if worker.process.is_alive():
                worker.process.kill()
        join_all(workers)
        for worker in workers:
            worker.release()
        end_strays(self._spawned)
        self._spawned.clear()

    # -- messages ---------------------------------------------------------------

    def _drain(self, lane: _Lane, worker: WorkerProcess) -> None:
        """Take in every message waiting in ``worker``'s pipe."""
        for message in worker.receive():
            self._take(lane, message)

    def _take(self, lane: _Lane, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == BROKEN:
            self._errors.append(PyloError(message[1]))
            self._closed = True  # a worker that cannot load the task: replacements would not either
            return
        if tag == INIT_FAILED:
            if not self._setup_failed:
                self._errors.append(message[1])  # the first lane's says it for all
            self._setup_failed.add(lane.number)
            self._closed = True  # its inputs stay pending; new processes would fail the same way
            return
        chunk = self._chunk(lane, message[1])
        if chunk is None:
            logger.debug("worker %d: a message about an unknown chunk was ignored: %r", lane.number, message[:3])
            return
        if tag == DONE:
            _, _, sent, attempted, interrupt, elapsed = message
            if sent != chunk.heard:
                chunk.miss()
            self._finish(lane, attempted, None if interrupt is None else decode_interrupt(interrupt), elapsed)
            return
        _, _, seq, index, payload = message
        chunk.hear(seq)
        chunk.last_index = index
        (chunk.failures if tag == FAILED else chunk.results).append((index, payload))

    def _chunk(self, lane: _Lane, serial: int) -> _Sent | None:
        """The lane's chunk ``serial``; chunks before it whose end was never heard are ended now."""
        chunks = lane.chunks
        while chunks and chunks[0].serial < serial:
            # Its DONE was lost (see _Sent.miss): report what is known of it.
            chunks[0].miss()
            self._finish(lane, chunks[0].size, None, 0.0)
        return chunks[0] if chunks and chunks[0].serial == serial else None

    def _result(
        self,
        lane: _Lane,
        chunk: _Sent,
        attempted: int,
        interrupt: BaseException | None,
        elapsed: float,
    ) -> ChunkResult:
        if chunk.cap is not None and chunk.cap < attempted:
            attempted = chunk.cap
        return ChunkResult(
            chunk_id=chunk.chunk_id,
            lane=lane.number,
            attempted=attempted,
            failures=[entry for entry in chunk.failures if entry[0] < attempted],
            results=[entry for entry in chunk.results if entry[0] < attempted],
            interrupt=interrupt,
            elapsed=elapsed,
        )

    def _finish(self, lane: _Lane, attempted: int, interrupt: BaseException | None, elapsed: float) -> None:
        """Report the lane's oldest chunk."""
        chunk = lane.chunks.popleft()
        self._ready.append(self._result(lane, chunk, attempted, interrupt, elapsed))

    def _answer_unrun(self, lane: _Lane) -> None:
        """Report the chunks of a lane without a process as not attempted, as a stopped runner would."""
        while lane.chunks:
            self._finish(lane, 0, None, 0.0)

    # -- deaths and timeouts ------------------------------------------------------

    def _seconds_to_next_timeout(self) -> float | None:
        timeout = self._settings.timeout
        if timeout is None:
            return None
        now = time.monotonic()
        soonest = timeout  # an input starting now cannot time out sooner
        for lane in self._lanes:
            if lane.worker is not None:
                started = lane.worker.state[INPUT_STARTED]
                if started > 0.0:
                    soonest = min(soonest, started + timeout - now)
        return max(soonest, 0.001)

    def _enforce_timeout(self) -> None:
        timeout = self._settings.timeout
        if timeout is None:
            return
        for lane in self._lanes:
            worker = lane.worker
            if worker is None or not lane.chunks:
                continue
            key = worker.state[KEY]  # before the start time: see _process_wire
            started = worker.state[INPUT_STARTED]
            if started > 0.0 and time.monotonic() - started >= timeout:
                worker.process.kill()
                self._bury(lane, suspect=(key, started))

    def _bury(self, lane: _Lane, suspect: tuple[float, float] | None) -> None:
        """Account for the end of ``lane``'s process, then give the lane a new one.

        ``suspect`` is the live state seen when the parent killed the process
        for a timeout; None when the process died by itself.
        """
        worker = lane.worker
        assert worker is not None
        worker.process.join(REAP_SECONDS)
        self._drain(lane, worker)  # it is dead: whatever it sent is in the pipe, complete or cut
        how = how_it_ended(worker.process.exitcode)
        key, started = worker.state[KEY], worker.state[INPUT_STARTED]
        chunk_started = worker.state[CHUNK_STARTED]
        pid = worker.process.pid
        lane.worker = None
        worker.release()
        self._spawned.remove(worker.process)
        lane.stillborn = lane.stillborn + 1 if key < 0 else 0
        self._unjam_locks()
        chunk = lane.chunks[0] if lane.chunks else None
        if chunk is not None and key >= 0 and int(key) // KEY_SPAN == chunk.serial:
            # It moved on between the look and the kill when the state differs:
            # the input it was killed in did not time out.
            stale = suspect is not None and suspect != (key, started)
            self._settle(lane, chunk, int(key) % KEY_SPAN, started, chunk_started, suspect is not None, stale, pid, how)
        elif suspect is None and lane.number not in self._setup_failed:
            logger.warning("worker %d: its process (pid %s) %s between chunks; it is replaced", lane.number, pid, how)
        if lane.stillborn >= MAX_STILLBORN:
            self._closed = True
            self._errors.append(
                PyloError(
                    f"worker {lane.number}: {lane.stillborn} processes in a row died before running any "
                    f"task (the last one {how}); see their output on stderr"
                )
            )
        if self._closed or self._stop.is_set():
            self._answer_unrun(lane)
        elif lane.chunks:
            self._start_worker(lane)
        # else: a new process starts when the lane gets a chunk again

    def _unjam_locks(self) -> None:
        """Free a shared lock that a process died holding, so the other lanes do not hang.

        Lanes hold these locks for a few arithmetic operations, so one that
        stays taken for UNJAM_SECONDS was held by the dead process.
        """
        assert self._kit is not None
        for parts in (self._kit.gate, self._kit.bucket):
            if parts is None:
                continue
            lock = parts[2]
            if not lock.acquire(timeout=UNJAM_SECONDS):
                logger.warning("a worker process died holding a shared lock; it is released")
            lock.release()

    def _settle(
        self,
        lane: _Lane,
        chunk: _Sent,
        done: int,
        started: float,
        chunk_started: float,
        killed: bool,
        stale: bool,
        pid: int | None,
        how: str,
    ) -> None:
        """End the chunk a dead process was running: what was heard, plus the input it died in."""
        cause: Exception | None = None
        if done >= chunk.size or chunk.last_index == done:
            attempted = min(done + 1, chunk.size)  # the input it was on had ended (its outcome is heard)
        elif started == 0.0:
            attempted = done  # between inputs, stopping: the runner went no further
        elif stale:
            attempted = done  # not its fault: it runs again
            logger.debug("worker %d moved on before it was stopped for a timeout", lane.number)
        else:
            attempted = done + 1
            if killed:
                cause = TaskTimeout(f"the task ran longer than its timeout of {self._settings.timeout:g} s")
                logger.warning(
                    "worker %d: a task ran past its timeout of %g s; its process (pid %s) was killed and replaced",
                    lane.number,
                    self._settings.timeout,
                    pid,
                )
            else:
                cause = WorkerCrashed(f"the worker process (pid {pid}) running this input {how}")
                logger.warning(
                    "worker %d: its process (pid %s) %s while running a task; it is replaced", lane.number, pid, how
                )
        if cause is not None:
            chunk.failures.append((done, describe_failure(cause, 1, self._settings)))
            if self._gate is not None:
                self._gate.count_failure()
        self._finish(lane, attempted, None, max(0.0, time.monotonic() - chunk_started))
