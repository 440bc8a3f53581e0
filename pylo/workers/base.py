"""What a worker backend is: the protocol and the messages it exchanges.

A backend only runs chunks. It owns a fixed number of *lanes* (logical
workers); the coordinator submits chunks to a lane and collects
:class:`ChunkResult` messages. Each lane runs its chunks one after another,
in submission order, input by input, with a :class:`~pylo.workers._runner.LaneRunner`.
Scheduling, budgets and flushing are not the backend's business.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Backend", "ChunkResult", "RunnerSettings", "TaskFailure"]


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
    """

    store_exceptions: bool = True
    store_results: bool = False
    retry: Any = None
    codec_name: str = "pickle"
    max_failures: int | None = None
    timeout: float | None = None
    rate_limit: float | None = None


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
    """

    chunk_id: int
    lane: int
    attempted: int
    failures: Sequence[tuple[int, TaskFailure]]
    results: Sequence[tuple[int, bytes]]
    interrupt: BaseException | None
    elapsed: float


class Backend(abc.ABC):
    """Runs chunks of inputs on a fixed number of lanes.

    Life cycle: ``start`` once, any number of ``submit`` and ``poll`` calls,
    then ``shutdown`` once (also after a failed ``start``). Only the
    coordinator's thread calls these methods.
    """

    #: Chunks the coordinator may keep queued per lane beyond the running one.
    prefetch: int = 1
    #: True when the backend runs ``async def`` task functions (and only those).
    runs_coroutines: bool = False

    @classmethod  # noqa: B027 - an optional hook: the default accepts everything
    def check_function(cls, function: Callable[[Any], Any]) -> None:
        """Refuse, before anything is recorded, a function these lanes cannot run.

        For example a process backend checks that the function can be sent
        to another process. The default accepts any callable.

        Raises:
            TypeError: The function cannot be run by this backend; the
                message says why and what to do.
        """

    @classmethod  # noqa: B027 - an optional hook: the default has nothing to free
    def release(cls, options: Mapping[str, Any]) -> None:
        """Free what was made for these backend options, when the Pylo object closes.

        For example the Dask backend closes a client it created from a
        scheduler address (never one the user passed in). The default has
        nothing to free.
        """

    @abc.abstractmethod
    def start(
        self,
        function: Callable[[Any], Any],
        lanes: int,
        settings: RunnerSettings,
    ) -> None:
        """Start ``lanes`` lanes that will run ``function``."""

    @abc.abstractmethod
    def submit(self, lane: int, chunk_id: int, inputs: Sequence[Any], budget: int) -> None:
        """Queue a chunk on ``lane`` without waiting for it.

        ``budget`` is how many more failures the lane may see; the lane stops
        attempting inputs once it has seen that many (counting failures in
        chunks queued before this one).
        """

    @abc.abstractmethod
    def poll(self, timeout: float | None) -> list[ChunkResult]:
        """Wait up to ``timeout`` seconds (None: forever) for results.

        Returns every result available once at least one is, or an empty
        list when the timeout passed.
        """

    def progress(self) -> list[ChunkResult]:
        """Partial results of chunks still running, where the backend can tell.

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
