"""Checks every backend makes on what it is asked to run, before anything is recorded."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from pylo._codec import short_repr
from pylo.workers._pickling import dumps

__all__ = ["check_kind", "check_sendable", "task_name"]


def task_name(function: Callable[..., Any]) -> str:
    """``module:qualname`` of a task function (of the function a ``partial`` wraps)."""
    target = function
    while isinstance(target, functools.partial):
        target = target.func
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}:{qualname}"


def check_kind(task_function: Any, *, coroutines: bool) -> Callable[[Any], Any]:
    """Refuse what is not callable, and a function of the other kind (plain or ``async def``).

    Raises:
        TypeError: Not callable, or not the kind these workers run.
    """
    if not callable(task_function):
        raise TypeError(
            f"task_function must be callable, got {type(task_function).__name__} {short_repr(task_function)}"
        )
    is_async = inspect.iscoroutinefunction(task_function) or inspect.iscoroutinefunction(
        getattr(task_function, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )
    if is_async and not coroutines:
        raise TypeError(
            f"task_function {task_name(task_function)} is an async function, but these workers run "
            "plain functions; use Pylo.local_asyncio for coroutines"
        )
    if coroutines and not is_async:
        raise TypeError(
            f"task_function {task_name(task_function)} is not an async function; Pylo.local_asyncio "
            "runs `async def` functions (use local_multithread or local_multiprocess for plain ones)"
        )
    return task_function


def check_sendable(value: Any, what: str, where: str) -> None:
    """Refuse a function, retry policy or initializer that cannot travel to ``where`` (pickle, then cloudpickle).

    Raises:
        TypeError: Neither can pickle it; the message says why and what to do.
    """
    try:
        dumps(value)
    except TypeError as exc:
        shown = task_name(value) if what in ("task_function", "initializer") else short_repr(value)
        raise TypeError(
            f"{what} {shown} cannot be sent to {where}: {exc}. Define it at module level, or make sure "
            "everything it refers to (closure variables, defaults, bound objects; a retry policy's stop, "
            "wait and retry conditions) can be pickled: locks, open files, sockets and generators cannot"
        ) from exc
