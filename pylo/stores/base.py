"""The store protocol and the records it persists.

A store only persists. It never runs tasks, never decodes inputs or
exceptions (those are opaque ``bytes`` produced by the engine's codec) and is
written to by exactly one party per execution: the coordinator of the process
that runs it. Any number of readers, in any process, may read at the same
time; every write method is atomic, so a reader sees a flush entirely or not
at all.

Layout of an execution, whatever the backend:

* one :class:`ExecutionRecord` (status, lineage, counts, metadata);
* its inputs in numbered batches (:class:`BatchRecord`): each batch holds a
  contiguous run of positions, the encoded inputs of those positions (the
  *payload*) and one state byte per position (:data:`PENDING`,
  :data:`FINISHED`, :data:`FAILED`). A resumed execution stores its own state
  bytes but no payloads: it reads them from ``input_source``, the execution
  that recorded the inputs first;
* one :class:`FailureRow` per failed position;
* optionally one encoded result per finished position;
* one :class:`ChunkRow` per chunk of outcomes: the positions a worker ran.

Every store must pass ``tests/stores/test_contract.py``.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pylo.stores.runs import RunStore

__all__ = [
    "FAILED",
    "FINISHED",
    "PENDING",
    "BatchRecord",
    "ChunkRow",
    "Claim",
    "ExecutionRecord",
    "ExecutionStatus",
    "FailureRow",
    "Flush",
    "Store",
]

#: State byte of an input not attempted yet (or cut off before it ran).
PENDING = 0
#: State byte of an input whose task returned normally.
FINISHED = 1
#: State byte of an input whose task raised an exception (after any retries).
FAILED = 2

#: Guards the making of each store's one run store (see Store.runs).
_RUN_STORES_LOCK = threading.Lock()

#: Version of the on-disk layout written by this pylo. A store written by an
#: unknown version is refused with a StoreError instead of being misread.
FORMAT_VERSION = 1


class ExecutionStatus(str, enum.Enum):
    """Where an execution is in its life.

    ``CRASHED`` is never written: it is reported for a ``RUNNING`` execution
    whose process is known to be gone.
    """

    RUNNING = "running"
    #: Every input was attempted: each one is finished or failed.
    COMPLETED = "completed"
    #: Failure budgets ran out: some inputs were left pending.
    STOPPED = "stopped"
    #: Ctrl-C, SIGTERM, SystemExit or another BaseException ended it early.
    INTERRUPTED = "interrupted"
    #: pylo itself could not go on (for example the store could not be written).
    ABORTED = "aborted"
    #: Its process died without a word (for example SIGKILL); derived on read.
    CRASHED = "crashed"

    def __str__(self) -> str:
        return self.value


def utc_from_timestamp(value: float | None) -> dt.datetime | None:
    """Convert a POSIX timestamp as stored to an aware UTC datetime."""
    if value is None:
        return None
    return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One execution, as kept by a store.

    Attributes:
        id: The execution id (unique in its store).
        parent_id: The execution this one resumed, or None.
        input_source: Id of the execution whose batches hold the input
            payloads (its own id unless it is a resume).
        status: See :class:`ExecutionStatus`.
        created_at: POSIX time the execution was created.
        updated_at: POSIX time of its last write (a heartbeat while running).
        ended_at: POSIX time it ended, or None while running.
        task_name: Qualified name of the task function (``module:qualname``).
        codec: Name of the codec that encoded its payloads and exceptions.
        total: Number of inputs recorded so far.
        finished: Number of inputs in state FINISHED.
        failed: Number of inputs in state FAILED.
        inputs_complete: True once every input of the iterable is recorded.
        pid: Process id of the coordinator that runs or ran it.
        host: Host name of that process.
        options: JSON-serializable settings the execution ran with.
        labels: The user's ``str -> str`` labels (``start_*(labels=...)``),
            for finding executions with ``list_executions(labels=...)``.
            Empty for executions of stores written before labels existed.
        stop_reason: Why it ended before every input was attempted, as
            recorded with its final status: ``max_failures``,
            ``max_worker_failures``, ``stop_requested``, ``interrupted``
            or ``aborted``; None while it runs, once it completed, and in
            stores written before reasons were kept. (``Pylo``'s readers
            also give the derived ``crashed``, and a reason read from the
            status, counts and options where none was recorded.)
        stop_detail: The same in words (``3 failures reached
            max_failures=3``, ``SIGTERM``, the initializer's error), or None.
    """

    id: str
    parent_id: str | None
    input_source: str
    status: ExecutionStatus
    created_at: float
    updated_at: float
    ended_at: float | None
    task_name: str
    codec: str
    total: int = 0
    finished: int = 0
    failed: int = 0
    inputs_complete: bool = False
    pid: int | None = None
    host: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_reason: str | None = None
    stop_detail: str | None = None

    @property
    def pending(self) -> int:
        """Number of inputs neither finished nor failed."""
        return self.total - self.finished - self.failed

    @property
    def unfinished(self) -> int:
        """Number of inputs pending or failed."""
        return self.total - self.finished

    @property
    def created(self) -> dt.datetime:
        """``created_at`` as an aware UTC datetime."""
        value = utc_from_timestamp(self.created_at)
        assert value is not None
        return value

    @property
    def ended(self) -> dt.datetime | None:
        """``ended_at`` as an aware UTC datetime, or None."""
        return utc_from_timestamp(self.ended_at)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A contiguous run of an execution's inputs.

    Attributes:
        batch_no: 0-based number of the batch within its execution.
        first_position: Position of the batch's first input.
        size: Number of inputs in the batch; ``len(states) == size``.
        states: One state byte per input (PENDING, FINISHED or FAILED).
        payload: The codec-encoded list of the batch's inputs, or None when
            the execution reads its payloads from its ``input_source``
            (and, in reads, when the payload was not asked for).
    """

    batch_no: int
    first_position: int
    size: int
    states: bytes
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class FailureRow:
    """The record of one failed input, as kept by a store.

    Attributes:
        position: Position of the failed input.
        exc_type: Qualified name of the exception type, or None when
            exceptions are not stored.
        message: ``str()`` of the exception, or None.
        traceback: Formatted traceback text, or None.
        exception: Codec-encoded exception object, or None when it could not
            be encoded or exceptions are not stored.
        attempts: How many times the input was attempted.
        worker: The worker (lane) that ran it.
        failed_at: POSIX time of the last attempt.
    """

    position: int
    exc_type: str | None
    message: str | None
    traceback: str | None
    exception: bytes | None
    attempts: int
    worker: int
    failed_at: float


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """Which worker ran a run of positions (one row per chunk of outcomes, not per input).

    Attributes:
        first_position: First position of the run.
        last_position: Last position of the run (inclusive). Every position
            from ``first_position`` to ``last_position`` was attempted by
            ``worker`` in this execution.
        worker: The worker (lane) that ran them, as in :attr:`FailureRow.worker`.
    """

    first_position: int
    last_position: int
    worker: int


@dataclass(frozen=True, slots=True)
class Flush:
    """Everything one flush makes durable, applied in a single transaction.

    Attributes:
        states: New state bytes of every batch that changed, by batch number.
            Each value replaces the batch's states whole.
        failures: New failure records (positions not recorded before).
        results: New ``(position, encoded result)`` pairs.
        total: The execution's ``total`` after this flush.
        finished: The execution's ``finished`` count after this flush.
        failed: The execution's ``failed`` count after this flush.
        status: A new status, or None to keep the current one.
        ended_at: The end time to record along with a final status, or None.
        inputs_complete: True to record that every input is now recorded.
        chunks: Which worker ran the positions given outcomes by this flush.
        stop_reason: With a final ``status``: why the execution ended
            before every input was attempted (see
            :attr:`ExecutionRecord.stop_reason`), or None. A flush that
            sets a status replaces the recorded reason and detail with its
            own (None included); one that sets none keeps them.
        stop_detail: The same in words, or None.
    """

    states: Mapping[int, bytes]
    failures: Sequence[FailureRow]
    results: Sequence[tuple[int, bytes]]
    total: int
    finished: int
    failed: int
    status: ExecutionStatus | None = None
    ended_at: float | None = None
    inputs_complete: bool = False
    chunks: Sequence[ChunkRow] = ()
    stop_reason: str | None = None
    stop_detail: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """Who is resuming an execution right now (see :meth:`Store.claim_execution`).

    Attributes:
        execution_id: The execution being resumed.
        claimant: Id of the new execution that resumes it.
        pid: Process id of the process running the resume.
        host: Host name of that process.
        claimed_at: POSIX time the claim was taken.
    """

    execution_id: str
    claimant: str
    pid: int
    host: str
    claimed_at: float

    def same_holder(self, other: Claim) -> bool:
        """True when ``other`` is this claim (claimant, process and host alike)."""
        return (self.claimant, self.pid, self.host) == (other.claimant, other.pid, other.host)


class Store(abc.ABC):
    """Where executions are persisted.

    Implementations must be safe to use from several threads of one process
    and from several processes at once, as long as each execution has a
    single writer. Methods raise :class:`~pylo.errors.StoreError` (naming
    :attr:`location`) when the underlying storage is damaged, foreign, of an
    unknown format version, or cannot be written; never a bare driver, OS,
    ``pickle`` or ``KeyError`` exception.
    """

    #: Human-readable location (path or URL without password) for messages.
    location: str

    @abc.abstractmethod
    def create_execution(self, record: ExecutionRecord) -> None:
        """Create a new execution with no batches, failures or results.

        Its ``labels`` are kept with it, for ``list_executions(labels=...)``.

        Raises:
            ExecutionExists: An execution with ``record.id`` exists, even when
                another process created it a moment ago.
        """

    @abc.abstractmethod
    def add_batches(self, execution_id: str, batches: Sequence[BatchRecord]) -> None:
        """Append batches of inputs, atomically, and add their sizes to ``total``.

        Batches arrive in ``batch_no`` order, numbered from 0 without gaps
        across calls. ``payload`` is None for a resumed execution.

        Raises:
            ExecutionNotFound: No such execution.
        """

    @abc.abstractmethod
    def record_flush(self, execution_id: str, flush: Flush) -> None:
        """Apply one flush atomically: states, failures, results, counts, status.

        A flush that sets a status also sets the stop reason and detail
        (``Flush.stop_reason``), None included. Also sets ``updated_at`` to now. After a crash at any point, a reader
        sees either all of the flush or none of it.

        Raises:
            ExecutionNotFound: No such execution.
        """

    @abc.abstractmethod
    def get_execution(self, execution_id: str) -> ExecutionRecord:
        """Return the execution's record as of its last completed write.

        Raises:
            ExecutionNotFound: No such execution.
        """

    @abc.abstractmethod
    def list_executions(self, *, labels: Mapping[str, str] | None = None) -> list[ExecutionRecord]:
        """Return every execution, oldest (by ``created_at``, then id) first.

        Args:
            labels: Only the executions carrying all of these labels, found
                through the store's own index (a table, an index directory),
                not by reading every execution. pylo passes this argument
                only when the user asks for labels, so a store written for
                an earlier pylo (without it) still works for everything else.
        """

    @abc.abstractmethod
    def read_batches(self, execution_id: str, *, payloads: bool = False) -> Iterator[BatchRecord]:
        """Yield the execution's batches in ``batch_no`` order.

        Args:
            execution_id: The execution.
            payloads: When True, each record carries its payload, read from
                the execution's ``input_source`` if it has none of its own.
                When False, ``payload`` is None (cheap: states only).

        Raises:
            ExecutionNotFound: No such execution (raised on the first
                ``next()``, or before).
            StoreError: The batches hold fewer inputs than the execution's
                ``total`` (rows or frames were lost), or their states are
                damaged.
        """

    @abc.abstractmethod
    def read_payloads(self, execution_id: str, batch_nos: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """Yield ``(batch_no, payload)`` for the given batches, in the given order.

        Payloads come from the execution's ``input_source``. Batch numbers
        the execution does not have are skipped.

        Raises:
            ExecutionNotFound: No such execution.
        """

    @abc.abstractmethod
    def read_failures(self, execution_id: str) -> list[FailureRow]:
        """Return the execution's own failure records, ordered by position.

        Raises:
            ExecutionNotFound: No such execution.
        """

    @abc.abstractmethod
    def read_results(self, execution_id: str) -> Iterator[tuple[int, bytes]]:
        """Yield the execution's own ``(position, encoded result)`` pairs by position.

        Raises:
            ExecutionNotFound: No such execution.
        """

    def read_chunks(self, execution_id: str) -> list[ChunkRow]:
        """Return the execution's own :class:`ChunkRow` records, ordered by first position.

        Runs do not overlap. A store that does not keep them (or an
        execution recorded before they were kept) returns an empty list.

        Raises:
            ExecutionNotFound: No such execution.
        """
        self.get_execution(execution_id)  # the existence check
        return []

    def runs(self) -> RunStore:
        """Return the run store that keeps this store's pipeline runs (one per store).

        The run store shares this store's database or directory. Stores
        written before pipelines existed still open: their run store is
        simply empty until a run is created.

        Raises:
            StoreError: This kind of store cannot keep pipeline runs.
        """
        with _RUN_STORES_LOCK:
            runs: RunStore | None = getattr(self, "_run_store", None)
            if runs is None:
                runs = self._run_store = self._open_runs()
        return runs

    def _open_runs(self) -> RunStore:
        """Make this store's run store; :meth:`runs` calls it once and keeps the result.

        Raises:
            StoreError: This kind of store cannot keep pipeline runs.
        """
        from pylo.errors import StoreError

        raise StoreError(
            f"the store at {self.location} ({type(self).__name__}) cannot keep pipeline runs; "
            "use the sqlite or files store, or a SQLAlchemy URL"
        )

    # -- claims: one resume of an execution at a time ----------------------
    # Not abstract, so that stores written for an earlier pylo still load;
    # without them a store cannot refuse a second resume (pylo warns).

    def claim_execution(self, execution_id: str, claim: Claim, *, replacing: Claim | None = None) -> Claim | None:
        """Atomically claim an execution for a resume, or say who holds it.

        Sets ``claim`` when the execution has no claim, or when its claim
        is held by ``replacing`` (:meth:`Claim.same_holder`: the caller
        judged it stale, its process being gone); then returns None.
        Otherwise changes nothing and returns the current claim. Of several
        processes claiming (or replacing the same claim) at once, in any
        number of processes, exactly one gets None.

        Raises:
            ExecutionNotFound: No such execution.
            NotImplementedError: The store cannot keep claims.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no claims")

    def release_claim(self, execution_id: str, claimant: str) -> None:
        """Remove the claim on ``execution_id`` if ``claimant`` holds it; else do nothing.

        Raises:
            NotImplementedError: The store cannot keep claims.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no claims")

    # -- deleting: not abstract either, for the same reason ------------------

    def delete_execution(self, execution_id: str) -> None:
        """Remove the execution and everything kept for it, all at once, or nothing.

        Its record, batches, failures, results, labels (the label index no
        longer names it) and claim go together: after a crash at any point,
        readers see the whole execution or none of it, and its id may be
        created again. Other executions are not touched.

        Refuses, changing nothing, when another execution depends on it:
        one whose ``parent_id`` or ``input_source`` is ``execution_id`` (a
        resume reads its inputs from the first execution of its lineage,
        and its results through its ancestors). Whether it runs, or a
        pipeline run owns it, is for the caller (``Pylo.delete_execution``)
        to check; that caller also holds a claim on it
        (:meth:`claim_execution`) while deleting, which keeps a resume
        from starting meanwhile.

        Raises:
            ExecutionNotFound: No such execution.
            ExecutionInUse: Other executions depend on it;
                ``dependents`` lists their ids, oldest first.
            NotImplementedError: The store cannot delete executions.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot delete executions")

    def close(self) -> None:  # noqa: B027 - optional hook, most stores need nothing
        """Release connections and file handles. The store is unusable after."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
