"""The remote half of the Dask backend: what runs inside Dask worker processes.

Everything here is imported by Dask workers when they run a chunk, and
pickled by reference (``pylo.workers._dask_remote.run_chunk``), so it keeps
to what a worker needs: fetch the execution's job once, run the chunk in a
:class:`~pylo.workers._runner.LaneRunner`, and read the stop flag sparingly.
See :mod:`pylo.workers.dask` for the flow and the rules.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pylo._ratelimit import TokenBucket
from pylo.errors import InitializerFailed
from pylo.workers._initializer import run_initializer
from pylo.workers._runner import Abandoned, LaneRunner
from pylo.workers.base import ChunkResult, RunnerSettings

__all__ = ["Inputs", "Job", "forget_job", "job_name", "run_chunk", "stop_job"]

logger = logging.getLogger(__name__)

#: Seconds a worker waits for the scheduler to hand it an execution's job.
JOB_FETCH_SECONDS = 60.0
#: Executions whose job a worker process keeps in memory at once.
JOBS_KEPT = 4


@dataclass(frozen=True, slots=True)
class Job:
    """Everything a worker needs for every chunk of one execution; sent once."""

    function: Callable[[Any], Any]
    settings: RunnerSettings
    stop_name: str
    rate_per_lane: float | None


class _RemoteStop:
    """The stop flag of one execution in a worker process, shared by its chunks.

    The coordinator pushes a stop to every worker process (:func:`stop_job`,
    through ``client.run``), which sets this flag at once: a running chunk
    stops before its next input without asking the scheduler. The flag is
    backed by a ``distributed.Event`` too, read once when the process fetches
    the job (:meth:`check`), for a process that joined the cluster after the
    push. Reading the Event every 0.1 s cost the scheduler a round trip each
    time, taken from the CPU the chunks run on.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._event: Any = None
        self._set = False

    def bind(self) -> None:
        """Make the Event (and the worker's client) in a Dask task thread.

        ``get_client()`` finds the worker through the task's thread state.
        """
        if self._event is None:
            from distributed import Event

            event = Event(self._name)
            _ = event.client
            self._event = event

    def check(self) -> bool:
        """Read the Event (one round trip): True once the execution was told to stop."""
        if not self._set:
            try:
                self.bind()
                self._set = bool(self._event.is_set())
            except Exception:  # the scheduler is going away: the worker will stop anyway
                logger.debug("cannot read the stop event %s", self._name, exc_info=True)
        return self._set

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True


class _Held:
    """A job as a worker process keeps it, with the flag its chunks share and its setup."""

    __slots__ = ("job", "set_up", "setup_failed", "setup_lock", "stop")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.stop = _RemoteStop(job.stop_name)
        self.setup_lock = threading.Lock()
        self.set_up = False
        self.setup_failed: InitializerFailed | None = None

    def initialize(self) -> None:
        """Run the execution's initializer the first time this process runs one of its chunks.

        Other threads of the process wait for it, so no chunk runs before it.

        Raises:
            InitializerFailed: It raised, in this chunk or an earlier one.
        """
        settings = self.job.settings
        if settings.initializer is None:
            return
        with self.setup_lock:
            if not self.set_up:
                self.setup_failed = run_initializer(settings.initializer, settings.initargs, _this_worker())
                self.set_up = True
        if self.setup_failed is not None:
            failed = self.setup_failed
            raise InitializerFailed(
                failed.initializer, failed.worker, failed.type_name, failed.error_message, failed.traceback_text
            )


def _this_worker() -> str:
    """How a failure names this Dask worker process."""
    try:
        from distributed import get_worker

        return f"Dask worker {get_worker().address} (process {os.getpid()})"
    except Exception:  # not in a worker task (tests calling run_chunk directly)
        return f"Dask worker process {os.getpid()}"


_HELD: collections.OrderedDict[str, _Held] = collections.OrderedDict()
_FORGOTTEN: collections.OrderedDict[str, None] = collections.OrderedDict()
_HELD_LOCK = threading.Lock()


def job_name(token: str) -> str:
    return f"pylo-job-{token}"


