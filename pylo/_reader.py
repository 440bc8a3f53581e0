"""The one place that decodes what a store holds: inputs, failures, results and lineage.

Stores persist opaque bytes and never decode them; the facade
(:class:`~pylo.execution.Pylo`'s ``get_*`` methods) and the ``pylo``
command read through here. Every function checks what it read against what
it knows (the counts on the execution record, the batch layout pylo
writes) and turns any damage, an undecodable payload included, into a
:class:`~pylo.errors.StoreError` naming the execution that holds the
damaged data, never a bare ``pickle``/``IndexError`` or a silently short
answer::

    record ─► codec_of ─► read_layout (states, checked) ─► read_inputs ─► state, inputs
                             │                                ▲
                             └─► failures / results ──────────┘  (payloads of the batches needed)

Every function takes the store and an :class:`ExecutionRecord` read before
anything else: its counts only grow while the execution runs, so what is
read after it can be checked against them.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pylo._codec import Codec, get_codec
from pylo.errors import DamagedExecutions, ExecutionNotFound, StoredTaskError, StoreError
from pylo.stores.base import FAILED, FINISHED, PENDING, BatchRecord, ExecutionRecord, FailureRow, Store
from pylo.stores.base import utc_from_timestamp as _utc

__all__ = [
    "ALL_STATES",
    "Failure",
    "codec_of",
    "decode_inputs",
    "lineage",
    "list_records",
    "read_exceptions",
    "read_failures",
    "read_inputs",
    "read_layout",
    "read_record",
    "read_results",
    "read_state",
    "rebuild_exception",
]

logger = logging.getLogger(__name__)

#: Every input state, for :func:`read_inputs`.
ALL_STATES = frozenset({PENDING, FINISHED, FAILED})


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


def _damaged(store: Store, execution_id: str, problem: str) -> StoreError:
    return StoreError(f"execution {execution_id!r} in the store at {store.location} is damaged: {problem}")


# -- decoding -------------------------------------------------------------------


def codec_of(store: Store, record: ExecutionRecord) -> Codec:
    """The codec an execution was written with.

    Raises:
        StoreError: Its name is unknown (damage, or a newer pylo wrote it).
    """
    try:
        return get_codec(record.codec)
    except ValueError as exc:
        raise StoreError(
            f"execution {record.id!r} in the store at {store.location} was written with codec "
            f"{record.codec!r}, which this pylo cannot read ({exc}); use the pylo that wrote it"
        ) from None


def decode_inputs(
    codec: Codec, store: Store, holder_id: str, batch_no: int, payload: bytes | None, size: int
) -> list[Any]:
    """Decode one batch's inputs, checking that there are ``size`` of them.

    Args:
        codec: The codec of the execution.
        store: The store (named in messages).
        holder_id: The execution whose batch holds the payload (a resume's
            ``input_source``): the one to blame for damage.
        batch_no: The batch number.
        payload: The encoded inputs, or None when the store had none.
        size: How many inputs the batch has.

    Raises:
        StoreError: The payload is missing, cannot be decoded, or holds
            another number of inputs.
    """
    where = f"batch {batch_no} of execution {holder_id!r} in the store at {store.location}"
    if payload is None:
        raise StoreError(f"the inputs of {where} are missing")
    try:
        items = codec.decode_batch(payload)
    except Exception as exc:
        raise StoreError(
            f"cannot decode the inputs of {where}: {type(exc).__name__}: {exc} (the classes of pickled "
            "inputs must be importable where they are read)"
        ) from exc
    if not isinstance(items, list) or len(items) != size:
        found = len(items) if isinstance(items, list) else type(items).__name__
        raise StoreError(f"the inputs of {where} are damaged: {found} inputs where it has {size}")
    return items


def _decode_value(codec: Codec, store: Store, execution_id: str, position: int, data: bytes) -> Any:
    try:
        return codec.decode_value(data)
    except Exception as exc:
        raise StoreError(
            f"cannot decode the result of input #{position} of execution {execution_id!r} in the store at "
            f"{store.location}: {type(exc).__name__}: {exc}"
        ) from exc


def rebuild_exception(codec: Codec, row: FailureRow) -> BaseException | None:
    """The exception of a failure record: the object when it decodes, else a StoredTaskError."""
    if row.exc_type is None:
        return None
    if row.exception is not None:
        try:
            return codec.decode_exception(row.exception)
        except Exception:
            logger.debug("cannot rebuild stored %s at position %d", row.exc_type, row.position, exc_info=True)
    return StoredTaskError(row.exc_type, row.message or "", row.traceback or "")


# -- inputs ---------------------------------------------------------------------


def read_layout(store: Store, record: ExecutionRecord) -> list[BatchRecord]:
    """The execution's batches (states, no payloads), checked against its record.

    pylo numbers batches from 0, each starting where the one before ended
    (a resume copies all of its parent's), and they hold at least
    ``record.total`` inputs. Anything else means rows or frames were lost.

    Raises:
        ExecutionNotFound: No such execution.
        StoreError: A batch is missing or misplaced, or the store is damaged.
    """
    batches = list(store.read_batches(record.id))
    position = 0
    for number, batch in enumerate(batches):
        if batch.batch_no != number:
            raise _damaged(store, record.id, f"batch {number} is missing (the next one it has is {batch.batch_no})")
        if batch.first_position != position:
            raise _damaged(
                store, record.id, f"batch {number} starts at position {batch.first_position}, not {position}"
            )
        position += batch.size
    if position < record.total:
        raise _damaged(
            store, record.id, f"its batches hold {position:,} inputs, but it has {record.total:,}: batches are missing"
        )
    return batches


def _payloads(store: Store, record: ExecutionRecord, batches: Sequence[BatchRecord]) -> Iterator[bytes]:
    """The payload of each batch, in order; a batch the store skips is damage."""
    expected = iter(batches)
    for batch_no, payload in store.read_payloads(record.id, [batch.batch_no for batch in batches]):
        batch = next(expected, None)
        if batch is None or batch.batch_no != batch_no:
            raise _missing_inputs(store, record, batch)
        yield payload
    batch = next(expected, None)
    if batch is not None:
        raise _missing_inputs(store, record, batch)


def _missing_inputs(store: Store, record: ExecutionRecord, batch: BatchRecord | None) -> StoreError:
    which = "a batch" if batch is None else f"batch {batch.batch_no}"
    return StoreError(
        f"the inputs of {which} of execution {record.input_source!r} are missing in the store at "
        f"{store.location} (execution {record.id!r} reads them)"
    )


def read_inputs(
    store: Store, record: ExecutionRecord, states: Collection[int] = ALL_STATES
) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(position, state, input)`` of the inputs in ``states``, in input order.

    The states are read (and checked) first, then only the payloads of the
    batches that have a wanted input, one batch in memory at a time. The
    answer is as of that read of the states.

    Raises:
        StoreError: The store is damaged (raised before anything is yielded
            when batches are missing).
    """
    codec = codec_of(store, record)
    batches = [batch for batch in read_layout(store, record) if any(state in states for state in set(batch.states))]
    return _inputs_of(store, record, codec, batches, states)


def _inputs_of(
    store: Store, record: ExecutionRecord, codec: Codec, batches: list[BatchRecord], states: Collection[int]
) -> Iterator[tuple[int, int, Any]]:
    for batch, payload in zip(batches, _payloads(store, record, batches), strict=False):
        items = decode_inputs(codec, store, record.input_source, batch.batch_no, payload, batch.size)
        first = batch.first_position
        for offset, (item, state) in enumerate(zip(items, batch.states, strict=True)):
            if state in states:
                yield first + offset, state, item


def read_state(store: Store, record: ExecutionRecord) -> tuple[list[Any], list[Any]]:
    """``(finished, unfinished)`` inputs, each in input order (see ``Pylo.get_state``)."""
    finished: list[Any] = []
    unfinished: list[Any] = []
    for _, state, item in read_inputs(store, record):
        (finished if state == FINISHED else unfinished).append(item)
    return finished, unfinished


# -- failures -------------------------------------------------------------------


def _failure_rows(store: Store, record: ExecutionRecord) -> list[FailureRow]:
    rows = store.read_failures(record.id)
    # Failures are only ever added, each with its input's FAILED state, in
    # one flush: read after the record, there are at least record.failed.
    if len(rows) < record.failed:
        raise _damaged(
            store, record.id, f"it has {len(rows):,} failure records for its {record.failed:,} failed inputs"
        )
    return rows


def read_failures(store: Store, record: ExecutionRecord) -> list[Failure]:
    """The execution's failures with their inputs, by position (see ``Pylo.get_failures``).

    Raises:
        StoreError: Failure records are missing, one names a position that
            is none of the execution's inputs, or an input cannot be read.
    """
    codec = codec_of(store, record)
    layout = read_layout(store, record)
    rows = _failure_rows(store, record)
    starts = [batch.first_position for batch in layout]
    by_batch: dict[int, list[FailureRow]] = {}
    for row in rows:
        slot = bisect.bisect_right(starts, row.position) - 1
        if slot < 0 or row.position >= starts[slot] + layout[slot].size:
            raise _damaged(
                store, record.id, f"it has a failure record for position {row.position}, which is none of its inputs"
            )
        by_batch.setdefault(slot, []).append(row)
    recorded = {row.position for row in rows}
    for batch in layout:
        offset = batch.states.find(FAILED)
        while offset >= 0:
            if batch.first_position + offset not in recorded:
                problem = f"input #{batch.first_position + offset} failed but has no failure record"
                raise _damaged(store, record.id, problem)
            offset = batch.states.find(FAILED, offset + 1)
    if not rows:
        return []
    needed = [layout[slot] for slot in sorted(by_batch)]
    inputs: dict[int, list[Any]] = {}
    for batch, payload in zip(needed, _payloads(store, record, needed), strict=False):
        inputs[batch.batch_no] = decode_inputs(codec, store, record.input_source, batch.batch_no, payload, batch.size)
    failures = []
    for row in rows:
        batch = layout[bisect.bisect_right(starts, row.position) - 1]
        failures.append(
            Failure(
                input=inputs[batch.batch_no][row.position - batch.first_position],
                position=row.position,
                exception_type=row.exc_type,
                message=row.message,
                traceback=row.traceback,
                exception=rebuild_exception(codec, row),
                attempts=row.attempts,
                worker=row.worker,
                time=_utc(row.failed_at),  # type: ignore[arg-type]
            )
        )
    return failures


def read_exceptions(store: Store, record: ExecutionRecord) -> list[BaseException]:
    """The exception of each failed input, by position (see ``Pylo.get_exceptions``)."""
    codec = codec_of(store, record)
    found = []
    for row in _failure_rows(store, record):
        exc = rebuild_exception(codec, row)
        if exc is not None:
            found.append(exc)
    return found


# -- records --------------------------------------------------------------------


def _source_problem(store: Store, record: ExecutionRecord, present: Callable[[str], bool]) -> StoreError | None:
    """A resume whose input source is gone (its directory deleted, say) cannot be read or resumed.

    It is reported damaged wherever it is read or listed, rather than listed
    as if it were whole.
    """
    if record.input_source == record.id or present(record.input_source):
        return None
    return _damaged(
        store,
        record.id,
        f"its inputs are kept by execution {record.input_source!r}, which is missing from the store "
        "(deleted?); restore it to read or resume this execution",
    )


def _exists(store: Store, execution_id: str) -> bool:
    try:
        store.get_execution(execution_id)
    except ExecutionNotFound:
        return False
    except StoreError:
        return True  # there, but damaged: reading it says so
    return True


def read_record(store: Store, execution_id: str) -> ExecutionRecord:
    """The execution's record, checked: a resume whose inputs are gone is damaged.

    Raises:
        ExecutionNotFound: No such execution.
        StoreError: It, or the execution holding its inputs, is damaged or missing.
    """
    record = store.get_execution(execution_id)
    problem = _source_problem(store, record, lambda source: _exists(store, source))
    if problem is not None:
        raise problem
    return record


def list_records(store: Store, labels: Mapping[str, str] | None = None) -> list[ExecutionRecord]:
    """Every execution (with all of ``labels``), oldest first, checked as :func:`read_record` checks one.

    Raises:
        DamagedExecutions: Some executions cannot be read; the error names
            them and carries the intact ones.
        StoreError: The store cannot be read.
    """
    damaged: dict[str, StoreError] = {}
    try:
        # Only asked with labels: a store written for an earlier pylo may not take them.
        records = store.list_executions(labels=labels) if labels else store.list_executions()
    except DamagedExecutions as exc:
        records, damaged = exc.executions, dict(exc.damaged)
    listed = {record.id for record in records} | set(damaged)

    def present(execution_id: str) -> bool:
        # A filtered list may leave out an execution that is there.
        return execution_id in listed or (bool(labels) and _exists(store, execution_id))

    intact = []
    for record in records:
        problem = _source_problem(store, record, present)
        if problem is None:
            intact.append(record)
        else:
            damaged[record.id] = problem
    if damaged:
        raise DamagedExecutions(store.location, intact, damaged)
    return intact


# -- results and lineage ------------------------------------------------------


def ancestors(store: Store, record: ExecutionRecord) -> list[ExecutionRecord]:
    """``record``, its parent, its parent's parent... up to the first execution.

    Raises:
        StoreError: A parent is missing from the store (deleted by hand), or
            the parents form a loop.
    """
    chain = [record]
    seen = {record.id}
    while chain[-1].parent_id is not None:
        parent_id = chain[-1].parent_id
        if parent_id in seen:
            raise _damaged(store, record.id, f"its parents form a loop through execution {parent_id!r}")
        try:
            chain.append(store.get_execution(parent_id))
        except ExecutionNotFound:
            raise StoreError(
                f"execution {chain[-1].id!r} in the store at {store.location} resumed execution {parent_id!r}, "
                f"which is missing from the store: the lineage of {record.id!r} is broken"
            ) from None
        seen.add(parent_id)
    return chain


def lineage(store: Store, record: ExecutionRecord) -> list[ExecutionRecord]:
    """The chain from the first execution to the latest resume, through ``record``.

    Its ancestors first (oldest first), then ``record``, then the newest
    resume of ``record``, the newest resume of that one, and so on.

    Raises:
        StoreError: A parent is missing from the store.
    """
    chain = list(reversed(ancestors(store, record)))
    try:
        everyone: Iterable[ExecutionRecord] = list_records(store)
    except DamagedExecutions as exc:  # the intact ones still tell the story
        everyone = exc.executions
    children: dict[str, ExecutionRecord] = {}
    for other in everyone:  # oldest first: the newest resume of each wins
        if other.parent_id is not None:
            children[other.parent_id] = other
    seen = {item.id for item in chain}
    while (child := children.get(chain[-1].id)) is not None and child.id not in seen:
        chain.append(child)
        seen.add(child.id)
    return chain


def read_results(store: Store, record: ExecutionRecord) -> list[tuple[Any, Any]]:
    """``(input, result)`` of each finished input with a result, in input order.

    A resume includes the results its ancestors recorded for the inputs it
    inherited as finished (the newest execution's result wins).

    Raises:
        StoreError: A parent is missing, or the store is damaged.
    """
    codec = codec_of(store, record)
    by_position: dict[int, tuple[str, bytes]] = {}
    for ancestor in reversed(ancestors(store, record)):  # newest wins
        by_position.update((position, (ancestor.id, data)) for position, data in store.read_results(ancestor.id))
    batches = [
        batch
        for batch in read_layout(store, record)
        if any(batch.first_position + i in by_position for i in range(batch.size))
    ]
    pairs: list[tuple[Any, Any]] = []
    for position, _, item in _inputs_of(store, record, codec, batches, {FINISHED}):
        found = by_position.get(position)
        if found is not None:
            pairs.append((item, _decode_value(codec, store, found[0], position, found[1])))
    return pairs
