"""``Pylo``: run a function over many inputs, durably, and resume after failures.

Example:
    >>> from pylo.execution import Pylo
    >>> pylo = Pylo.local_multithread("/tmp/pylo-doc", number_of_workers=2)
    >>> execution_id = pylo.start_from_scratch(range(10), print)  # doctest: +SKIP
    >>> finished, unfinished = pylo.get_state(execution_id)  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime as dt
import functools
import inspect
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pylo import _engine
from pylo._codec import Codec, get_codec, short_repr
from pylo._progress import ProgressBar, wants_progress
from pylo._ratelimit import parse_rate_limit
from pylo.errors import ExecutionNotResumable, PyloError, StoredTaskError, StoreError
from pylo.stores import open_store
from pylo.stores.base import (
    FINISHED,
    ExecutionRecord,
    ExecutionStatus,
    FailureRow,
    Store,
    utc_from_timestamp,
)
from pylo.workers.base import Backend

__all__ = ["Failure", "Pylo"]

logger = logging.getLogger(__name__)

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DEFAULT_FLUSH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed input of an execution, as returned by ``get_failures``.

    Attributes:
        input: The input object.
        position: Its 0-based position in the execution's inputs.
        exception_type: Qualified name of the exception type (None when the
            execution did not store exceptions).
        message: ``str()`` of the exception, or None.
        traceback: The formatted traceback, or None.
        exception: The exception object; a :class:`~pylo.errors.StoredTaskError`
            when it could not be kept or rebuilt; None when exceptions were
            not stored.
        attempts: How many times the input was attempted (retries included).
        worker: The worker (lane) that ran it, from 0.
        time: When its last attempt failed (aware UTC datetime).
    """

    input: Any
    position: int
    exception_type: str | None
    message: str | None
    traceback: str | None
    exception: BaseException | None
    attempts: int
    worker: int
    time: dt.datetime


# -- argument checks (exact messages: the name, the rule, the value) ----------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


