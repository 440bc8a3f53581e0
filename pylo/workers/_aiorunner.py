"""The async twin of :class:`~pylo.workers._runner.LaneRunner`: awaits coroutines.

A lane is one coroutine of the backend's event loop, so ``await task(item)``
*is* the lane's one input in flight. The bookkeeping (budgets, the live view
for ``progress()``, failure records, result encoding) is inherited from
:class:`~pylo.workers._runner.BaseLaneRunner`; only the calling differs.

Cancellation: a ``CancelledError`` is pylo's own only while the backend shuts
down (``closing`` is set) or when an input ran past its ``timeout``: the task
then runs in an asyncio task of its own, which the runner cancels, and a task
that swallows that cancellation is abandoned (see
:meth:`AsyncLaneRunner._call_within_timeout`). Any other ``CancelledError``
comes from the task itself (it awaited something that was cancelled, raised
one, or cancelled itself): the input fails with it, like with any exception,
and the lane goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from pylo._ratelimit import TokenBucket
from pylo.errors import TaskTimeout
from pylo.workers._runner import BaseLaneRunner, FailureGate, StopFlag, _Interrupted, _Live
from pylo.workers.base import ChunkResult, RunnerSettings, TaskFailure

__all__ = ["AsyncLaneRunner"]

logger = logging.getLogger(__name__)

#: Seconds a task cancelled at its timeout gets to end before it is abandoned.
ABANDON_GRACE = 1.0


def _ignore_outcome(task: asyncio.Task[Any]) -> None:
    """Retrieve an abandoned or late task's outcome, so that asyncio does not log it as lost."""
    if task.done() and not task.cancelled():
        task.exception()


