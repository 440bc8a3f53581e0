"""Tasks: plain functions with pipeline options, still callable directly.

``@task`` and ``@task(**options)`` wrap a function in a :class:`Task`;
``Task.send`` and ``Task.map`` describe calls (one-node pipelines) without
running anything. Options are frozen and validated where they enter, so a
bad option fails at decoration (or ``.set``) time, never mid-run.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from pylo._codec import short_repr
from pylo._options import check_bool, check_seconds, check_seconds_at_least
from pylo.workers._checks import task_name

if TYPE_CHECKING:
    from pylo.pipeline._builder import Pipeline

__all__ = ["MAP_OPTIONS", "Task", "TaskOptions", "task"]

_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

#: Execution options ``Task.map`` takes out of its keyword arguments; every
#: other keyword argument goes to the task.
MAP_OPTIONS = frozenset(
    {
        "max_worker_failures",
        "max_failures",
        "store_exceptions",
        "task_executions_before_flush",
        "flush_seconds",
        "rate_limit",
        "store_results",
    }
)


#: Options docs/pipelines.md names that later releases add (none left).
_NOT_YET: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The frozen, validated options of a task (``@task(...)`` or ``.set(...)``).

    Attributes:
        retry: A tenacity ``Retrying`` (``AsyncRetrying`` for ``async def``
            tasks) that may re-attempt the call before it counts as failed.
        timeout: Seconds one call may take, retries included (None: no limit).
        fail_softly: A raise ends the node ``failed_softly`` instead of
            ``failed``; the run can still complete.
        propagate_soft_failures: When an upstream node failed softly, end
            this node ``failed_softly`` without running it (True), or run it
            with None in the upstream's place (False).
        skippable: A raise ends the node ``skipped`` (result None) and
            downstream nodes run.
        task_id: A fixed node key (1-100 of ``[A-Za-z0-9._-]``); two nodes
            of one pipeline cannot share it.
        display_name: The name shown for the node (default: the function's).
        is_fruitful: False: the node's result is None whatever the task returns.
        with_state: The task receives the pipeline's state first and returns
            ``(state, result)``.
        with_context: The function receives a
            :class:`~pylo.pipeline.TaskContext` first (per input in a batch node).
        wait_for: A probe called before the node runs until it returns a
            true value (see ``docs/task-environment.md``).
        wait_timeout: Seconds to wait for ``wait_for`` (None: no limit; 0:
            one poll); then the node fails with ``ResourceUnavailable``.
        rate_limit: Task starts per second (a number, ``"N/s"``,
            ``"N/min"``, ``"N/h"``), shared by every node and batch input of
            the task, or of every task with the same ``rate_key``.
        rate_key: The bucket's name, shared by every task that names it.
        wait: Pause the run once this node ends, before any node that
            waits for it starts (``Pipeline.wait()``); an unpause goes on.
    """

    retry: Any = None
    timeout: float | None = None
    fail_softly: bool = False
    propagate_soft_failures: bool = True
    skippable: bool = False
    task_id: str | None = None
    display_name: str | None = None
    is_fruitful: bool = True
    with_state: bool = False
    with_context: bool = False
    wait_for: Callable[[], Any] | None = None
    wait_timeout: float | None = None
    rate_limit: float | str | None = None
    rate_key: str | None = None
    wait: bool = False

    def __post_init__(self) -> None:
        if self.retry is not None:
            from tenacity import BaseRetrying

            if not isinstance(self.retry, BaseRetrying):
                raise TypeError(
                    "retry must be a tenacity Retrying object such as Retrying(stop=stop_after_attempt(3)), "
                    f"got {type(self.retry).__name__} {short_repr(self.retry)}"
                )
        if self.timeout is not None:
            check_seconds("timeout", self.timeout)
        check_bool("fail_softly", self.fail_softly)
        check_bool("propagate_soft_failures", self.propagate_soft_failures)
        check_bool("skippable", self.skippable)
        check_bool("is_fruitful", self.is_fruitful)
        check_bool("with_state", self.with_state)
        check_bool("wait", self.wait)
        if self.fail_softly and self.skippable:
            raise ValueError(
                "fail_softly and skippable cannot both be True: a raise either fails the node softly "
                "or skips it; choose one"
            )
        if self.task_id is not None:
            if not isinstance(self.task_id, str):
                raise TypeError(f"task_id must be a str, got {type(self.task_id).__name__} {short_repr(self.task_id)}")
            if not _TASK_ID.fullmatch(self.task_id):
                raise ValueError(
                    f"task_id {self.task_id!r} is not valid: use 1 to 100 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit"
                )
        if self.display_name is not None and (not isinstance(self.display_name, str) or not self.display_name):
            raise TypeError(f"display_name must be a non-empty str, got {short_repr(self.display_name)}")
        _check_environment(self)

    @classmethod
    def make(cls, **options: Any) -> TaskOptions:
        """Validate keyword options into a TaskOptions.

        Raises:
            TypeError: An unknown option (the message lists the valid ones),
                or a value of the wrong type.
            ValueError: A value out of range.
        """
        return cls().replace(**options)

    def replace(self, **changes: Any) -> TaskOptions:
        """A copy with ``changes`` applied, validated like :meth:`make`."""
        valid = {f.name for f in dataclasses.fields(self)}
        later = sorted(set(changes) & _NOT_YET)
        if later:
            raise TypeError(
                f"task option(s) {', '.join(later)} are not supported yet; supported: {', '.join(sorted(valid))}"
            )
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise TypeError(f"unknown task option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(valid))}")
        return dataclasses.replace(self, **changes)


