"""What a ``@task(with_context=True)`` receives first: :class:`TaskContext`.

The context is a frozen record: the run id, the node key, the task name, the
attempt number, the run's configuration (read-only, nested mappings too), and
the trace id when tracing is on. It pickles (the configuration included), so
the coordinator can send it with the task to process and Dask workers::

    coordinator                                   any worker
    TaskContext(run_id, node_key, ...) ─► ContextCall(function, context)
      single node: context.for_attempt(n)          │ pickled with the chunk
      batch node: retry = counting_attempts(retry) ▼
                                                 function(context', input)
                                                 (context' carries the input's attempt)

A batch node's inputs are retried inside the lanes, where the coordinator
cannot see them: :func:`counting_attempts` gives the node's tenacity policy a
``before`` hook that publishes the attempt number in a context variable, and
:class:`ContextCall` reads it, on every kind of worker.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = [
    "AsyncContextCall",
    "ContextCall",
    "FrozenConfig",
    "TaskContext",
    "bind_context",
    "counting_attempts",
    "freeze",
    "thaw",
]

_READ_ONLY = "the run's configuration is read-only; copy it with .to_dict() to change a copy"


class FrozenConfig(Mapping[str, Any]):
    """A read-only mapping that pickles; nested mappings are frozen too, lists become tuples.

    ``types.MappingProxyType`` would be read-only but does not pickle, and the
    context must reach process and Dask workers. Writing (``config[k] = v``,
    ``del config[k]``) raises ``TypeError``; ``to_dict()`` returns a mutable
    deep copy.

    Args:
        data: The values. Nested mappings are frozen recursively, lists and
            tuples become tuples (of frozen values).
    """

    __slots__ = ("_data",)

    _data: dict[str, Any]

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", {key: freeze(value) for key, value in (data or {}).items()})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenConfig({self._data!r})"

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __setitem__(self, key: str, value: Any) -> NoReturn:
        raise TypeError(f"cannot set {key!r}: {_READ_ONLY}")

    def __delitem__(self, key: str) -> NoReturn:
        raise TypeError(f"cannot delete {key!r}: {_READ_ONLY}")

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise TypeError(f"cannot set attribute {name!r}: {_READ_ONLY}")

    def __reduce__(self) -> tuple[type[FrozenConfig], tuple[dict[str, Any]]]:
        return (FrozenConfig, (self._data,))

    def to_dict(self) -> dict[str, Any]:
        """A mutable deep copy: dicts for mappings, lists for tuples."""
        thawed = thaw(self)
        assert isinstance(thawed, dict)
        return thawed


def freeze(value: Any) -> Any:
    """``value`` with mappings made :class:`FrozenConfig` and lists made tuples, at every depth."""
    if isinstance(value, FrozenConfig):
        return value
    if isinstance(value, Mapping):
        return FrozenConfig(value)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`: plain dicts and lists, at every depth."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a task made with ``with_context=True`` receives as its first argument.

    Attributes:
        run_id: The pipeline run.
        node_key: The node (one task call), stable across resumes.
        task_name: The task's name; the logger is named for it.
        attempt: 1 for the first attempt, 2 for the first retry... For a
            batch node, the attempt of the input being run.
        config: The run's configuration, read-only (see :class:`FrozenConfig`).
        trace_id: The run's trace id when tracing is on, else None.
    """

    run_id: str
    node_key: str
    task_name: str
    attempt: int = 1
    config: FrozenConfig = field(default_factory=FrozenConfig)
    trace_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("run_id", "node_key", "task_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TaskContext.{name} must be a non-empty string, got {value!r}")
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 1:
            raise ValueError(f"TaskContext.attempt must be an int >= 1, got {self.attempt!r}")
        if not isinstance(self.config, FrozenConfig):
            if not isinstance(self.config, Mapping):
                raise TypeError(f"TaskContext.config must be a mapping, got {type(self.config).__name__}")
            object.__setattr__(self, "config", FrozenConfig(self.config))

    @property
    def logger(self) -> logging.Logger:
        """The logger ``pylo.task.<task_name>``: configure it (or ``pylo.task``) like any other."""
        return logging.getLogger(f"pylo.task.{self.task_name}")

    def for_attempt(self, attempt: int) -> TaskContext:
        """This context with another attempt number."""
        return self if attempt == self.attempt else replace(self, attempt=attempt)


