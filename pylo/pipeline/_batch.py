"""Batch nodes: a task mapped over inputs, run (and resumed) as one pylo execution.

The execution id is derived from the run id and the node key, so a resume
finds the execution of a batch node even when the run was killed before its
node row said which execution it was running. A resume of the run resumes
that execution through ``start_from_past_execution``: only the inputs that
did not finish run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from pylo.pipeline._errors import BatchFailed
from pylo.pipeline._executors import Outcome, describe_failure, finish_call

if TYPE_CHECKING:
    from pylo.pipeline._host import Host
    from pylo.pipeline._task import Task

__all__ = ["AsyncBoundCall", "BoundCall", "batch_execution_id", "run_batch"]

_MAX_ID = 128


def batch_execution_id(run_id: str, key: str) -> str:
    """The id of the execution a batch node runs in run ``run_id`` (valid execution-id characters)."""
    candidate = f"{run_id}.{key}"
    if len(candidate) <= _MAX_ID:
        return candidate
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{run_id[: _MAX_ID - 17]}.{digest}"


class BoundCall:
    """``task(item, *args, **kwargs)`` as a one-argument function that pickles (module-level class)."""

    def __init__(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs
        # Executions record their function's name: name the task, not this wrapper.
        self.__module__ = getattr(task.function, "__module__", None) or __name__
        self.__qualname__ = getattr(task.function, "__qualname__", None) or task.name

    def __call__(self, item: Any) -> Any:
        return self.task.function(item, *self.args, **self.kwargs)


class AsyncBoundCall(BoundCall):
    """:class:`BoundCall` for an ``async def`` task."""

    async def __call__(self, item: Any) -> Any:
        return await self.task.function(item, *self.args, **self.kwargs)


def _past_fits(host: Host, past_id: str | None, inputs: Any) -> bool:
    """Resume ``past_id`` only when it recorded all its inputs, as many as there are now."""
    if past_id is None:
        return False
    record = host.find_execution(past_id)
    if record is None or not record.inputs_complete:
        return False
    return not isinstance(inputs, Collection) or len(inputs) == record.total


def run_batch(
    host: Host,
    task: Task,
    inputs: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    map_options: dict[str, Any],
    execution_id: str,
    past_execution_id: str | None,
    codec_name: str,
) -> Outcome:
    """Run (or resume) a batch node's execution; its value is the list of results in input order."""
    started = time.time()
    pylo = host.batch_pylo(task, map_options)
    function = (AsyncBoundCall if task.is_async else BoundCall)(task, args, kwargs)
    try:
        if _past_fits(host, past_execution_id, inputs):
            assert past_execution_id is not None
            pylo.start_from_past_execution(past_execution_id, function, execution_id=execution_id)
        else:
            pylo.start_from_scratch(inputs, function, execution_id=execution_id)
        record = pylo.get_execution(execution_id)
        if record.unfinished:
            raise BatchFailed(execution_id, record.failed, record.pending, record.total)
        values = [result for _, result in pylo.get_results(execution_id)]
    except Exception as exc:
        ran = host.find_execution(execution_id) is not None
        return describe_failure(exc, codec_name, 1, started, execution_id=execution_id if ran else None)
    except BaseException as exc:
        return Outcome(ok=False, interrupt=exc, started=started, ended=time.time())
    return dataclasses.replace(finish_call(values, codec_name, 1, started), execution_id=execution_id)
