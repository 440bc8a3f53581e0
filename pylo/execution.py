"""``Pylo``: run a function over many inputs, durably, and resume after failures.

Example:
    >>> from pylo.execution import Pylo
    >>> pylo = Pylo.local_multithread("/tmp/pylo-doc", number_of_workers=2)
    >>> execution_id = pylo.start_from_scratch(range(10), print)  # doctest: +SKIP
    >>> finished, unfinished = pylo.get_state(execution_id)  # doctest: +SKIP

A Pylo is three things: a store (where snapshots live), a backend (a kind
of workers, :class:`~pylo.workers.base.Backend`) and run options
(:class:`~pylo._options.RunOptions`). The constructors below only choose
them; running is :mod:`pylo._running` and :mod:`pylo._engine`.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pylo import _claims, _deleting, _reader, _stops
from pylo._codec import Codec, get_codec, short_repr
from pylo._constructors import Constructors
from pylo._labels import check_labels
from pylo._options import RunOptions
from pylo._options import check_execution_id as _check_execution_id
from pylo._plan import Plan, create_resumed, new_record, record_fresh
from pylo._reader import Failure
from pylo._running import process_is_gone as _process_is_gone
from pylo._running import run_execution
from pylo.errors import DamagedExecutions, ExecutionExists, ExecutionNotResumable
from pylo.pipeline._api import PipelineMethods
from pylo.stores.base import ExecutionRecord, ExecutionStatus, Store
from pylo.workers._checks import task_name as _task_name
from pylo.workers.base import Backend

__all__ = ["Failure", "Pylo"]

logger = logging.getLogger(__name__)


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


def _new_execution_id() -> str:
    # Sortable by time for people reading `list`, unique by the random tail.
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


class Pylo(Constructors, PipelineMethods):
    """Runs a task function over inputs and keeps a durable snapshot of each execution.

    Build one with a constructor such as :meth:`local_multithread`. A Pylo
    object may be used from several threads, and several executions may run
    at once in one Pylo, each started from its own thread: each gets lanes
    and failure budgets of its own. Each ``start_*`` call blocks until its
    execution ends. See :mod:`pylo._running` for signals in threads.
    """

    def __init__(self, store: Store, backend: Backend, options: RunOptions, *, owns: bool = True) -> None:
        """Wire a store, a backend and run options together.

        Most users want a constructor such as :meth:`local_multithread`;
        this is the one a new kind of workers, or the pipeline layer, uses.

        Args:
            store: Where snapshots go.
            backend: The kind of workers (a
                :class:`~pylo.workers.base.Backend` instance), used by every
                execution of this Pylo.
            options: The run options.
            owns: Whether :meth:`close` closes the store and releases the
                backend (False for a Pylo that shares them, as
                :meth:`with_options` makes).

        Raises:
            TypeError: The options do not suit the backend (say, an
                ``AsyncRetrying`` policy for thread workers).
        """
        backend.check_options(options)
        self._store = store
        self._backend = backend
        self._options = options
        self._codec: Codec = get_codec(options.codec)
        self._owns = owns

    # -- options and workers ------------------------------------------------

    @property
    def options(self) -> RunOptions:
        """The run options of this Pylo's executions (frozen; see :meth:`with_options`)."""
        return self._options

    @property
    def backend(self) -> Backend:
        """The kind of workers this Pylo runs on."""
        return self._backend

    def with_options(self, **changes: Any) -> Pylo:
        """A Pylo that runs with some options changed, on this one's store and workers.

        For example ``pylo.with_options(store_results=True, retry=policy)``.
        The new Pylo shares the store and the backend: closing it closes
        nothing, and this one must stay open while it is used. Executions of
        both may run at the same time.

        Args:
            **changes: Run options by name (those of :class:`~pylo._options.RunOptions`).

        Returns:
            A new Pylo; this one is unchanged.

        Raises:
            TypeError: An unknown option (the message lists the valid
                ones), a value of the wrong type, or options these workers
                cannot take.
            ValueError: A value out of range.
        """
        return type(self)(self._store, self._backend, self._options.replace(**changes), owns=False)

    # -- running ----------------------------------------------------------

    def start_from_scratch(
        self,
        task_inputs: Iterable[Any],
        task_function: Callable[[Any], Any],
        *,
        execution_id: str | None = None,
        labels: Mapping[str, str] | None = None,
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
                ``[A-Za-z0-9._-]``, starting with a letter or digit); a
                fresh one is made when None. An execution of that id that
                ended before all its inputs were recorded (Ctrl-C while
                they were read) is replaced: it ran nothing.
            labels: ``str -> str`` labels kept on the execution record, to
                find it with ``list_executions(labels=...)``.

        Returns:
            The execution id.

        Raises:
            ExecutionExists: ``execution_id`` is taken in this store by an
                execution that recorded all its inputs, or that is still
                recording them.
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
        checked_labels = check_labels(labels)
        record = new_record(new_id, _task_name(function), self._codec, self._options)
        record = dataclasses.replace(record, labels=checked_labels, options=self._recorded_options(record))

        def prepare() -> Plan:
            try:
                return record_fresh(self._store, record, inputs, self._codec)
            except ExecutionExists:
                # Only a given id can be taken. Looked at on a clash, not before every start: a read
                # first cost every batch node of a pipeline (its id is always given) a transaction.
                if execution_id is None or not _deleting.replace_unrecorded(self._store, new_id):
                    raise
            return record_fresh(self._store, record, inputs, self._codec)

        run_execution(self._store, self._backend, self._options, new_id, prepare, function, self._codec)
        return new_id

    def start_from_past_execution(
        self,
        past_execution_id: str,
        task_function: Callable[[Any], Any],
        *,
        execution_id: str | None = None,
        labels: Mapping[str, str] | None = None,
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
            labels: Labels for the new execution, added to (and overriding)
                the ones it inherits from the past execution.

        Returns:
            The new execution's id.

        Raises:
            ExecutionNotFound: No execution ``past_execution_id``.
            ExecutionNotResumable: Its inputs were never fully recorded, it
                is still running in a live process on this machine, or
                another resume of it is running (the message names it).
            ExecutionExists: ``execution_id`` is taken in this store.
            TypeError, ValueError: Bad arguments.
            KeyboardInterrupt, SystemExit: As for :meth:`start_from_scratch`.
            StoreError: The store could not be read or written, or the past
                execution's inputs are damaged or missing.
        """
        past_id = _check_execution_id("past_execution_id", past_execution_id)
        checked_labels = check_labels(labels)
        function = self._checked_function(task_function)
        new_id = _new_execution_id() if execution_id is None else _check_execution_id("execution_id", execution_id)
        parent = _reader.read_record(self._store, past_id)
        if not parent.inputs_complete:
            raise ExecutionNotResumable(
                f"execution {past_id!r} stopped while its inputs were being recorded "
                f"({parent.total} recorded, no task ran); start it again with "
                f"start_from_scratch(inputs, function, execution_id={past_id!r}), which replaces it"
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
        # A parent with lost batches is refused before anything is created.
        _reader.read_layout(self._store, parent)
        record = new_record(new_id, _task_name(function), codec, self._options, parent=parent)
        record = dataclasses.replace(
            record, labels={**parent.labels, **checked_labels}, options=self._recorded_options(record)
        )

        def prepare() -> Plan:
            return create_resumed(self._store, record, parent, codec)

        # One resume of an execution at a time (another process may be at it).
        with _claims.resume_claim(self._store, past_id, new_id):
            run_execution(self._store, self._backend, self._options, new_id, prepare, function, codec)
        return new_id

    def _checked_function(self, task_function: Any) -> Callable[[Any], Any]:
        self._backend.check_function(task_function)
        return task_function  # checked: callable, of the kind these workers run

    # -- inspecting -------------------------------------------------------

    def get_execution(self, execution_id: str) -> ExecutionRecord:
        """Return one execution's record (status, lineage, counts, times).

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: It is damaged, or the execution holding its inputs
                (a resume reads its first ancestor's) is missing.
        """
        return self._observed(self._record(execution_id))

    def list_executions(self, *, labels: Mapping[str, str] | None = None) -> list[ExecutionRecord]:
        """Return every execution in the store, oldest first.

        A running execution whose process on this machine is gone (killed,
        crashed) is reported with status ``crashed``.

        Args:
            labels: Only the executions carrying all of these labels (the
                store looks them up in its index).

        Raises:
            DamagedExecutions: Some executions cannot be read (damaged, or
                their inputs' execution is missing); the error names them
                and carries the intact ones.
            StoreError: The store cannot be read.
            TypeError, ValueError: ``labels`` is not a dict of str to str.
        """
        try:
            return [self._observed(record) for record in _reader.list_records(self._store, check_labels(labels))]
        except DamagedExecutions as exc:
            exc.executions = [self._observed(record) for record in exc.executions]
            raise

    def lineage(self, execution_id: str) -> list[ExecutionRecord]:
        """Return the chain of executions from the first one to the latest resume, through this one.

        Its ancestors (oldest first), the execution itself, then its newest
        resume, that one's newest resume, and so on.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: A parent in the chain is missing from the store.
        """
        return [self._observed(record) for record in _reader.lineage(self._store, self._record(execution_id))]

    @staticmethod
    def _observed(record: ExecutionRecord) -> ExecutionRecord:
        if _process_is_gone(record):
            record = dataclasses.replace(record, status=ExecutionStatus.CRASHED)
        return _stops.observed(record)  # crashed, or recorded by a pylo that kept no stop reasons

    def get_state(self, execution_id: str) -> tuple[list[Any], list[Any]]:
        """Return ``(finished, unfinished)`` inputs, each list in input order.

        Unfinished inputs are the failed ones and the pending ones (never
        attempted, or cut off). Works while the execution runs elsewhere:
        the answer is as of its last flush.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The store, or a stored input, cannot be read, or
                inputs are missing from it.
        """
        return _reader.read_state(self._store, self._record(execution_id))

    def _recorded_options(self, record: ExecutionRecord) -> dict[str, Any]:
        # The kind of workers joins the run options, so that `pylo resume`
        # runs on the same kind (see RunOptions.describe for the other keys).
        return {**record.options, "workers": self._backend.name}

    def _record(self, execution_id: str) -> ExecutionRecord:
        return _reader.read_record(self._store, _check_execution_id("execution_id", execution_id))

    def _codec_of(self, record: ExecutionRecord) -> Codec:
        """The codec an execution was written with; an unknown name is damage (or a newer pylo)."""
        return _reader.codec_of(self._store, record)

    def get_failures(self, execution_id: str) -> list[Failure]:
        """Return the execution's failure records, ordered by input position.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The store, or a stored input, cannot be read, or
                failure records are missing from it.
        """
        return _reader.read_failures(self._store, self._record(execution_id))

    def get_exceptions(self, execution_id: str) -> list[BaseException]:
        """Return the exception of each failed input, ordered by input position.

        An exception that could not be pickled when it happened, or cannot
        be unpickled now, comes back as a :class:`~pylo.errors.StoredTaskError`
        carrying its type name, message and traceback text. Executions run
        with ``store_exceptions=False`` have none.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The store cannot be read, or failure records are
                missing from it.
        """
        return _reader.read_exceptions(self._store, self._record(execution_id))

    def get_results(self, execution_id: str) -> list[tuple[Any, Any]]:
        """Return ``(input, result)`` for each finished input, in input order.

        Only executions run with ``store_results=True`` keep results. A
        resumed execution includes the results its ancestors recorded for
        the inputs it inherited as finished.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The store cannot be read, or an ancestor or inputs
                are missing from it.
        """
        return _reader.read_results(self._store, self._record(execution_id))

    # -- housekeeping -----------------------------------------------------

    def delete_execution(self, execution_id: str) -> None:
        """Delete an execution and everything kept for it, atomically.

        Its record, inputs, states, failures, results and labels go at
        once; its id is free again. An execution still in use is kept:

        * one that is running (or being resumed);
        * one that a later execution resumed: a resume reads its inputs
          and results through its ancestors, so delete the newest
          execution of a lineage first (:meth:`lineage` lists it);
        * a batch node's execution of a pipeline run, which the run's
          result and resume read.

        Args:
            execution_id: The execution to delete.

        Raises:
            ExecutionNotFound: No such execution.
            ExecutionInUse: It is in use (see above); the message says by
                what, and ``dependents`` names the executions that resumed
                it. Nothing is deleted.
            StoreError: The store cannot be written, or cannot delete
                executions (a store written for an earlier pylo).
            TypeError, ValueError: ``execution_id`` is not a valid id.
        """
        _deleting.delete_execution(self._store, _check_execution_id("execution_id", execution_id))

    @property
    def store(self) -> Store:
        """The store this Pylo reads and writes."""
        return self._store

    def close(self) -> None:
        """Close the store, and release what the constructor made for the workers.

        A Dask client made from a scheduler address is closed; one you
        passed in is left alone. A Pylo made by :meth:`with_options` closes
        nothing (it shares its parent's store and workers). The Pylo object
        is unusable afterwards.
        """
        if not self._owns:
            return
        try:
            self._backend.release()
        finally:
            self._store.close()

    def __enter__(self) -> Pylo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Pylo(store={self._store.location!r}, backend={self._backend.name!r}, "
            f"workers={self._options.number_of_workers})"
        )
