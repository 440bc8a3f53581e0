"""Waiting for a resource before a node runs: ``@task(wait_for=probe, wait_timeout=seconds)``.

The probe is polled with exponential back-off (``initial`` seconds, doubling,
at most ``maximum``) until it returns a true value. The last wait is cut to
end at the deadline, so the probe always gets a last poll at the timeout;
if that one is not true either, :class:`~pylo.errors.ResourceUnavailable`
names the probe. Only the caller waits: the coordinator calls this in the
node's own worker, so other nodes go on.

A probe that **raises** counts as "not ready yet" (a service still starting
refuses connections), and polling goes on; when the time is up, the error
says what the last poll raised and is chained to it. ``KeyboardInterrupt``
and other ``BaseException``\\ s are not caught.

Built on tenacity: ``retry_if_result``, ``wait_exponential``, and a stop and a
wait cap that read an injectable clock, so tests never really wait.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, RetryError, Retrying, retry_if_result, wait_exponential
from tenacity.stop import stop_base, stop_never
from tenacity.wait import wait_base

from pylo.errors import ResourceUnavailable

__all__ = ["probe_name", "wait_for_resource", "wait_for_resource_async"]

logger = logging.getLogger(__name__)

#: Closer than this to the deadline counts as at it (float sums of waits).
_EPSILON = 1e-6


def probe_name(probe: Callable[..., Any]) -> str:
    """``module.qualname`` of a probe, or its repr (a ``functools.partial``, a callable object)."""
    qualname = getattr(probe, "__qualname__", None)
    module = getattr(probe, "__module__", None)
    if isinstance(qualname, str) and qualname:
        return f"{module}.{qualname}" if module else qualname
    return repr(probe)


def _check(probe: Any, timeout: Any, initial: Any, maximum: Any) -> float | None:
    if not callable(probe):
        raise TypeError(f"wait_for must be a callable returning true when the resource is ready, got {probe!r}")
    for name, value in (("initial", initial), ("maximum", maximum)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0 or math.isnan(timeout):
        raise ValueError(f"wait_timeout must be a number of seconds >= 0 or None (no limit), got {timeout!r}")
    return float(timeout)


class _Deadline(stop_base):
    """Stop once ``clock()`` has reached the deadline."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.deadline - self.clock() <= _EPSILON


class _UntilDeadline(wait_base):
    """A wait cut so that it ends at the deadline at the latest."""

    def __init__(self, wait: wait_base, deadline: float | None, clock: Callable[[], float]) -> None:
        self.wait = wait
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> float:
        wanted = self.wait(retry_state)
        if self.deadline is None:
            return wanted
        return max(0.0, min(wanted, self.deadline - self.clock()))


class _Poll:
    """Calls the probe; counts polls and keeps the last error (a raise is "not ready")."""

    def __init__(self, probe: Callable[[], Any], name: str) -> None:
        self.probe = probe
        self.name = name
        self.polls = 0
        self.last_error: BaseException | None = None

    def ready(self, value: Any) -> bool:
        self.last_error = None
        return bool(value)

    def failed(self, exc: Exception) -> bool:
        self.last_error = exc
        logger.debug("probe %s raised %s: %s; not ready", self.name, type(exc).__name__, exc)
        return False

    def __call__(self) -> bool:
        self.polls += 1
        try:
            value = self.probe()
        except Exception as exc:
            return self.failed(exc)
        return self.ready(value)

    def unavailable(self, timeout: float | None) -> ResourceUnavailable:
        last = None if self.last_error is None else f"{type(self.last_error).__name__}: {self.last_error}"
        return ResourceUnavailable(self.name, timeout, self.polls, last)


def _policy(
    cls: type[Retrying] | type[AsyncRetrying],
    timeout: float | None,
    sleep: Callable[[float], Any],
    clock: Callable[[], float],
    initial: float,
    maximum: float,
) -> Any:
    deadline = None if timeout is None else clock() + timeout
    return cls(
        retry=retry_if_result(lambda ready: not ready),
        wait=_UntilDeadline(wait_exponential(multiplier=initial, max=maximum), deadline, clock),
        stop=stop_never if deadline is None else _Deadline(deadline, clock),
        sleep=sleep,
    )


def wait_for_resource(
    probe: Callable[[], Any],
    timeout: float | None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    initial: float = 0.05,
    maximum: float = 2.0,
) -> int:
    """Poll ``probe()`` with back-off until it returns a true value.

    Args:
        probe: Called with no arguments; true when the resource is ready.
            An exception counts as not ready.
        timeout: Seconds to wait at most (``wait_timeout``); 0 polls once;
            None waits with no limit.
        sleep: How to wait (tests pass a fake).
        clock: Monotonic seconds (tests pass a fake that ``sleep`` advances).
        initial: The first wait; each next one doubles.
        maximum: The longest wait between two polls.

    Returns:
        How many polls were made (1 when it was ready at once).

    Raises:
        ResourceUnavailable: Still not ready at the timeout; names the probe,
            chained to the last poll's exception if it raised.
        TypeError: ``probe`` is not callable.
        ValueError: A negative or non-numeric ``timeout``, ``initial`` or ``maximum``.
    """
    limit = _check(probe, timeout, initial, maximum)
    poll = _Poll(probe, probe_name(probe))
    try:
        _policy(Retrying, limit, sleep, clock, initial, maximum)(poll)
    except RetryError:
        raise poll.unavailable(limit) from poll.last_error
    return poll.polls


async def wait_for_resource_async(
    probe: Callable[[], Any | Awaitable[Any]],
    timeout: float | None,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    initial: float = 0.05,
    maximum: float = 2.0,
) -> int:
    """:func:`wait_for_resource` for the asyncio workers: waits without blocking the loop.

    ``probe`` may be a plain function or an ``async def`` one. Arguments,
    return value and exceptions are those of :func:`wait_for_resource`.
    """
    limit = _check(probe, timeout, initial, maximum)
    poll = _Poll(probe, probe_name(probe))

    async def poll_async() -> bool:
        poll.polls += 1
        try:
            value = poll.probe()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            return poll.failed(exc)
        return poll.ready(value)

    try:
        await _policy(AsyncRetrying, limit, sleep, clock, initial, maximum)(poll_async)
    except RetryError:
        raise poll.unavailable(limit) from poll.last_error
    return poll.polls
