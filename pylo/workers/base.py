"""What a worker backend is: the protocols and the messages they exchange.

A :class:`Backend` is a kind of workers, one instance per Pylo. For each
execution it starts :class:`Lanes`: a fixed number of logical workers; the
coordinator submits chunks to a lane and collects :class:`ChunkResult`
messages. Each lane runs its chunks one after another, in submission order,
input by input, with a :class:`~pylo.workers._runner.LaneRunner`.
Scheduling, budgets and flushing are not the backend's business.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pylo._options import RunOptions

__all__ = ["Backend", "ChunkResult", "Lanes", "LocalBackend", "RunnerSettings", "TaskFailure"]


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """Frozen settings every lane runner of an execution shares.

    Attributes:
        store_exceptions: Keep type, message, traceback and the encoded
            exception of failures (False keeps none of them).
        store_results: Encode and return each finished input's result.
        retry: A tenacity ``Retrying`` object (copied per lane), or None.
        codec_name: Name of the codec that encodes exceptions and results.
        max_failures: Execution-wide failure limit that lanes enforce
            together as failures happen (None: no limit). The backend
            shares one :class:`~pylo.workers._runner.FailureGate` among its lanes.
        timeout: Seconds one input may take, retries and their back-off
            included, not counting a wait for the rate limit (None: no
            limit). Enforcing it is the backend's job: it knows how to stop
            a task.
        rate_limit: Task starts per second across all lanes (None: no
            limit). The backend shares one
            :class:`~pylo._ratelimit.TokenBucket` among its lanes.
        initializer: Called as ``initializer(*initargs)`` once per worker
            before its first input (see :mod:`pylo.workers._initializer`),
            or None.
        initargs: The initializer's arguments.
    """

    store_exceptions: bool = True
    store_results: bool = False
    retry: Any = None
    codec_name: str = "pickle"
    max_failures: int | None = None
    timeout: float | None = None
    rate_limit: float | None = None
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskFailure:
    """What a lane reports about one failed input.

    All text fields are None when exceptions are not stored.
    """

    exc_type: str | None
    message: str | None
    traceback: str | None
    exception: bytes | None
    attempts: int
    failed_at: float


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """The outcome of running (a prefix of) one chunk.

    Attributes:
        chunk_id: The id the coordinator gave the chunk.
        lane: The lane that ran it.
        attempted: Inputs ``[0, attempted)`` of the chunk ran to an outcome;
            the rest were not attempted and stay pending.
        failures: ``(index in chunk, failure)`` for each failed input.
        results: ``(index in chunk, encoded result)`` for each finished input
            when results are stored, else empty.
        interrupt: A ``BaseException`` that is not an ``Exception`` (such as
            ``KeyboardInterrupt`` or ``SystemExit``) raised by the task at
            index ``attempted``; the coordinator re-raises it.
        elapsed: Seconds the lane spent on the chunk.
        cpu: CPU seconds of the thread that ran the chunk, for lanes that
            report it (Dask: chunks are then sized by CPU time, see
            :mod:`pylo._sizing`), else None.
    """

    chunk_id: int
    lane: int
    attempted: int
    failures: Sequence[tuple[int, TaskFailure]]
    results: Sequence[tuple[int, bytes]]
    interrupt: BaseException | None
    elapsed: float
    cpu: float | None = None


class Lanes(abc.ABC):
    """One execution's lanes, started by :meth:`Backend.start`.

    Life cycle: any number of ``submit`` and ``poll`` calls, then
    ``shutdown`` once. Only the coordinator's thread calls these methods;
    several executions of one Pylo each have lanes of their own.
    """

    #: Chunks the coordinator may keep queued per lane beyond the running one.
    prefetch: int = 1
    #: Seconds of task work a chunk aims at once a lane's speed is known (the
    #: coordinator keeps it within a quarter of ``flush_seconds``): wall time,
    #: or CPU time for lanes that report it in ``ChunkResult.cpu`` (see
    #: :mod:`pylo._sizing`). Lanes whose every chunk pays a round trip through
    #: a scheduler aim higher.
    chunk_seconds: float = 0.05

    @abc.abstractmethod
    def start(self, function: Callable[[Any], Any], lanes: int, settings: RunnerSettings) -> None:
        """Start ``lanes`` lanes that will run ``function``; called once, by :meth:`Backend.start`."""

    @abc.abstractmethod
    def submit(self, lane: int, chunk_id: int, inputs: Sequence[Any], budget: int) -> None:
        """Queue a chunk on ``lane`` without waiting for it.

        ``budget`` is how many of the chunk's inputs may fail before the lane
        stops attempting the rest of it. The coordinator keeps the budgets of
        a lane's chunks in flight within what the lane has left, so a lane
        keeps nothing about budgets between chunks.
        """

    @abc.abstractmethod
    def poll(self, timeout: float | None) -> list[ChunkResult]:
        """Wait up to ``timeout`` seconds (None: forever) for results.

        Returns every result available once at least one is, or an empty
        list when the timeout passed.
        """

    def progress(self) -> list[ChunkResult]:
        """Partial results of chunks still running, where the lanes can tell.

        Each result is cumulative from the chunk's start, like a final one,
        with ``interrupt`` None. The coordinator calls this when a flush is
        due by time, so that inputs finished early in a long chunk become
        durable without waiting for the chunk to end. The default knows of
        nothing.
        """
        return []

    @abc.abstractmethod
    def cancel(self) -> None:
        """Ask every lane to stop after its current input.

        Chunks that are cut short report the inputs they attempted.
        """

    @abc.abstractmethod
    def shutdown(self, wait: bool) -> None:
        """Stop the lanes and free their resources.

        With ``wait`` False, lanes stuck in a task are abandoned, never
        waited for.
        """


class Backend(abc.ABC):
    """A kind of workers: made once per Pylo, it starts the lanes of each execution.

    A backend instance owns what is particular to its workers: what it can
    run (:meth:`check_function`, :meth:`check_options`), how lanes start
    (:meth:`start`, which may be called from several threads at once for
    executions running side by side), and what it holds for the Pylo's
    lifetime (:meth:`release`). A new kind of workers is one module with a
    ``Backend`` and a ``Lanes`` subclass, and one short ``Pylo`` constructor.
    """

    #: Name shown in messages and ``repr`` (``"threads"``, ``"processes"``...).
    name: str = "workers"
    #: True when the backend runs ``async def`` task functions (and only those).
    runs_coroutines: bool = False
    #: Where the task function and the retry policy must travel, for messages;
    #: None when they stay in this process.
    sends_to: str | None = None

    def check_function(self, function: Callable[[Any], Any]) -> None:
        """Refuse, before anything is recorded, a function these workers cannot run.

        The default checks the kind of function (plain or ``async def``) and,
        when ``sends_to`` is set, that it can be sent there.

        Raises:
            TypeError: The function cannot be run by these workers; the
                message says why and what to do.
        """
        from pylo.workers._checks import check_kind, check_sendable

        check_kind(function, coroutines=self.runs_coroutines)
        if self.sends_to is not None:
            check_sendable(function, "task_function", self.sends_to)

    def check_options(self, options: RunOptions) -> None:
        """Refuse options these workers cannot honour (for example an ``AsyncRetrying`` on threads).

        Raises:
            TypeError: The retry policy is not the tenacity flavour these
                workers call, an ``async def`` initializer for workers that
                run plain functions, or a retry policy, initializer or
                initargs that cannot be sent to them.
        """
        from pylo._options import check_retry
        from pylo.workers._checks import check_sendable, task_name
        from pylo.workers._initializer import is_async_callable

        check_retry(options.retry, asynchronous=self.runs_coroutines)
        if options.initializer is not None and not self.runs_coroutines and is_async_callable(options.initializer):
            raise TypeError(
                f"initializer {task_name(options.initializer)} is an async function, but {self.name} workers "
                "call it as a plain function; make it a plain def (Pylo.local_asyncio awaits async initializers)"
            )
        if self.sends_to is None:
            return
        if options.retry is not None:
            check_sendable(options.retry, "retry", self.sends_to)
        if options.initializer is not None:
            check_sendable(options.initializer, "initializer", self.sends_to)
            from pylo._codec import short_repr
            from pylo.workers._pickling import dumps

            try:
                dumps(options.initargs)
            except TypeError as exc:
                raise TypeError(
                    f"initargs {short_repr(options.initargs)} cannot be sent to {self.sends_to}: {exc}. "
                    "Pass what describes the resource (a path, a URL, numbers) and open it in the initializer"
                ) from exc

    @abc.abstractmethod
    def new_lanes(self) -> Lanes:
        """Lanes for one execution, not started yet."""

    def start(self, function: Callable[[Any], Any], lanes: int, settings: RunnerSettings) -> Lanes:
        """Start ``lanes`` lanes that will run ``function`` for one execution.

        Safe to call from several threads at once: each execution gets lanes
        of its own.

        Raises:
            BaseException: Whatever interrupted the start; what was started
                is ended again before this raises.
        """
        made = self.new_lanes()
        try:
            made.start(function, lanes, settings)
        except BaseException:
            made.shutdown(wait=False)
            raise
        return made

    def release(self) -> None:  # noqa: B027 - an optional hook: the default has nothing to free
        """Free what this backend holds, when its Pylo closes (a Dask client it made, say)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class LocalBackend(Backend):
    """A backend whose lanes run in threads of this process (threads, asyncio).

    Args:
        join_timeout: Longest wait, at the end of an execution, for a lane's
            thread to end; a thread stuck in a task is abandoned after it.
    """

    #: Makes one execution's lanes from the join timeout.
    lanes_class: Callable[[float], Lanes]

    def __init__(self, *, join_timeout: float = 5.0) -> None:
        self.join_timeout = join_timeout

    def new_lanes(self) -> Lanes:
        return self.lanes_class(self.join_timeout)