# -- attempts of batch inputs --------------------------------------------------

#: The attempt number a ``counting_attempts`` policy is making in this thread or task.
_ATTEMPT: ContextVar[int | None] = ContextVar("pylo_task_attempt", default=None)


class _PublishAttempt:
    """A tenacity ``before`` hook: publish the attempt number, then run the policy's own hook.

    A module-level class (not a closure) so the policy still pickles to
    process and Dask workers.
    """

    __slots__ = ("then",)

    def __init__(self, then: Callable[[RetryCallState], Any] | None) -> None:
        self.then = then

    def __call__(self, retry_state: RetryCallState) -> None:
        _ATTEMPT.set(retry_state.attempt_number)
        if self.then is not None:
            self.then(retry_state)

    def __reduce__(self) -> tuple[type[_PublishAttempt], tuple[Any]]:
        return (_PublishAttempt, (self.then,))


def counting_attempts(retry: Any) -> Any:
    """A copy of a tenacity policy (``Retrying`` or ``AsyncRetrying``) that tells :class:`ContextCall` each attempt.

    Args:
        retry: The batch node's retry policy.

    Returns:
        ``retry.copy(before=...)``: the same policy, whose ``before`` hook
        also publishes the attempt number (the policy's own hook still runs).
    """
    before = retry.before
    if isinstance(before, _PublishAttempt):
        return retry.copy()
    return retry.copy(before=_PublishAttempt(before))


class ContextCall:
    """``function(context, *args, **kwargs)`` as a picklable callable: how a task gets its context.

    Inside a retry policy made by :func:`counting_attempts`, the context
    passed carries the current attempt number; otherwise ``context.attempt``.

    Args:
        function: The task's function.
        context: The node's context.
    """

    __slots__ = ("context", "function")

    def __init__(self, function: Callable[..., Any], context: TaskContext) -> None:
        self.function = function
        self.context = context

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        attempt = _ATTEMPT.get()
        context = self.context if attempt is None else self.context.for_attempt(attempt)
        try:
            return self.function(context, *args, **kwargs)
        finally:
            # The next call in this thread sets it again if it is retried; a
            # stale number must not reach a call that is not.
            _ATTEMPT.set(None)

    def __reduce__(self) -> tuple[type[ContextCall], tuple[Callable[..., Any], TaskContext]]:
        return (ContextCall, (self.function, self.context))

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", repr(self.function))
        return f"ContextCall({name}, node_key={self.context.node_key!r})"


class AsyncContextCall(ContextCall):
    """:class:`ContextCall` for an ``async def`` task: ``await function(context, ...)``.

    Its ``__call__`` is a coroutine function, so the asyncio workers accept it.
    """

    __slots__ = ()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        attempt = _ATTEMPT.get()
        context = self.context if attempt is None else self.context.for_attempt(attempt)
        try:
            return await self.function(context, *args, **kwargs)
        finally:
            _ATTEMPT.set(None)

    def __reduce__(self) -> tuple[type[ContextCall], tuple[Callable[..., Any], TaskContext]]:
        return (AsyncContextCall, (self.function, self.context))


def bind_context(function: Callable[..., Any], context: TaskContext) -> ContextCall:
    """The task's function with ``context`` as its first argument, picklable, async if it is.

    Args:
        function: The function of a task made with ``with_context=True``.
        context: The node's context.

    Returns:
        An :class:`AsyncContextCall` for a coroutine function, else a
        :class:`ContextCall`.
    """
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - callable objects with async __call__
    ):
        return AsyncContextCall(function, context)
    return ContextCall(function, context)