#: Longest ``flush_seconds`` or ``timeout``: one week. Waits this long still
#: fit every timeout the backends pass to the system (poll(2) takes at most
#: about 24 days), and a longer one means "never": use the count, or None.
MAX_SECONDS = 7 * 24 * 3600


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds > 0, got {type(value).__name__} {value!r}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")
    if value > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS} seconds (one week), got {value:g}")
    return float(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def _check_retry(retry: Any, *, asynchronous: bool = False) -> Any:
    if retry is None:
        return None
    from tenacity import AsyncRetrying, BaseRetrying

    wanted = "AsyncRetrying" if asynchronous else "Retrying"
    if not isinstance(retry, BaseRetrying) or isinstance(retry, AsyncRetrying) != asynchronous:
        raise TypeError(
            f"retry must be a tenacity.{wanted} object such as "
            f"{wanted}(stop=stop_after_attempt(3), wait=wait_exponential()), "
            f"got {type(retry).__name__} {short_repr(retry)}"
        )
    return retry


def _check_execution_id(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {short_repr(value)}")
    if not _ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"{name} {value!r} is not a valid execution id: use 1 to 128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return value


def _check_function(task_function: Any, *, coroutines: bool) -> Callable[[Any], Any]:
    if not callable(task_function):
        raise TypeError(
            f"task_function must be callable, got {type(task_function).__name__} {short_repr(task_function)}"
        )
    is_async = inspect.iscoroutinefunction(task_function) or inspect.iscoroutinefunction(
        getattr(task_function, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )
    if is_async and not coroutines:
        raise TypeError(
            f"task_function {_task_name(task_function)} is an async function, but these workers run "
            "plain functions; use Pylo.local_asyncio for coroutines"
        )
    if coroutines and not is_async:
        raise TypeError(
            f"task_function {_task_name(task_function)} is not an async function; Pylo.local_asyncio "
            "runs `async def` functions (use local_multithread or local_multiprocess for plain ones)"
        )
    return task_function


def _check_inputs(task_inputs: Any) -> Iterable[Any]:
    if isinstance(task_inputs, (str, bytes, bytearray)):
        raise TypeError(
            f"task_inputs must be an iterable of inputs, got {type(task_inputs).__name__} "
            f"{short_repr(task_inputs)}; to run one input, pass [value]"
        )
    try:
        iter(task_inputs)
    except TypeError:
        raise TypeError(
            f"task_inputs must be an iterable of inputs (list, range, generator...), "
            f"got {type(task_inputs).__name__} {short_repr(task_inputs)}"
        ) from None
    return task_inputs


def _config_from(
    *,
    number_of_workers: tuple[str, Any],
    max_worker_failures: Any,
    task_executions_before_flush: Any,
    store_exceptions: Any,
    flush_seconds: Any,
    retry: Any,
    max_failures: Any,
    store_results: Any,
    timeout: Any,
    rate_limit: Any,
    progress: Any,
    async_retry: bool = False,
) -> _engine.RunConfig:
    """Validate constructor arguments into a frozen RunConfig.

    ``number_of_workers`` comes with the name the constructor gives it
    (``concurrency`` for asyncio), so messages use the user's word.
    """
    workers_name, workers = number_of_workers
    return _engine.RunConfig(
        number_of_workers=_check_int(workers_name, workers, 1),
        max_worker_failures=_check_int("max_worker_failures", max_worker_failures, 1),
        task_executions_before_flush=_check_int("task_executions_before_flush", task_executions_before_flush, 1),
        flush_seconds=_check_seconds("flush_seconds", flush_seconds),
        store_exceptions=_check_bool("store_exceptions", store_exceptions),
        store_results=_check_bool("store_results", store_results),
        retry=_check_retry(retry, asynchronous=async_retry),
        max_failures=None if max_failures is None else _check_int("max_failures", max_failures, 1),
        timeout=None if timeout is None else _check_seconds("timeout", timeout),
        rate_limit=parse_rate_limit(rate_limit),
        progress=None if progress is None else _check_bool("progress", progress),
    )


def _check_sendable_retry(retry: Any, where: str) -> None:
    """A retry policy travels with every chunk to other processes: refuse one that cannot."""
    if retry is None:
        return
    from pylo.workers._pickling import dumps

    try:
        dumps(retry)
    except TypeError as exc:
        raise TypeError(
            f"retry {short_repr(retry)} cannot be sent to {where}: {exc}; build its stop, wait and "
            "retry conditions from module-level functions or tenacity's own helpers"
        ) from exc


def _check_codec(codec: Any) -> str:
    get_codec(codec)  # raises with the list of valid names
    return str(codec)


def _open_store(local_store_dir: Any, store: Any) -> Store:
    if isinstance(store, Store) or (isinstance(store, str) and "://" in store):
        return open_store(store, None)
    if local_store_dir is None:
        raise ValueError(
            f"local_store_dir is None, but store {store!r} keeps its files there; pass a directory, "
            "or a SQLAlchemy URL (or a Store object) as store="
        )
    if not isinstance(local_store_dir, (str, os.PathLike)):
        raise TypeError(
            f"local_store_dir must be a str or path-like, got {type(local_store_dir).__name__} "
            f"{short_repr(local_store_dir)}"
        )
    if str(local_store_dir) == "":
        raise ValueError("local_store_dir must not be empty")
    return open_store(store, local_store_dir)


def _task_name(function: Callable[..., Any]) -> str:
    target = function
    while isinstance(target, functools.partial):
        target = target.func
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}:{qualname}"


def _new_execution_id() -> str:
    # Sortable by time for people reading `list`, unique by the random tail.
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def _process_is_gone(record: ExecutionRecord) -> bool:
    """True when a RUNNING execution's process is known to be dead."""
    if record.status is not ExecutionStatus.RUNNING or record.pid is None:
        return False
    if record.host != socket.gethostname():
        return False  # another machine: we cannot tell
    if record.pid == os.getpid():
        return record.id not in _RUNNING_HERE
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def _sigterm_as_system_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit(143) while an execution runs.

    Python's default for SIGTERM kills the process on the spot, losing the
    outcomes since the last flush and leaving the execution marked running.
    As SystemExit, it interrupts the run like Ctrl-C does: outcomes are
    flushed, the execution is marked interrupted, and the process still
    exits non-zero (128 + 15). Only the main thread can set handlers, and a
    handler the application installed itself is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Ids of the executions this process is running right now, to tell a live
# run from a record left behind by an earlier process that had our pid.
_RUNNING_HERE: set[str] = set()
_RUNNING_LOCK = threading.Lock()


class Pylo:
    """Runs a task function over inputs and keeps a durable snapshot of each execution.

    Build one with a constructor such as :meth:`local_multithread`. A Pylo
    object may be used from several threads; each ``start_*`` call blocks
    until its execution ends.
    """

    def __init__(
        self,
        store: Store,
        backend: type[Backend],
        config: _engine.RunConfig,
        *,
        backend_options: Mapping[str, Any] | None = None,
        codec: str = "pickle",
    ) -> None:
        """Wire a store, a backend class and a configuration together.

        Most users want a constructor such as :meth:`local_multithread`.

        Args:
            store: Where snapshots go.
            backend: The :class:`~pylo.workers.base.Backend` class; one
                instance is made per execution, with ``backend_options``.
            config: The run settings.
            backend_options: Keyword arguments for the backend class.
            codec: Name of the codec for new executions.
        """
        self._store = store
        self._backend = backend
        self._backend_options = dict(backend_options or {})
        self._config = config
        self._codec: Codec = get_codec(codec)

    # -- constructors -----------------------------------------------------

    @classmethod
    def local_multithread(
        cls,
        local_store_dir: str | os.PathLike[str] | None,
        number_of_workers: int,
        max_worker_failures: int = 1000,
        task_executions_before_flush: int = 1000,
        store_exceptions: bool = True,
        *,
        store: Any = "sqlite",
        flush_seconds: float = _DEFAULT_FLUSH_SECONDS,
        retry: Any = None,
        max_failures: int | None = None,
        store_results: bool = False,
        timeout: float | None = None,
        rate_limit: float | str | None = None,
        progress: bool | None = None,
        codec: str = "pickle",
    ) -> Pylo:
        """Run tasks on ``number_of_workers`` threads of this process.

        Args:
            local_store_dir: Directory for the snapshot store (created,
                mode 0700, if missing). May be None when ``store`` is a URL
                or a Store object, which need no directory.
            number_of_workers: Worker threads; each takes its own inputs and
                has its own failure budget.
            max_worker_failures: A worker stops taking inputs once this many
                of its inputs have failed; its remaining inputs stay pending.
            task_executions_before_flush: Make outcomes durable after this
                many (also every ``flush_seconds``, and at the end).
            store_exceptions: Keep each failure's exception, message and
                traceback. When False only the fact of the failure is kept.
            store: ``"sqlite"`` (default), ``"files"``, a SQLAlchemy URL, or a
                :class:`~pylo.stores.base.Store`.
            flush_seconds: Longest time outcomes wait before a flush.
            retry: A ``tenacity.Retrying`` policy applied to each input
                before it counts as failed.
            max_failures: Stop the whole execution once this many inputs
                have failed (None: no such limit).
            store_results: Keep each finished input's return value
                (see :meth:`get_results`).
            timeout: Seconds one input may take (retries included) before it
                fails with :class:`~pylo.errors.TaskTimeout`. A thread cannot be killed:
                the stuck thread is abandoned and replaced (docs/failures.md).
            rate_limit: Most task starts per second across all workers: a
                number, or a string such as ``"20/s"`` or ``"100/min"``.
            progress: Show a progress bar on stderr; None (default) shows
                it when stderr is a terminal.
            codec: How inputs, results and exceptions are stored:
                ``"pickle"`` (default: any picklable object; a store must
                then be trusted like code) or ``"json"`` (JSON values only;
                reading the store never unpickles anything).

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: An argument is out of range or ``store`` is unknown.
            StoreError: The store exists but is damaged or foreign.
        """
        from pylo.workers.threads import ThreadBackend

        codec = _check_codec(codec)

        config = _config_from(
            number_of_workers=("number_of_workers", number_of_workers),
            max_worker_failures=max_worker_failures,
            task_executions_before_flush=task_executions_before_flush,
            store_exceptions=store_exceptions,
            flush_seconds=flush_seconds,
            retry=retry,
            max_failures=max_failures,
            store_results=store_results,
            timeout=timeout,
            rate_limit=rate_limit,
            progress=progress,
        )
        return cls(_open_store(local_store_dir, store), ThreadBackend, config, codec=codec)

    @classmethod
    def local_multiprocess(
        cls,
        local_store_dir: str | os.PathLike[str] | None,
        number_of_workers: int,
        max_worker_failures: int = 1000,
        task_executions_before_flush: int = 1000,
        store_exceptions: bool = True,
        *,
        store: Any = "sqlite",
        flush_seconds: float = _DEFAULT_FLUSH_SECONDS,
        retry: Any = None,
        max_failures: int | None = None,
        store_results: bool = False,
        timeout: float | None = None,
        rate_limit: float | str | None = None,
        progress: bool | None = None,
        codec: str = "pickle",
        start_method: str | None = None,
    ) -> Pylo:
        """Run tasks in ``number_of_workers`` worker processes, for CPU-bound work.

        Same options as :meth:`local_multithread`, plus ``start_method``
        (``"spawn"``, ``"fork"`` or ``"forkserver"``; None: the platform's
        default). The task function and inputs travel by pickle, falling back
        to cloudpickle, so lambdas and closures work. A worker process that
        dies fails only the input it was running (``WorkerCrashed``) and is
        replaced; a task past ``timeout`` has its process killed and
        replaced, and fails with ``TaskTimeout``.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: An argument is out of range or ``store`` is unknown.
            StoreError: The store exists but is damaged or foreign.
        """
        from pylo.workers.processes import ProcessBackend

        codec = _check_codec(codec)

        config = _config_from(
            number_of_workers=("number_of_workers", number_of_workers),
            max_worker_failures=max_worker_failures,
            task_executions_before_flush=task_executions_before_flush,
            store_exceptions=store_exceptions,
            flush_seconds=flush_seconds,
            retry=retry,
            max_failures=max_failures,
            store_results=store_results,
            timeout=timeout,
            rate_limit=rate_limit,
            progress=progress,
        )
        _check_sendable_retry(retry, "worker processes")
        options = {"start_method": ProcessBackend.check_start_method(start_method)}
        return cls(_open_store(local_store_dir, store), ProcessBackend, config, backend_options=options, codec=codec)

    @classmethod
    def local_asyncio(
        cls,
        local_store_dir: str | os.PathLike[str] | None,
        concurrency: int,
        max_worker_failures: int = 1000,
        task_executions_before_flush: int = 1000,
        store_exceptions: bool = True,
        *,
        store: Any = "sqlite",
        flush_seconds: float = _DEFAULT_FLUSH_SECONDS,
        retry: Any = None,
        max_failures: int | None = None,
        store_results: bool = False,
        timeout: float | None = None,
        rate_limit: float | str | None = None,
        progress: bool | None = None,
        codec: str = "pickle",
    ) -> Pylo:
        """Run ``async def`` tasks on one event loop, at most ``concurrency`` at a time.

        Same options as :meth:`local_multithread`, except that ``retry`` is a
        ``tenacity.AsyncRetrying`` policy. Each of the ``concurrency`` lanes
        has its own inputs and its own failure budget. A task past
        ``timeout`` is cancelled and fails with ``TaskTimeout``. The loop runs
        in its own thread, so this works from code that is itself inside an
        event loop (a notebook, for example).

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: An argument is out of range or ``store`` is unknown.
            StoreError: The store exists but is damaged or foreign.
        """
        from pylo.workers.aio import AsyncioBackend

        codec = _check_codec(codec)

        config = _config_from(
            number_of_workers=("concurrency", concurrency),
            max_worker_failures=max_worker_failures,
            task_executions_before_flush=task_executions_before_flush,
            store_exceptions=store_exceptions,
            flush_seconds=flush_seconds,
            retry=retry,
            max_failures=max_failures,
            store_results=store_results,
            timeout=timeout,
            rate_limit=rate_limit,
            progress=progress,
            async_retry=True,
        )
        return cls(_open_store(local_store_dir, store), AsyncioBackend, config, codec=codec)

    @classmethod
    def dask(
        cls,
        client: Any,
        store: Any,
        number_of_workers: int | None = None,
        max_worker_failures: int = 1000,
        task_executions_before_flush: int = 1000,
        store_exceptions: bool = True,
        *,
        flush_seconds: float = _DEFAULT_FLUSH_SECONDS,
        retry: Any = None,
        max_failures: int | None = None,
        store_results: bool = False,
        timeout: float | None = None,
        rate_limit: float | str | None = None,
        progress: bool | None = None,
        codec: str = "pickle",
    ) -> Pylo:
        """Run tasks as chunks on a Dask cluster; snapshots stay with this process.

        Args:
            client: A ``distributed.Client``, or the address of a Dask
                scheduler (``"tcp://host:8786"``).
            store: A directory (for the default SQLite store), a SQLAlchemy
                URL such as ``"postgresql+psycopg://user@host/db"``, or a
                :class:`~pylo.stores.base.Store`. Only this process writes it;
                cluster workers never need access to it.
            number_of_workers: Lanes (each with its own inputs and failure
                budget); None means one per thread of the cluster's workers.

        The other options are those of :meth:`local_multithread`. Requires
        ``pip install "pylo[dask]"``.

        Raises:
            ImportError: dask or distributed is not installed; the message
                says what to install.
            TypeError: An argument has the wrong type.
            ValueError: An argument is out of range.
            StoreError: The store exists but is damaged or foreign.
        """
        from pylo.workers.dask import DaskBackend

        codec = _check_codec(codec)
        resolved = DaskBackend.resolve_client(client)
        if number_of_workers is None:
            number_of_workers = DaskBackend.default_lanes(resolved)
        config = _config_from(
            number_of_workers=("number_of_workers", number_of_workers),
            max_worker_failures=max_worker_failures,
            task_executions_before_flush=task_executions_before_flush,
            store_exceptions=store_exceptions,
            flush_seconds=flush_seconds,
            retry=retry,
            max_failures=max_failures,
            store_results=store_results,
            timeout=timeout,
            rate_limit=rate_limit,
            progress=progress,
        )
        _check_sendable_retry(retry, "Dask workers")
        if isinstance(store, Store) or (isinstance(store, str) and "://" in store):
            opened = open_store(store, None)
        else:
            opened = _open_store(store, "sqlite")
        return cls(opened, DaskBackend, config, backend_options={"client": resolved}, codec=codec)

    # -- running ----------------------------------------------------------

    def start_from_scratch(
        self,
        task_inputs: Iterable[Any],
        task_function: Callable[[Any], Any],
        *,
        execution_id: str | None = None,
    ) -> str:
        """Run ``task_function`` over every input, blocking until the execution ends.

        Every input is recorded in the store before the first task runs, so
        the execution can be resumed after any failure, even ``kill -9``.

        Args:
            task_inputs: Any finite iterable: list, tuple, set, range,
                generator... Each input must be picklable.
            task_function: Called once per input; raising ``Exception``
                marks the input failed. Its return value is ignored unless
                ``store_results`` is on.
            execution_id: Your own id for the execution (1-128 of
                ``[A-Za-z0-9._-]``); a fresh one is made when None.

        Returns:
            The execution id.

        Raises:
            ExecutionExists: ``execution_id`` is taken in this store.
            InputSerializationError: An input cannot be serialized; the
                message names its position. The execution is left aborted.
            TypeError, ValueError: Bad arguments (nothing is recorded).
            KeyboardInterrupt, SystemExit: Re-raised after the outcomes so
                far are saved and the execution is marked interrupted.
            StoreError: The store could not be written.
        """
        function = self._checked_function(task_function)
        inputs = _check_inputs(task_inputs)
        new_id = _new_execution_id() if execution_id is None else _check_execution_id("execution_id", execution_id)
        record = _engine.new_record(new_id, _task_name(function), self._codec, self._config)

        def prepare() -> _engine._Plan:
            return _engine.record_fresh(self._store, record, inputs, self._codec)

        self._run(new_id, prepare, function)
        return new_id

    def start_from_past_execution(
        self,
        past_execution_id: str,
        task_function: Callable[[Any], Any],
        *,
        execution_id: str | None = None,
    ) -> str:
        """Start a new execution that runs only the past execution's unfinished inputs.

        The new execution inherits the past one's finished inputs as
        finished, gets a new id and ``parent_id=past_execution_id``, and
        starts with no failure records. The past execution is not changed.

        Args:
            past_execution_id: Any execution in the store, whatever its
                status (including one whose process was killed).
            task_function: The (fixed) task function.
            execution_id: Your own id for the new execution, or None.

        Returns:
            The new execution's id.

        Raises:
            ExecutionNotFound: No execution ``past_execution_id``.
            ExecutionNotResumable: Its inputs were never fully recorded, or
                it is still running in a live process on this machine.
            ExecutionExists: ``execution_id`` is taken in this store.
            TypeError, ValueError: Bad arguments.
            KeyboardInterrupt, SystemExit: As for :meth:`start_from_scratch`.
            StoreError: The store could not be read or written.
        """
        past_id = _check_execution_id("past_execution_id", past_execution_id)
        function = self._checked_function(task_function)
        new_id = _new_execution_id() if execution_id is None else _check_execution_id("execution_id", execution_id)
        parent = self._store.get_execution(past_id)
        if not parent.inputs_complete:
            raise ExecutionNotResumable(
                f"execution {past_id!r} stopped while its inputs were being recorded "
                f"({parent.total} recorded, no task ran); start it again with start_from_scratch"
            )
        if parent.status is ExecutionStatus.RUNNING and not _process_is_gone(parent):
            if parent.host == socket.gethostname():
                raise ExecutionNotResumable(
                    f"execution {past_id!r} is still running (process {parent.pid}); "
                    "wait for it to end or stop it before resuming"
                )
            logger.warning(
                "resuming execution %s, which is marked running on host %s: make sure it is not",
                past_id,
                parent.host,
            )
        codec = self._codec_of(parent)
        record = _engine.new_record(new_id, _task_name(function), codec, self._config, parent=parent)

        def prepare() -> _engine._Plan:
            return _engine.create_resumed(self._store, record, parent, codec)

        self._run(new_id, prepare, function, codec)
        return new_id

    def _checked_function(self, task_function: Any) -> Callable[[Any], Any]:
        function = _check_function(task_function, coroutines=self._backend.runs_coroutines)
        self._backend.check_function(function)
        return function

    def _run(
        self,
        execution_id: str,
        prepare: Callable[[], _engine._Plan],
        function: Callable[[Any], Any],
        codec: Codec | None = None,
    ) -> None:
        with _RUNNING_LOCK:
            _RUNNING_HERE.add(execution_id)
        bar: ProgressBar | None = None
        try:
            with _sigterm_as_system_exit():
                coordinator: _engine.Coordinator | None = None
                try:
                    plan = prepare()
                    if wants_progress(self._config.progress):
                        bar = ProgressBar(execution_id, plan.total, plan.finished)
                    coordinator = _engine.Coordinator(
                        self._store,
                        functools.partial(self._backend, **self._backend_options),
                        execution_id,
                        plan,
                        self._config,
                        codec or self._codec,
                        on_progress=None if bar is None else bar.update,
                    )
                    coordinator.run(function)
                except BaseException as exc:
                    # The coordinator records the end of what it ran; this covers the moments
                    # before (or an interrupt cutting its own ending short).
                    if coordinator is None or not coordinator.ended:
                        self._mark_failed_start(execution_id, exc)
                    raise
        finally:
            if bar is not None:
                bar.close()
            with _RUNNING_LOCK:
                _RUNNING_HERE.discard(execution_id)

    def _mark_failed_start(self, execution_id: str, exc: BaseException) -> None:
        """Give an execution a final status when it ended before its coordinator could (or while it did)."""
        from pylo.errors import ExecutionExists

        if isinstance(exc, ExecutionExists):
            return  # not ours
        try:
            self._store.get_execution(execution_id)
        except BaseException:
            return  # never created
        status = ExecutionStatus.ABORTED if isinstance(exc, Exception) else ExecutionStatus.INTERRUPTED
        _engine.record_end(self._store, execution_id, status)

    # -- inspecting -------------------------------------------------------

    def get_execution(self, execution_id: str) -> ExecutionRecord:
        """Return one execution's record (status, lineage, counts, times).

        Raises:
            ExecutionNotFound: No such execution.
        """
        return self._observed(self._store.get_execution(_check_execution_id("execution_id", execution_id)))

    def list_executions(self) -> list[ExecutionRecord]:
        """Return every execution in the store, oldest first.

        A running execution whose process on this machine is gone (killed,
        crashed) is reported with status ``crashed``.
        """
        return [self._observed(record) for record in self._store.list_executions()]

    @staticmethod
    def _observed(record: ExecutionRecord) -> ExecutionRecord:
        if _process_is_gone(record):
            return dataclasses.replace(record, status=ExecutionStatus.CRASHED)
        return record

    def get_state(self, execution_id: str) -> tuple[list[Any], list[Any]]:
        """Return ``(finished, unfinished)`` inputs, each list in input order.

        Unfinished inputs are the failed ones and the pending ones (never
        attempted, or cut off). Works while the execution runs elsewhere:
        the answer is as of its last flush.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The store, or a stored input, cannot be read.
        """
        record = self._store.get_execution(_check_execution_id("execution_id", execution_id))
        codec = self._codec_of(record)
        finished: list[Any] = []
        unfinished: list[Any] = []
        for batch in self._store.read_batches(record.id, payloads=True):
            items = self._decode_batch(codec, record, batch.batch_no, batch.payload)
            done = batch.states.count(FINISHED)
            if done == batch.size:
                finished.extend(items)
            elif done == 0:
                unfinished.extend(items)
            else:
                for item, state in zip(items, batch.states, strict=True):
                    (finished if state == FINISHED else unfinished).append(item)
        return finished, unfinished

    def _codec_of(self, record: ExecutionRecord) -> Codec:
        """The codec an execution was written with; an unknown name is damage (or a newer pylo)."""
        try:
            return get_codec(record.codec)
        except ValueError as exc:
            raise StoreError(
                f"execution {record.id!r} in the store at {self._store.location} was written with codec "
                f"{record.codec!r}, which this pylo cannot read ({exc}); use the pylo that wrote it"
            ) from None

    def _decode_batch(self, codec: Codec, record: ExecutionRecord, batch_no: int, payload: bytes | None) -> list[Any]:
        if payload is None:
            raise StoreError(
                f"batch {batch_no} of execution {record.id!r} has no inputs in the store at {self._store.location}"
            )
        try:
            return codec.decode_batch(payload)
        except Exception as exc:
            raise StoreError(
                f"cannot decode the inputs of batch {batch_no} of execution {record.id!r} in the store at "
                f"{self._store.location}: {type(exc).__name__}: {exc} (the classes of pickled inputs must be "
                "importable where they are read)"
            ) from exc

    def get_failures(self, execution_id: str) -> list[Failure]:
        """Return the execution's failure records, ordered by input position.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The store, or a stored input, cannot be read.
        """
        record = self._store.get_execution(_check_execution_id("execution_id", execution_id))
        codec = self._codec_of(record)
        rows = self._store.read_failures(record.id)
        if not rows:
            return []
        starts: list[int] = []
        numbers: list[int] = []
        sizes: list[int] = []
        for batch in self._store.read_batches(record.id):
            starts.append(batch.first_position)
            numbers.append(batch.batch_no)
            sizes.append(batch.size)
        slots: dict[int, int] = {}
        for row in rows:
            slot = bisect.bisect_right(starts, row.position) - 1
            if slot < 0 or row.position >= starts[slot] + sizes[slot]:
                raise StoreError(
                    f"execution {record.id!r} in the store at {self._store.location} is damaged: it has a "
                    f"failure record for position {row.position}, which is none of its inputs"
                )
            slots[row.position] = slot
        needed = sorted({numbers[slot] for slot in slots.values()})
        inputs: dict[int, list[Any]] = {}
        for batch_no, payload in self._store.read_payloads(record.id, needed):
            inputs[batch_no] = self._decode_batch(codec, record, batch_no, payload)
        failures = []
        for row in rows:
            slot = slots[row.position]
            batch_inputs = inputs.get(numbers[slot])
            if batch_inputs is None or len(batch_inputs) != sizes[slot]:
                raise StoreError(
                    f"batch {numbers[slot]} of execution {record.id!r} has lost inputs in the store at "
                    f"{self._store.location}"
                )
            item = batch_inputs[row.position - starts[slot]]
            failures.append(
                Failure(
                    input=item,
                    position=row.position,
                    exception_type=row.exc_type,
                    message=row.message,
                    traceback=row.traceback,
                    exception=_rebuild_exception(codec, row),
                    attempts=row.attempts,
                    worker=row.worker,
                    time=utc_from_timestamp(row.failed_at),  # type: ignore[arg-type]
                )
            )
        return failures

    def get_exceptions(self, execution_id: str) -> list[BaseException]:
        """Return the exception of each failed input, ordered by input position.

        An exception that could not be pickled when it happened, or cannot
        be unpickled now, comes back as a :class:`~pylo.errors.StoredTaskError`
        carrying its type name, message and traceback text. Executions run
        with ``store_exceptions=False`` have none.

        Raises:
            ExecutionNotFound: No such execution.
        """
        record = self._store.get_execution(_check_execution_id("execution_id", execution_id))
        codec = self._codec_of(record)
        found = []
        for row in self._store.read_failures(record.id):
            exc = _rebuild_exception(codec, row)
            if exc is not None:
                found.append(exc)
        return found

    def get_results(self, execution_id: str) -> list[tuple[Any, Any]]:
        """Return ``(input, result)`` for each finished input, in input order.

        Only executions run with ``store_results=True`` keep results. A
        resumed execution includes the results its ancestors recorded for
        the inputs it inherited as finished.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The store cannot be read.
        """
        record = self._store.get_execution(_check_execution_id("execution_id", execution_id))
        codec = self._codec_of(record)
        by_position: dict[int, bytes] = {}
        lineage: list[ExecutionRecord] = [record]
        while lineage[-1].parent_id is not None:
            try:
                lineage.append(self._store.get_execution(lineage[-1].parent_id))
            except PyloError:
                break
        for ancestor in reversed(lineage):  # newest wins
            by_position.update(self._store.read_results(ancestor.id))
        # States first, then the payloads of only the batches that have results.
        wanted = {
            batch.batch_no: batch
            for batch in self._store.read_batches(record.id)
            if any(batch.first_position + i in by_position for i in range(batch.size))
        }
        pairs: list[tuple[Any, Any]] = []
        for batch_no, payload in self._store.read_payloads(record.id, sorted(wanted)):
            batch = wanted[batch_no]
            items = self._decode_batch(codec, record, batch_no, payload)
            for offset, (item, state) in enumerate(zip(items, batch.states, strict=True)):
                position = batch.first_position + offset
                if state == FINISHED and position in by_position:
                    pairs.append((item, codec.decode_value(by_position[position])))
        return pairs

    # -- housekeeping -----------------------------------------------------

    @property
    def store(self) -> Store:
        """The store this Pylo reads and writes."""
        return self._store

    def close(self) -> None:
        """Close the store, and what the constructor opened for the workers.

        A Dask client made from a scheduler address is closed; one you
        passed in is left alone. The Pylo object is unusable afterwards.
        """
        try:
            self._backend.release(self._backend_options)
        finally:
            self._store.close()

    def __enter__(self) -> Pylo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pylo(store={self._store.location!r}, workers={self._config.number_of_workers})"


def _rebuild_exception(codec: Codec, row: FailureRow) -> BaseException | None:
    if row.exc_type is None:
        return None
    if row.exception is not None:
        try:
            return codec.decode_exception(row.exception)
        except Exception:
            logger.debug("cannot rebuild stored %s at position %d", row.exc_type, row.position, exc_info=True)
    return StoredTaskError(row.exc_type, row.message or "", row.traceback or "")
