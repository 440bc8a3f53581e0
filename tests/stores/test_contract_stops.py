"""The stop reason contract: why an execution ended early, kept with its final status, on every store kind."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from store_kit import StoreFactory, make_batches, make_record

from pylo.stores.base import FINISHED, ExecutionStatus, Flush, Store
from pylo.stores.files import FileStore
from pylo.stores.sql import SQLStore


def ending(
    status: ExecutionStatus | None, reason: str | None = None, detail: str | None = None, finished: int = 2
) -> Flush:
    """A flush of execution ``e`` (four inputs in one batch) with ``finished`` of them done."""
    return Flush(
        states={0: bytes([FINISHED]) * finished + bytes(4 - finished)},
        failures=[],
        results=[],
        total=4,
        finished=finished,
        failed=0,
        status=status,
        ended_at=None if status is None else 1_800_000_000.0,
        stop_reason=reason,
        stop_detail=detail,
    )


def started(store: Store, *ids: str) -> None:
    for execution_id in ids:
        store.create_execution(make_record(execution_id))
        store.add_batches(execution_id, make_batches(execution_id, [4]))


def stop_of(store: Store, execution_id: str) -> tuple[str | None, str | None]:
    record = store.get_execution(execution_id)
    return record.stop_reason, record.stop_detail


def kept_tables(store: Store) -> set[str]:
    """The tables of a SQL store (nothing for other kinds)."""
    if not isinstance(store, SQLStore):
        return set()
    with store._engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_the_stop_reason_comes_back_with_the_status_it_explains(store_factory: StoreFactory) -> None:
    store = store_factory()
    started(store, "e", "other")
    assert stop_of(store, "e") == (None, None)
    store.record_flush("e", ending(None, finished=1))
    store.record_flush("e", ending(ExecutionStatus.STOPPED, "max_failures", "3 failures reached max_failures=3"))
    store.record_flush("other", ending(ExecutionStatus.COMPLETED, finished=4))
    expected = ("max_failures", "3 failures reached max_failures=3")
    assert stop_of(store, "e") == expected
    assert stop_of(store, "other") == (None, None)
    reopened = store_factory()
    assert stop_of(reopened, "e") == expected
    listed = {record.id: (record.stop_reason, record.stop_detail) for record in reopened.list_executions()}
    assert listed == {"e": expected, "other": (None, None)}
    # A flush that sets no status (none comes after the end, but a store must not care) keeps the reason.
    store.record_flush("e", ending(None))
    assert stop_of(store_factory(), "e") == expected


def test_a_new_final_status_replaces_the_reason_with_its_own(store_factory: StoreFactory) -> None:
    store = store_factory()
    started(store, "e")
    store.record_flush("e", ending(ExecutionStatus.STOPPED, "stop_requested", "a stop was requested"))
    # An interrupt cut the end short, and the run ended again with what interrupted it.
    store.record_flush("e", ending(ExecutionStatus.INTERRUPTED, "interrupted", "SIGTERM"))
    assert stop_of(store_factory(), "e") == ("interrupted", "SIGTERM")
    store.record_flush("e", ending(ExecutionStatus.ABORTED, "aborted"))  # a reason needs no detail
    assert stop_of(store_factory(), "e") == ("aborted", None)
    store.record_flush("e", ending(ExecutionStatus.COMPLETED, finished=4))
    assert stop_of(store_factory(), "e") == (None, None)


def test_a_detail_keeps_any_text(store_factory: StoreFactory) -> None:
    store = store_factory()
    started(store, "e")
    odd = "ValueError: caf\u00e9 \u2603 NUL\x00 lone \udc80 surrogate"
    store.record_flush("e", ending(ExecutionStatus.ABORTED, "aborted", odd))
    reason, detail = stop_of(store_factory(), "e")
    assert reason == "aborted" and detail is not None
    # Kept as it is, or with what the database cannot hold escaped (lone surrogates; NUL on PostgreSQL).
    escaped = odd.replace("\udc80", "\\udc80")
    assert detail in (odd, escaped, escaped.replace("\x00", "\\x00"))


@pytest.mark.parametrize(
    ("flush", "message"),
    [
        (ending(None, "max_failures"), "a stop reason ('max_failures') is recorded with the status it explains"),
        (ending(ExecutionStatus.STOPPED, None, "why"), "a stop detail needs a stop reason, got only 'why'"),
    ],
    ids=["reason-without-status", "detail-without-reason"],
)
def test_a_reason_without_its_status_is_refused(store: Store, flush: Flush, message: str) -> None:
    started(store, "e")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        store.record_flush("e", flush)
    assert store.get_execution("e").finished == 0  # nothing was written


def test_a_store_written_before_stop_reasons_reads_none_and_takes_one(store_factory: StoreFactory) -> None:
    # Until an execution ends early, a store is laid out as one written before reasons were kept.
    store = store_factory()
    started(store, "old", "new")
    store.record_flush("old", ending(ExecutionStatus.COMPLETED, finished=4))
    assert "pylo_stops" not in kept_tables(store)
    if isinstance(store, FileStore):
        record_file = next(store.root.glob("executions/old/execution.json"))
        assert not {"stop_reason", "stop_detail"} & set(json.loads(record_file.read_bytes()))
    assert [(r.stop_reason, r.stop_detail) for r in store.list_executions()] == [(None, None)] * 2

    store.record_flush("new", ending(ExecutionStatus.STOPPED, "max_worker_failures", "every worker reached it"))
    if isinstance(store, SQLStore):
        assert "pylo_stops" in kept_tables(store)  # made by the first flush that needed it
    reopened = store_factory()
    assert stop_of(reopened, "new") == ("max_worker_failures", "every worker reached it")
    assert stop_of(reopened, "old") == (None, None)


def test_deleting_an_execution_deletes_its_reason(store_factory: StoreFactory) -> None:
    store = store_factory()
    started(store, "e")
    store.record_flush("e", ending(ExecutionStatus.STOPPED, "max_failures", "1 failure reached max_failures=1"))
    store.delete_execution("e")
    started(store, "e")  # the id is free again, with nothing of the first one
    assert stop_of(store_factory(), "e") == (None, None)
    store.record_flush("e", ending(ExecutionStatus.INTERRUPTED, "interrupted", "SIGTERM"))
    assert stop_of(store_factory(), "e") == ("interrupted", "SIGTERM")
