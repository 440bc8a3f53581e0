"""One picklable callable per node: the task's function with its context and its rate key.

The coordinator builds it once per node and hands it to whatever runs the
node (a worker thread, a process, asyncio, a Dask task, or a batch node's
execution, which calls it once per input)::

    prepare_call(function, context=..., limits=..., rate_key=...)
        └─ RateLimitedCall(limits, key)        each call (each attempt of each
              └─ ContextCall(function, ctx)     input) takes a token, then runs
                                                function(ctx', *args)

Waiting for a resource is not in here: it happens once per node, before the
node starts (see :func:`~pylo.pipeline._resources.wait_for_resource`), not
once per input or per attempt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pylo._ratekeys import KeyedRateLimits
from pylo.pipeline._context import TaskContext, bind_context

__all__ = ["AsyncRateLimitedCall", "RateLimitedCall", "prepare_call"]


def _is_async(function: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


class RateLimitedCall:
    """``function(*args, **kwargs)`` after a token from ``limits``' bucket ``key``; picklable.

    Every call takes a token: a retried input is one more start against the
    limited service.
    """

    __slots__ = ("function", "key", "limits")

    def __init__(self, function: Callable[..., Any], limits: KeyedRateLimits, key: str) -> None:
        if key not in limits:
            raise KeyError(f"no rate limit for key {key!r}; the run's keys are {sorted(limits.limits)}")
        self.function = function
        self.limits = limits
        self.key = key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.limits.acquire(self.key)
        return self.function(*args, **kwargs)

    def __reduce__(self) -> tuple[type[RateLimitedCall], tuple[Any, ...]]:
        return (type(self), (self.function, self.limits, self.key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.function!r}, key={self.key!r})"


class AsyncRateLimitedCall(RateLimitedCall):
    """:class:`RateLimitedCall` for coroutine functions: waits for the token without blocking the loop."""

    __slots__ = ()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        await self.limits.acquire_async(self.key)
        return await self.function(*args, **kwargs)


def prepare_call(
    function: Callable[..., Any],
    *,
    context: TaskContext | None = None,
    limits: KeyedRateLimits | None = None,
    rate_key: str | None = None,
) -> Callable[..., Any]:
    """The callable to run for a node: ``function`` with its context and rate limit, picklable.

    Args:
        function: The task's function.
        context: The node's context when the task has ``with_context=True``
            (it is then passed first), else None.
        limits: The run's buckets (:meth:`KeyedRateLimits.create`), when the
            node has a rate key.
        rate_key: The node's bucket (:func:`~pylo._ratekeys.bucket_key`), or None.

    Returns:
        ``function`` itself when there is neither; else a wrapper, a
        coroutine function when ``function`` is one.

    Raises:
        ValueError: ``rate_key`` without ``limits``.
        KeyError: ``rate_key`` is not one of ``limits``' keys.
    """
    call: Callable[..., Any] = function if context is None else bind_context(function, context)
    if rate_key is None:
        return call
    if limits is None:
        raise ValueError(f"rate_key {rate_key!r} needs the run's KeyedRateLimits, got limits=None")
    if _is_async(function):
        return AsyncRateLimitedCall(call, limits, rate_key)
    return RateLimitedCall(call, limits, rate_key)
