"""Per-worker setup: the ``initializer`` each worker calls once, before its first input.

``initializer(*initargs)`` has the meaning it has for ``multiprocessing.Pool``
and ``concurrent.futures``: it runs once in each worker, before the worker
runs any input, and leaves behind what the worker's tasks use (a database
connection in a module global, a ``threading.local`` or a ``ContextVar``).
What a worker is, per backend:

=========  ============================================================
threads    each lane's thread (and the thread that replaces one after a timeout)
processes  each worker process (and each process that replaces a dead one)
asyncio    each lane's coroutine; an ``async def`` initializer is awaited
dask       each Dask worker process, once per execution, before the first
           chunk of the execution it runs
=========  ============================================================

An initializer that raises leaves its worker unable to run inputs: the
worker runs none, the backend reports :class:`~pylo.errors.InitializerFailed`
to the coordinator once, and the execution ends ``aborted`` with the inputs
no worker ran still pending.

The options record the initializer as data (:func:`describe_initializer`),
so that ``pylo resume`` can import it again by name.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from typing import Any

from pylo._codec import short_repr
from pylo._tracebacks import exception_text, qualified_name, safe_str
from pylo.errors import InitializerFailed
from pylo.workers._checks import task_name

__all__ = [
    "CUSTOM_ARGS",
    "await_initializer",
    "check_initializer",
    "describe_initializer",
    "import_path",
    "is_async_callable",
    "run_initializer",
]

#: How initargs that are not JSON values are recorded.
CUSTOM_ARGS = "custom"


def is_async_callable(function: Any) -> bool:
    """True for an ``async def`` function (or an object whose ``__call__`` is one), partials unwrapped."""
    target = function
    while isinstance(target, functools.partial):
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    )


def check_initializer(initializer: Any, initargs: Any) -> None:
    """Refuse an initializer that is not callable, or initargs that are not a tuple.

    Raises:
        TypeError: ``initializer`` is not callable or None, or ``initargs``
            is not a tuple.
        ValueError: ``initargs`` given without an initializer.
    """
    if initializer is not None and not callable(initializer):
        raise TypeError(
            f"initializer must be a callable (or None), got {type(initializer).__name__} {short_repr(initializer)}"
        )
    if not isinstance(initargs, tuple):
        raise TypeError(
            f"initargs must be a tuple of arguments for the initializer, such as (path,), "
            f"got {type(initargs).__name__} {short_repr(initargs)}"
        )
    if initializer is None and initargs:
        raise ValueError(f"initargs {short_repr(initargs)} were given without an initializer to pass them to")


def import_path(function: Any) -> str | None:
    """``module:qualname`` when that name finds ``function`` again in an imported module, else None.

    None for a lambda, a function defined inside another, a ``partial``, a
    callable object, and anything of ``__main__`` (another process cannot
    import it by that name).
    """
    module_name = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    if module_name == "__main__":
        return None
    target: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return f"{module_name}:{qualname}" if target is function else None


def _json_args(initargs: tuple[Any, ...]) -> list[Any] | str:
    """``initargs`` as a JSON list when they are JSON values that read back equal, else CUSTOM_ARGS."""
    values = list(initargs)
    try:
        if json.loads(json.dumps(values)) == values:
            return values
    except (TypeError, ValueError):
        pass
    return CUSTOM_ARGS


def describe_initializer(initializer: Any, initargs: tuple[Any, ...]) -> dict[str, Any] | None:
    """What an execution record keeps of its initializer (a stored format: keep the keys).

    None without an initializer; else ``{"name": "module:qualname"`` (for
    people), ``"path": "module:qualname" | None`` (None: it cannot be
    imported by name), ``"args": [JSON values] | "custom"}``.
    """
    if initializer is None:
        return None
    return {"name": task_name(initializer), "path": import_path(initializer), "args": _json_args(initargs)}


def _failed(initializer: Callable[..., Any], worker: str, exc: Exception) -> InitializerFailed:
    # The first frame is this module's call of the initializer: noise to the user.
    text = exception_text(exc, frozenset({__file__}))
    failed = InitializerFailed(task_name(initializer), worker, qualified_name(type(exc)), safe_str(exc), text)
    failed.__cause__ = exc
    exc.__traceback__ = None  # frames pin the initializer's locals in memory
    return failed


def run_initializer(
    initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], worker: str
) -> InitializerFailed | None:
    """Call the initializer, if any; the failure to report when it raised, else None."""
    if initializer is None:
        return None
    try:
        initializer(*initargs)
    except Exception as exc:
        return _failed(initializer, worker, exc)
    return None


async def await_initializer(
    initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], worker: str
) -> InitializerFailed | None:
    """Like :func:`run_initializer`, awaiting what an ``async def`` initializer returns.

    Awaited in the caller's task, so a ``ContextVar`` the initializer sets
    is seen by the tasks that run in that task afterwards.
    """
    if initializer is None:
        return None
    try:
        made = initializer(*initargs)
        if inspect.isawaitable(made):
            await made
    except Exception as exc:
        return _failed(initializer, worker, exc)
    return None
