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

import bisect
import dataclasses
import datetime as dt
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pylo._codec import Codec, get_codec, short_repr
from pylo._constructors import Constructors
from pylo._options import RunOptions
from pylo._options import check_execution_id as _check_execution_id
from pylo._plan import Plan, create_resumed, new_record, record_fresh
from pylo._running import process_is_gone as _process_is_gone
from pylo._running import run_execution
from pylo.errors import ExecutionNotResumable, PyloError, StoredTaskError, StoreError
from pylo.stores.base import (
    FINISHED,
    ExecutionRecord,
    ExecutionStatus,
    FailureRow,
    Store,
    utc_from_timestamp,
)
from pylo.workers._checks import task_name as _task_name
from pylo.workers.base import Backend

__all__ = ["Failure", "Pylo"]

logger = logging.getLogger(__name__)


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


class Pylo(Constructors):
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
        record = new_record(new_id, _task_name(function), self._codec, self._options)

        def prepare() -> Plan:
            return record_fresh(self._store, record, inputs, self._codec)

        run_execution(self._store, self._backend, self._options, new_id, prepare, function, self._codec)
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
        record = new_record(new_id, _task_name(function), codec, self._options, parent=parent)

        def prepare() -> Plan:
            return create_resumed(self._store, record, parent, codec)

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


def _rebuild_exception(codec: Codec, row: FailureRow) -> BaseException | None:
    if row.exc_type is None:
        return None
    if row.exception is not None:
        try:
            return codec.decode_exception(row.exception)
        except Exception:
            logger.debug("cannot rebuild stored %s at position %d", row.exc_type, row.position, exc_info=True)
    return StoredTaskError(row.exc_type, row.message or "", row.traceback or "")
