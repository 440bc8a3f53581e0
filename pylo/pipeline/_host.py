"""The adapter between pipelines and the ``Pylo`` that runs them.

Every use of ``Pylo`` internals by the pipeline layer is here, and only
here: its run settings (workers, flush policy), its kind of workers and their
options, its codec, and how to derive from it the ``Pylo`` that runs a batch
node as an execution. The rest of the layer uses the public API
(``start_from_scratch``, ``start_from_past_execution``, ``get_results``,
``get_execution``, ``store``). When the facade changes shape (an options
object, backend instances), this module is what to rewire.

It reads the Pylo's public ``options`` and ``backend``, and derives batch
Pylos with ``with_options`` (or, for a task of the other kind of function,
a non-owning Pylo on a thread or asyncio backend).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pylo._codec import Codec, get_codec
from pylo._liveness import pid_is_gone
from pylo.errors import ExecutionNotFound, StoreError

if TYPE_CHECKING:
    from pylo.execution import Pylo
    from pylo.pipeline._task import Task
    from pylo.stores.base import ExecutionRecord
    from pylo.stores.runs import RunStore

__all__ = ["Host"]

_KINDS = ("threads", "processes", "asyncio", "dask")

#: Batch Pylos already made, per Pylo they derive from: ``{(task kind and options, count_attempts): Pylo}``.
_BATCH_PYLOS: weakref.WeakKeyDictionary[Pylo, dict[Any, Pylo]] = weakref.WeakKeyDictionary()
#: Variants kept per Pylo; more (options made afresh per run) start the cache again.
_MAX_VARIANTS = 64
_BATCH_PYLOS_LOCK = threading.Lock()


class Host:
    """What the pipeline layer needs to know about, and get from, one ``Pylo``.

    Attributes:
        kind: ``"threads"``, ``"processes"``, ``"asyncio"`` or ``"dask"``.
        workers: The Pylo's number of workers (its concurrency for asyncio).
        flush_every: Outcomes between flushes (``task_executions_before_flush``).
        flush_seconds: Seconds between flushes.
        codec: The codec for new runs' results and exceptions.
        backend_options: Options of the Pylo's workers (start method, Dask client).
    """

    def __init__(self, pylo: Pylo) -> None:
        self.pylo = pylo
        options = pylo.options
        self.workers: int = options.number_of_workers
        self.flush_every: int = options.task_executions_before_flush
        self.flush_seconds: float = options.flush_seconds
        self.codec: Codec = get_codec(options.codec)
        backend = pylo.backend
        # A backend of another kind (a plug-in) runs plain nodes on threads.
        self.kind: str = backend.name if backend.name in _KINDS else "threads"
        self.backend_options: dict[str, Any] = {}
        if self.kind == "dask":
            self.backend_options["client"] = backend.client  # type: ignore[attr-defined]
            self.backend_options["no_workers_timeout"] = backend.no_workers_timeout  # type: ignore[attr-defined]
        elif self.kind == "processes":
            self.backend_options["start_method"] = backend.start_method  # type: ignore[attr-defined]

    @property
    def location(self) -> str:
        return self.pylo.store.location

    def runs(self) -> RunStore:
        """The run store next to the Pylo's executions."""
        return self.pylo.store.runs()

    def codec_named(self, name: str, run_id: str) -> Codec:
        """The codec a run was written with; an unknown name is damage (or a newer pylo)."""
        try:
            return get_codec(name)
        except ValueError as exc:
            raise StoreError(
                f"pipeline run {run_id!r} in the store at {self.location} was written with codec {name!r}, "
                f"which this pylo cannot read ({exc})"
            ) from None

    @staticmethod
    def check_id(name: str, value: Any) -> str:
        """Validate a run id like an execution id (1-128 of ``[A-Za-z0-9._-]``)."""
        from pylo.execution import _check_execution_id

        return _check_execution_id(name, value)

    @staticmethod
    def new_id() -> str:
        """A fresh id, sortable by time."""
        from pylo.execution import _new_execution_id

        return _new_execution_id()

    @staticmethod
    def sigterm_as_system_exit() -> contextlib.AbstractContextManager[None]:
        """SIGTERM as SystemExit while a run runs, as for executions."""
        from pylo._running import _sigterm_as_system_exit

        return _sigterm_as_system_exit()

    @staticmethod
    def process_is_gone(pid: int | None, host: str | None, running_here: bool) -> bool:
        """True when the process that runs a run is known to be dead."""
        return pid_is_gone(pid, host, running_here=lambda: running_here)

    @staticmethod
    @contextlib.contextmanager
    def stop_on(event: threading.Event | None, alarm: tuple[float, Callable[[], None]] | None = None) -> Iterator[None]:
        """Executions started inside stop taking inputs once ``event`` is set (resumable, ``stopped``).

        ``alarm``: ``(at, ring)``, rung once by their loop when
        ``time.monotonic()`` passes ``at`` (see ``pylo._engine.ALARM``).
        """
        if event is None and alarm is None:
            yield
            return
        from pylo._engine import ALARM, STOP_REQUESTED

        token = STOP_REQUESTED.set(event)
        alarm_token = ALARM.set(alarm)
        try:
            yield
        finally:
            ALARM.reset(alarm_token)
            STOP_REQUESTED.reset(token)

    def find_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution's record, or None when the store has none with that id."""
        try:
            return self.pylo.store.get_execution(execution_id)
        except ExecutionNotFound:
            return None

    def batch_pylo(self, task: Task, map_options: Mapping[str, Any], *, count_attempts: bool = False) -> Pylo:
        """A Pylo on the same store and workers that runs one batch node's execution.

        Results are always stored (they are the node's value). The task's
        own ``retry`` and ``timeout`` apply to each input, else the Pylo's;
        ``map``'s execution options override the Pylo's. The Pylo's
        ``initializer`` sets up each worker of the execution (except an
        ``async def`` one for a plain task: threads cannot await it). An ``async def``
        task runs on an event loop, and a plain one on threads when the Pylo
        is an asyncio one. With ``count_attempts`` the retry policy publishes
        each attempt's number to the task's context
        (:func:`~pylo.pipeline._context.counting_attempts`). The Pylo
        returned shares the store: never close it.

        A Pylo is never changed once made, so the one for a kind of task and
        options is made once and kept with the Pylo it derives from (making
        it validates every option: a fifth of what a short batch node added
        to its execution).
        """
        pylo = self.pylo
        key: Any = None
        made = None
        with _BATCH_PYLOS_LOCK:
            try:
                key = (task.is_async, task.options.retry, task.options.timeout, frozenset(map_options.items()))
                made = _BATCH_PYLOS.get(pylo, {}).get((key, count_attempts))
            except TypeError:  # an option that cannot be a key (an unhashable policy): made each time
                key = None
        if made is None:
            made = self._make_batch_pylo(task, map_options, count_attempts)
            if key is not None:
                with _BATCH_PYLOS_LOCK:
                    variants = _BATCH_PYLOS.setdefault(pylo, {})
                    if len(variants) >= _MAX_VARIANTS:
                        variants.clear()
                    variants[(key, count_attempts)] = made
        return made

    def _make_batch_pylo(self, task: Task, map_options: Mapping[str, Any], count_attempts: bool) -> Pylo:
        from pylo.execution import Pylo
        from pylo.workers._initializer import is_async_callable

        pylo = self.pylo
        backend = pylo.backend
        changes: dict[str, Any] = {"store_results": True, "progress": False}
        other_kind = backend.runs_coroutines != task.is_async
        if other_kind:
            changes["retry"] = None  # the Pylo's policy is for the other kind of function
            if not task.is_async and is_async_callable(pylo.options.initializer):
                changes["initializer"] = None  # thread workers cannot await it
        if task.options.retry is not None:
            changes["retry"] = task.options.retry
        if task.options.timeout is not None:
            changes["timeout"] = float(task.options.timeout)
        changes.update(map_options)
        if count_attempts:
            retry = changes.get("retry", pylo.options.retry)
            if retry is not None:
                from pylo.pipeline._context import counting_attempts

                changes["retry"] = counting_attempts(retry)
        if not other_kind:
            return pylo.with_options(**changes)
        if task.is_async:
            from pylo.workers.aio import AsyncioBackend

            return Pylo(pylo.store, AsyncioBackend(), pylo.options.replace(**changes), owns=False)
        from pylo.workers.threads import ThreadBackend

        return Pylo(pylo.store, ThreadBackend(), pylo.options.replace(**changes), owns=False)