def _check_environment(options: TaskOptions) -> None:
    """Validate the task-environment options (context, resource wait, rate limit)."""
    check_bool("with_context", options.with_context)
    if options.wait_for is not None and not callable(options.wait_for):
        raise TypeError(
            "wait_for must be a callable returning true when the resource is ready, "
            f"got {type(options.wait_for).__name__} {short_repr(options.wait_for)}"
        )
    if options.wait_timeout is not None:
        check_seconds_at_least("wait_timeout", options.wait_timeout, 0)
        if options.wait_for is None:
            raise ValueError("wait_timeout needs wait_for: give the probe to wait for too")
    if options.rate_limit is not None:
        from pylo._ratelimit import parse_rate_limit

        parse_rate_limit(options.rate_limit)  # TypeError or ValueError with the message
    if options.rate_key is not None and (not isinstance(options.rate_key, str) or not options.rate_key):
        raise TypeError(
            f"rate_key must be a non-empty str, got {type(options.rate_key).__name__} {short_repr(options.rate_key)}"
        )


def _is_async(function: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    )


class Task:
    """A function with pipeline options. Calling it calls the function.

    Attributes:
        function: The wrapped function.
        options: Its :class:`TaskOptions`.
        name: ``module:qualname`` of the function.
        is_async: True for an ``async def`` function (it runs on an event loop).
    """

    function: Callable[..., Any]
    options: TaskOptions
    name: str
    is_async: bool

    def __init__(self, function: Callable[..., Any], options: TaskOptions | None = None) -> None:
        if isinstance(function, Task):
            function = function.function  # re-wrapping a task wraps its function
        if not callable(function):
            raise TypeError(f"task needs a callable, got {type(function).__name__} {short_repr(function)}")
        self.function = function
        self.options = options or TaskOptions()
        self.name = task_name(function)
        self.is_async = _is_async(function)
        if self.options.retry is not None:
            from tenacity import AsyncRetrying

            if isinstance(self.options.retry, AsyncRetrying) != self.is_async:
                wanted = "AsyncRetrying" if self.is_async else "Retrying"
                raise TypeError(
                    f"task {self.name} is {'an async' if self.is_async else 'a plain'} function, so its retry "
                    f"must be a tenacity.{wanted}, got {type(self.options.retry).__name__}"
                )
        functools.update_wrapper(self, function, updated=())  # not its __dict__: it could shadow ours

    @property
    def display_name(self) -> str:
        """The task's ``display_name``, or its function's name."""
        return self.options.display_name or getattr(self.function, "__name__", None) or self.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def with_options(self, **options: Any) -> Task:
        """A copy of this task with some options changed (validated)."""
        return Task(self.function, self.options.replace(**options))

    def send(self, *args: Any, **kwargs: Any) -> Pipeline:
        """Describe one call ``task(*args, **kwargs)`` as a one-node pipeline.

        Pipelines among the arguments (also inside lists, tuples and dicts)
        run first; their results are passed in their place.
        """
        from pylo.pipeline._builder import call_pipeline

        return call_pipeline(self, args, kwargs)

    def map(self, inputs: Iterable[Any] | Pipeline, *args: Any, **kwargs: Any) -> Pipeline:
        """Describe a batch node: ``task(input, *args, **kwargs)`` for each input, as one pylo execution.

        Args:
            inputs: An iterable of inputs, or a pipeline whose result is one.
            *args: More arguments for every call (pipelines allowed).
            **kwargs: Keyword arguments for every call, except the execution
                options ``max_worker_failures``, ``max_failures``,
                ``store_exceptions``, ``task_executions_before_flush``,
                ``flush_seconds`` and ``rate_limit``, which set up the
                execution. Results are always stored (they are the node's
                value), so ``store_results`` may only be True. The task's own
                ``retry`` and ``timeout`` apply to each input.

        Returns:
            A one-node pipeline whose result is the list of results in input order.
        """
        from pylo.pipeline._builder import map_pipeline

        options = {name: kwargs.pop(name) for name in list(kwargs) if name in MAP_OPTIONS}
        return map_pipeline(self, inputs, args, kwargs, options)

    def __repr__(self) -> str:
        return f"Task({self.name})"

    def __reduce__(self) -> tuple[Any, ...]:
        # A decorated module-level function is the Task itself under the
        # function's name, so the function cannot pickle by reference: send
        # the Task by its name when that finds it again.
        module = getattr(self.function, "__module__", None)
        qualname = getattr(self.function, "__qualname__", "")
        if module and "<" not in qualname and _lookup(module, qualname) is self:
            return (_lookup, (module, qualname))
        return (Task, (self.function, self.options))


def _lookup(module: str, qualname: str) -> Any:
    import importlib

    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


@overload
def task(function: Callable[..., Any], /, **options: Any) -> Task: ...


@overload
def task(function: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], Task]: ...


def task(function: Callable[..., Any] | None = None, /, **options: Any) -> Task | Callable[[Callable[..., Any]], Task]:
    """Make a task of a function: ``@task``, ``@task(retry=..., fail_softly=True, ...)`` or ``task(f, **options)``.

    Args:
        function: The function (when used as ``@task``).
        **options: :class:`TaskOptions` fields.

    Returns:
        A :class:`Task`, or a decorator that makes one.

    Raises:
        TypeError: An unknown option or a value of the wrong type.
        ValueError: A value out of range.
    """
    checked = TaskOptions.make(**options)
    if function is not None:
        return Task(function, checked)

    def decorate(fn: Callable[..., Any]) -> Task:
        return Task(fn, checked)

    return decorate