def _held_job(token: str) -> _Held | None:
    """The job of execution ``token`` in this worker process; None once it has ended."""
    with _HELD_LOCK:
        held = _HELD.get(token)
        if held is not None:
            _HELD.move_to_end(token)
            return held
        if token in _FORGOTTEN:
            return None
    import cloudpickle
    from distributed import Variable

    # Fetched outside the lock: two threads may both fetch; both get the same job.
    payload = Variable(job_name(token)).get(timeout=JOB_FETCH_SECONDS)
    fetched = _Held(cloudpickle.loads(payload))
    # A process that was not in the cluster when the stop was pushed learns it here.
    fetched.stop.check()
    with _HELD_LOCK:
        held = _HELD.setdefault(token, fetched)
        while len(_HELD) > JOBS_KEPT:
            _HELD.popitem(last=False)
    return held


def forget_job(token: str) -> None:
    """Run on every worker when an execution ends: free its job, stop its stragglers."""
    with _HELD_LOCK:
        held = _HELD.pop(token, None)
        _FORGOTTEN[token] = None
        while len(_FORGOTTEN) > 256:
            _FORGOTTEN.popitem(last=False)
    if held is not None:
        held.stop.set()


async def stop_job(token: str) -> None:
    """Run on every worker when an execution stops taking inputs: its chunks stop before their next one.

    A coroutine, so that ``client.run`` can send it without waiting for the
    answers; it runs on the worker's event loop and only sets a flag.
    """
    with _HELD_LOCK:
        held = _HELD.get(token)
    if held is not None:
        held.stop.set()


class Inputs:
    """A chunk's inputs, wrapped so that Dask hands them to the task untouched.

    Dask looks inside list, tuple and dict arguments for futures to compute
    first (older versions also for keys and task tuples); inputs are data.
    """

    __slots__ = ("items",)

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items

    def __reduce__(self) -> tuple[type[Inputs], tuple[Sequence[Any]]]:
        return (Inputs, (self.items,))


def run_chunk(token: str, lane: int, chunk_id: int, wrapped: Inputs, budget: int) -> ChunkResult:
    """The Dask task: run one chunk of inputs in a lane runner and describe it.

    Raises:
        InitializerFailed: The execution's initializer raised in this process.
    """
    inputs = wrapped.items
    held = _held_job(token)
    if held is None:  # the execution ended while this task waited for a thread
        return ChunkResult(chunk_id, lane, 0, (), (), None, 0.0)
    job = held.job
    held.initialize()  # once per process and execution; raises InitializerFailed to the coordinator
    if held.stop.is_set():  # stopped while this task waited for a thread
        return ChunkResult(chunk_id, lane, 0, (), (), None, 0.0)
    limiter = None
    if job.rate_per_lane is not None:
        # Starts empty: a lane's chunks follow each other, and a full bucket
        # at every chunk start would let each lane exceed its share.
        limiter = TokenBucket(job.rate_per_lane, 1.0, [0.0, time.monotonic()])
    timeout = job.settings.timeout
    runner = LaneRunner(job.function, lane, job.settings, held.stop, None, limiter, watched=timeout is not None)
    if timeout is None:
        return _timed(runner, chunk_id, inputs, budget)
    return _run_watched(runner, chunk_id, inputs, budget, timeout)


def _timed(runner: LaneRunner, chunk_id: int, inputs: Sequence[Any], budget: int) -> ChunkResult:
    """Run the chunk in this thread; its result carries the thread's CPU time, which sizes the next chunk."""
    started = time.thread_time()
    result = runner.run(chunk_id, inputs, budget)
    return dataclasses.replace(result, cpu=time.thread_time() - started)


def _run_watched(runner: LaneRunner, chunk_id: int, inputs: Sequence[Any], budget: int, timeout: float) -> ChunkResult:
    """Run the chunk in a thread and give up on an input that runs past ``timeout``.

    A thread cannot be killed, so a stuck one is abandoned: the chunk ends
    with that input failed (TaskTimeout), and the thread runs on, its outcome
    ignored, until the task returns.
    """
    box: list[ChunkResult | BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            box.append(_timed(runner, chunk_id, inputs, budget))
        except Abandoned:
            pass  # the chunk was reported with this input timed out
        except BaseException as exc:  # a bug in pylo: hand it to the Dask task
            box.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"pylo-chunk-{chunk_id}", daemon=True)
    thread.start()
    interval = min(0.1, timeout / 4)
    while not done.wait(interval):
        given_up = runner.abandon_if_stuck(timeout, time.monotonic())
        if given_up is not None:
            logger.warning("a task ran past its timeout of %g s; its thread is abandoned", timeout)
            return given_up
    outcome = box[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