class AsyncLaneRunner(BaseLaneRunner):
    """Runs the chunks of one lane, in order, awaiting an ``async def`` function.

    Args:
        function: The task; ``function(item)`` returns an awaitable.
        lane: The lane's number.
        settings: The execution's runner settings.
        stop: Set when lanes must stop before their next input.
        closing: Set (in the loop) just before the backend cancels its lanes,
            so a runner can tell that cancellation from one a task causes.
        gate: The shared ``max_failures`` gate, or None.
        limiter: The shared rate-limit bucket, or None.
    """

    _quiet_files = frozenset({*BaseLaneRunner._quiet_files, __file__})

    def __init__(
        self,
        function: Callable[[Any], Any],
        lane: int,
        settings: RunnerSettings,
        stop: StopFlag,
        closing: StopFlag,
        gate: FailureGate | None = None,
        limiter: TokenBucket | None = None,
    ) -> None:
        super().__init__(function, lane, settings, stop, gate, limiter)
        self._closing = closing
        self._timeout = settings.timeout
        self._warned_blocking = False

    async def run(self, chunk_id: int, inputs: Sequence[Any], budget: int) -> ChunkResult:
        """Run ``inputs`` in order until done, out of budget, or stopped.

        Raises:
            asyncio.CancelledError: The backend is shutting down; the chunk
                is abandoned unreported (the coordinator no longer listens).
        """
        live = self._open_chunk(chunk_id, budget)
        if live is None:
            return self._close_chunk(0)
        interrupt: BaseException | None = None
        try:
            attempted = await self._run(inputs, live, self._fast(self._timeout))
        except _Interrupted as stop:
            attempted, interrupt = stop.attempted, stop.cause
        return self._close_chunk(attempted, interrupt)

    async def _run(self, inputs: Sequence[Any], live: _Live, plain: bool) -> int:
        """The lane's loop; ``plain`` when a bare ``await`` per input will do (the fast path)."""
        function = self._function
        is_stopped = self._stop.is_set
        index = 0
        try:
            for index, item in enumerate(inputs):
                live.done = index
                if is_stopped():
                    return index
                if not plain:
                    if self._outcome(live, index, *await self._attempt(item)):
                        return index + 1
                    continue
                try:
                    await function(item)
                    continue
                except Exception as exc:
                    failure = self.failure(exc, 1)
                except asyncio.CancelledError as exc:
                    if self._closing.is_set():
                        raise
                    failure = self._cancelled_by_task(exc, 1)
                if self._note_failure(live, index, failure):
                    return index + 1
        except asyncio.CancelledError:
            raise  # pylo's own shutdown: not the task's interrupt
        except BaseException as exc:
            raise _Interrupted(index, exc) from None
        return len(inputs)

    async def _attempt(self, item: Any) -> tuple[TaskFailure | None, Any]:
        """Run one input: its rate-limit wait, then the task with retries, within its timeout."""
        tries = [0]  # attempts of this input, for its failure record
        try:
            if self._limiter is not None:
                # One bucket for every lane; the loop is one thread, so no lock.
                delay = self._limiter.reserve()
                if delay > 0:
                    await asyncio.sleep(delay)
            if self._timeout is None:
                return await self._call(item, tries)
            return await self._call_within_timeout(item, tries, self._timeout)
        except asyncio.CancelledError as exc:
            if self._closing.is_set():
                raise
            return self._cancelled_by_task(exc, max(1, tries[0])), None

    async def _call_within_timeout(self, item: Any, tries: list[int], timeout: float) -> tuple[TaskFailure | None, Any]:
        """Await the task in an asyncio task of its own, so that the lane never waits past ``timeout``.

        Past it the task is cancelled and gets ABANDON_GRACE seconds to end.
        A task that swallows its cancellation and goes on is abandoned, as a
        thread lane abandons a stuck thread: it keeps running on the loop
        until it returns (or the execution ends), its outcome ignored, while
        the lane goes on with its next input.
        """
        loop = asyncio.get_running_loop()
        took: list[float] = []

        async def call() -> tuple[TaskFailure | None, Any]:
            # Timed from the task's own start to its own end: a neighbour
            # that blocks the loop around them must not make it look late.
            began = loop.time()
            outcome = await self._call(item, tries)
            took.append(loop.time() - began)
            return outcome

        attempt = loop.create_task(call(), name=f"pylo-input-{self._lane}")
        try:
            done, _ = await asyncio.wait({attempt}, timeout=timeout)
        except asyncio.CancelledError:
            attempt.cancel()  # the lane is being cancelled: the input goes with it
            raise
        if not done:
            attempt.cancel()
            done, _ = await asyncio.wait({attempt}, timeout=ABANDON_GRACE)
            if not done:
                self._warn_abandoned()
            attempt.add_done_callback(_ignore_outcome)
            return self._timed_out(tries), None
        if took and took[0] > timeout:
            # It never yielded to the loop in time to be cancelled: its
            # outcome came too late to count, as on other backends.
            self._warn_blocking()
            _ignore_outcome(attempt)
            return self._timed_out(tries), None
        # A CancelledError the task raised (or caused by cancelling itself) comes out here.
        return attempt.result()

    async def _call(self, item: Any, tries: list[int]) -> tuple[TaskFailure | None, Any]:
        """Await the task on one input, with retries when configured."""
        if self._retry is None:
            tries[0] = 1
            try:
                return None, await self._function(item)
            except Exception as exc:
                return self.failure(exc, 1), None
        from tenacity import RetryError

        value = None
        try:
            # Back-off sleeps are the policy's asyncio.sleep: they hold only this lane.
            async for attempt in self._retry:
                with attempt:
                    tries[0] += 1
                    value = await self._function(item)
        except RetryError as gave_up:
            return self._gave_up(gave_up, tries[0]), None
        except Exception as exc:  # the policy re-raised the task's own exception
            return self.failure(exc, tries[0]), None
        return None, value

    def _timed_out(self, tries: list[int]) -> TaskFailure:
        message = f"the task ran longer than its timeout of {self._timeout:g} s"
        return self.failure(TaskTimeout(message), max(1, tries[0]))

    def _cancelled_by_task(self, exc: asyncio.CancelledError, attempts: int) -> TaskFailure:
        """Fail an input whose task raised a CancelledError pylo did not cause."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # The task cancelled its own lane; the request is handled here,
            # so later timeouts of this lane count cancellations from zero.
            task.uncancel()
        return self.failure(exc, attempts)

    def _warn_abandoned(self) -> None:
        logger.warning(
            "worker %d: a task went on for %g s after it was cancelled at its timeout of %g s; its input "
            "failed with TaskTimeout and the task is abandoned: it keeps running on the event loop, its "
            "outcome ignored (a task must not swallow asyncio.CancelledError)",
            self._lane,
            ABANDON_GRACE,
            self._timeout,
        )

    def _warn_blocking(self) -> None:
        if not self._warned_blocking:
            self._warned_blocking = True
            logger.warning(
                "worker %d: a task ended after its timeout of %g s before the loop could cancel it, and "
                "its input failed with TaskTimeout; a task that blocks the event loop cannot be cancelled "
                "(await I/O, or run blocking calls with asyncio.to_thread)",
                self._lane,
                self._timeout,
            )
