"""The ``Pylo`` constructors: one per kind of workers, each a thin front for explicit arguments.

Each constructor only chooses: it validates its arguments into one
:class:`~pylo._options.RunOptions`, makes its
:class:`~pylo.workers.base.Backend`, and opens the store. The seed's
positional arguments (``max_worker_failures``, ``task_executions_before_flush``,
``store_exceptions``) stay in each signature; the other options are typed
keyword arguments, ``**options: Unpack[RunOptionArgs]``, listed once.
A new kind of workers needs one module in ``pylo/workers/`` and one short
constructor here.
"""

from __future__ import annotations

import os
from typing import Any, Self, Unpack

from pylo._codec import short_repr
from pylo._options import RunOptionArgs, RunOptions, check_int, check_seconds
from pylo.stores import is_store_url, open_store
from pylo.stores.base import Store
from pylo.workers.base import Backend

__all__ = ["Constructors"]


def _open_store(local_store_dir: Any, store: Any) -> Store:
    if isinstance(store, Store) or is_store_url(store):
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


class Constructors:
    """The classmethods that build a :class:`~pylo.execution.Pylo`."""

    def __init__(self, store: Store, backend: Backend, options: RunOptions, *, owns: bool = True) -> None:
        raise NotImplementedError  # pragma: no cover - Pylo defines it

    @classmethod
    def _build(cls, options: RunOptions, backend: Backend, local_store_dir: Any, store: Any) -> Self:
        backend.check_options(options)  # before the store is opened (and its directory made)
        return cls(_open_store(local_store_dir, store), backend, options)

    # -- constructors -----------------------------------------------------

    @classmethod
    def local_multithread(
        cls,
        local_store_dir: str | os.PathLike[str] | None,
        number_of_workers: int,
        max_worker_failures: int = 1000,
        task_executions_before_flush: int = 1024,
        store_exceptions: bool = True,
        *,
        store: Any = "sqlite",
        **options: Unpack[RunOptionArgs],
    ) -> Self:
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
            initializer: Called as ``initializer(*initargs)`` once in each
                worker thread, before it runs its first input (open a
                connection and keep it in a ``threading.local``). If it
                raises, the execution stops ``aborted`` with
                :class:`~pylo.errors.InitializerFailed` and the inputs no
                worker ran stay pending (docs/options.md).
            initargs: A tuple of arguments for ``initializer``.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: An argument is out of range or ``store`` is unknown.
            StoreError: The store exists but is damaged or foreign.
        """
        from pylo.workers.threads import ThreadBackend

        chosen = RunOptions.make(
            options, number_of_workers, max_worker_failures, task_executions_before_flush, store_exceptions
        )
        return cls._build(chosen, ThreadBackend(), local_store_dir, store)

    @classmethod
    def local_multiprocess(
        cls,
        local_store_dir: str | os.PathLike[str] | None,
        number_of_workers: int,
        max_worker_failures: int = 1000,
        task_executions_before_flush: int = 1024,
        store_exceptions: bool = True,
        *,
        store: Any = "sqlite",
        start_method: str | None = None,
        **options: Unpack[RunOptionArgs],
    ) -> Self:
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

        chosen = RunOptions.make(
            options, number_of_workers, max_worker_failures, task_executions_before_flush, store_exceptions
        )
        return cls._build(chosen, ProcessBackend(start_method), local_store_dir, store)

    @classmethod
    def local_asyncio(
        cls,
        local_store_dir: str | os.PathLike[str] | None,
        concurrency: int,
        max_worker_failures: int = 1000,
        task_executions_before_flush: int = 1024,
        store_exceptions: bool = True,
        *,
        store: Any = "sqlite",
        **options: Unpack[RunOptionArgs],
    ) -> Self:
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

        lanes = check_int("concurrency", concurrency, 1)
        chosen = RunOptions.make(options, lanes, max_worker_failures, task_executions_before_flush, store_exceptions)
        return cls._build(chosen, AsyncioBackend(), local_store_dir, store)

    @classmethod
    def dask(
        cls,
        client: Any,
        store: Any,
        number_of_workers: int | None = None,
        max_worker_failures: int = 1000,
        task_executions_before_flush: int = 1024,
        store_exceptions: bool = True,
        *,
        no_workers_timeout: float | None = 300.0,  # NO_WORKERS_TIMEOUT (pylo/workers/_dask_watchdog.py)
        **options: Unpack[RunOptionArgs],
    ) -> Self:
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
            no_workers_timeout: Seconds an execution waits while the cluster
                has no workers at all (a Dask nanny does not restart a worker
                that dies while it starts) before it stops ``aborted``, its
                outcomes kept, with a :class:`~pylo.errors.PyloError` naming
                the scheduler; at most a week. None waits for ever.

        The other options are those of :meth:`local_multithread`. Requires
        ``pip install ".[dask]"`` from a checkout of pylo.

        Raises:
            ImportError: dask or distributed is not installed; the message
                says what to install.
            TypeError: An argument has the wrong type.
            ValueError: An argument is out of range.
            StoreError: The store exists but is damaged or foreign.
        """
        from pylo.workers.dask import DaskBackend

        if number_of_workers is not None:
            check_int("number_of_workers", number_of_workers, 1)
        if no_workers_timeout is not None:
            no_workers_timeout = check_seconds("no_workers_timeout", no_workers_timeout)
        backend = DaskBackend(client, no_workers_timeout)
        try:
            lanes = backend.default_lanes() if number_of_workers is None else number_of_workers
            chosen = RunOptions.make(
                options, lanes, max_worker_failures, task_executions_before_flush, store_exceptions
            )
            if isinstance(store, Store) or is_store_url(store):
                return cls._build(chosen, backend, None, store)
            return cls._build(chosen, backend, store, "sqlite")
        except BaseException:
            backend.release()
            raise
