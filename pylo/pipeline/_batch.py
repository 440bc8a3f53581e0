"""Batch nodes: a task mapped over inputs, run (and resumed) as one pylo execution.

The execution id is derived from the run id and the node key, so a resume
finds the execution of a batch node even when the run was killed before its
node row said which execution it was running. A resume of the run resumes
that execution through ``start_from_past_execution``: only the inputs that
did not finish run again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from pylo._codec import get_codec
from pylo._progress import INPUT_PROGRESS, InputProgress
from pylo.errors import StoreError
from pylo.pipeline._errors import BatchFailed
from pylo.pipeline._executors import Outcome, describe_failure

if TYPE_CHECKING:
    from pylo.pipeline._host import Host
    from pylo.pipeline._task import Task

__all__ = ["AsyncBoundCall", "BoundCall", "batch_execution_id", "read_values", "run_batch"]

_MAX_ID = 128

#: Workers that call the function in this process: it is never pickled, so it need not travel as its Task.
_IN_PROCESS = frozenset({"threads", "asyncio"})


def batch_execution_id(run_id: str, key: str) -> str:
    """The id of the execution a batch node runs in run ``run_id`` (valid execution-id characters)."""
    candidate = f"{run_id}.{key}"
    if len(candidate) <= _MAX_ID:
        return candidate
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{run_id[: _MAX_ID - 17]}.{digest}"


class BoundCall:
    """``task(item, *args, **kwargs)`` as a one-argument function that pickles (module-level class).

    ``call``, when given, runs in place of the task's function: the function
    with its context and rate limit (see ``_run_environment.py``).
    """

    def __init__(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], call: Callable[..., Any] | None = None
    ) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.call = task.function if call is None else call
        # Executions record their function's name: name the task, not this wrapper.
        self.__module__ = getattr(task.function, "__module__", None) or __name__
        self.__qualname__ = getattr(task.function, "__qualname__", None) or task.name

    def __call__(self, item: Any) -> Any:
        return self.call(item, *self.args, **self.kwargs)


class AsyncBoundCall(BoundCall):
    """:class:`BoundCall` for an ``async def`` task."""

    async def __call__(self, item: Any) -> Any:
        return await self.call(item, *self.args, **self.kwargs)


class _Tally:
    """Counts an execution's finished inputs as its engine reports them, passing the reports on.

    The engine's count of finished inputs is the one it records, so when the
    tally reaches the total the execution finished every input and its
    record need not be read back to say so (a read costs more than the rest
    of a batch node's own work). Any other count reads the record.
    """

    def __init__(self, inner: InputProgress | None) -> None:
        self.inner = inner
        self.total = -1
        self.finished = 0

    def start(self, execution_id: str, total: int, finished: int) -> None:
        self.total, self.finished = total, finished
        if self.inner is not None:
            self.inner.start(execution_id, total, finished)

    def update(self, finished: int, failed: int) -> None:
        self.finished += finished
        if self.inner is not None:
            self.inner.update(finished, failed)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    @property
    def all_finished(self) -> bool:
        return self.total >= 0 and self.finished == self.total


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
    need_value: bool,
    call: Callable[..., Any] | None = None,
    count_attempts: bool = False,
    stop: threading.Event | None = None,
    alarm: tuple[float, Callable[[], None]] | None = None,
) -> Outcome:
    """Run (or resume) a batch node's execution; its value is the list of results in input order.

    The results stay where the execution stored them: the node's row keeps
    no copy (its ``execution_id`` says where they are), and they are read
    back only when ``need_value`` (a downstream node takes them), so a batch
    node adds almost nothing to the execution it wraps. ``call`` runs in
    place of the task's function for each input; ``count_attempts`` makes
    the execution's retry policy tell a task context each input's attempt.

    Once ``stop`` is set (a pause or cancel), the execution stops taking
    inputs and the outcome is ``stopped``: the execution is resumable.
    ``alarm``: rung once by the execution's loop when its time comes (see
    ``pylo._engine.ALARM``).
    """
    started = time.time()
    pylo = host.batch_pylo(task, map_options, count_attempts=count_attempts)
    function: Callable[..., Any]
    if not args and not kwargs and call is None and pylo.backend.name in _IN_PROCESS:
        function = task.function  # nothing to bind and nothing pickled: no wrapper's frame per input
    else:
        function = (AsyncBoundCall if task.is_async else BoundCall)(task, args, kwargs, call)
    tally = _Tally(INPUT_PROGRESS.get())
    token = INPUT_PROGRESS.set(tally)
    try:
        try:
            with host.stop_on(stop, alarm):
                if _past_fits(host, past_execution_id, inputs):
                    assert past_execution_id is not None
                    pylo.start_from_past_execution(past_execution_id, function, execution_id=execution_id)
                else:
                    pylo.start_from_scratch(inputs, function, execution_id=execution_id)
        finally:
            INPUT_PROGRESS.reset(token)
        if not tally.all_finished:
            record = pylo.get_execution(execution_id)
            if record.unfinished and stop is not None and stop.is_set():
                return Outcome(ok=False, stopped=True, started=started, ended=time.time(), execution_id=execution_id)
            if record.unfinished:
                raise BatchFailed(execution_id, record.failed, record.pending, record.total)
        values = read_values(host, execution_id) if need_value else None
    except Exception as exc:
        ran = host.find_execution(execution_id) is not None
        return describe_failure(exc, codec_name, 1, started, execution_id=execution_id if ran else None)
    except BaseException as exc:
        return Outcome(ok=False, interrupt=exc, started=started, ended=time.time())
    return Outcome(ok=True, value=values, started=started, ended=time.time(), execution_id=execution_id)


def read_values(host: Host, execution_id: str) -> list[Any]:
    """A finished batch execution's results in input order, from it and the executions it resumed.

    Raises:
        StoreError: Some input has no stored result, or one cannot be decoded.
    """
    store = host.pylo.store
    record = store.get_execution(execution_id)
    lineage = [record]
    while lineage[-1].parent_id is not None:
        parent = host.find_execution(lineage[-1].parent_id)
        if parent is None:
            break
        lineage.append(parent)
    by_position: dict[int, bytes] = {}
    for ancestor in reversed(lineage):  # the newest result of a position wins
        by_position.update(store.read_results(ancestor.id))
    try:
        codec = get_codec(record.codec)
        return [codec.decode_value(by_position[position]) for position in range(record.total)]
    except KeyError as exc:
        raise StoreError(
            f"execution {execution_id!r} in the store at {host.location} has no result for input {exc}; "
            "resume the pipeline run to compute it"
        ) from None
    except Exception as exc:
        raise StoreError(
            f"cannot decode the results of execution {execution_id!r} in the store at {host.location}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
