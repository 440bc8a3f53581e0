"""The delete contract: an execution goes whole, or not at all, on every store kind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from store_kit import StoreFactory, failure, make_batches, make_record, payload_of

from pylo.errors import ExecutionInUse, ExecutionNotFound
from pylo.stores.base import FAILED, FINISHED, Claim, Flush, Store
from pylo.stores.files import FileStore

LABELS = {"team": "data"}


def fill(store: Store, execution_id: str, **changes: object) -> None:
    """An execution with two batches, a failure, a result, labels and a claim."""
    store.create_execution(make_record(execution_id, labels=LABELS, **changes))
    store.add_batches(execution_id, make_batches(execution_id, [2, 1]))
    store.record_flush(
        execution_id,
        Flush(
            states={0: bytes([FAILED, FINISHED])},
            failures=[failure(0)],
            results=[(1, b"result")],
            total=3,
            finished=1,
            failed=1,
        ),
    )


READS: list[Callable[[Store], object]] = [
    lambda s: s.get_execution("gone"),
    lambda s: list(s.read_batches("gone", payloads=True)),
    lambda s: list(s.read_payloads("gone", [0])),
    lambda s: s.read_failures("gone"),
    lambda s: list(s.read_results("gone")),
    lambda s: s.delete_execution("gone"),
]


def test_deleting_removes_the_execution_and_all_it_kept_and_nothing_else(store_factory: StoreFactory) -> None:
    store = store_factory()
    fill(store, "gone", created_at=1.0)
    fill(store, "kept", created_at=2.0)
    assert store.claim_execution("gone", Claim("gone", "resume-1", 1, "here", 1.0)) is None
    store.delete_execution("gone")
    for reopened in (store, store_factory()):
        for read in READS:
            with pytest.raises(ExecutionNotFound):
                read(reopened)
        assert [record.id for record in reopened.list_executions()] == ["kept"]
        assert [record.id for record in reopened.list_executions(labels=LABELS)] == ["kept"]
        assert [batch.payload for batch in reopened.read_batches("kept", payloads=True)] == [
            payload_of("kept", 0),
            payload_of("kept", 1),
        ]
        assert [row.position for row in reopened.read_failures("kept")] == [0]
        assert list(reopened.read_results("kept")) == [(1, b"result")]


def test_a_deleted_id_is_free_for_a_new_execution_that_starts_empty(store: Store) -> None:
    fill(store, "gone")
    store.claim_execution("gone", Claim("gone", "resume-1", 1, "here", 1.0))
    store.delete_execution("gone")
    store.create_execution(make_record("gone", task_name="tests.tasks:other"))
    store.add_batches("gone", make_batches("gone", [4]))
    assert store.get_execution("gone").task_name == "tests.tasks:other"
    assert store.get_execution("gone").labels == {}
    assert [(batch.size, batch.states) for batch in store.read_batches("gone")] == [(4, bytes(4))]
    assert store.read_failures("gone") == []
    assert list(store.read_results("gone")) == []
    assert store.list_executions(labels=LABELS) == []
    # Its claim went with it.
    assert store.claim_execution("gone", Claim("gone", "resume-2", 2, "here", 2.0)) is None


def test_deleting_an_unknown_execution_raises_execution_not_found(store: Store) -> None:
    with pytest.raises(ExecutionNotFound) as caught:
        store.delete_execution("never")
    assert caught.value.execution_id == "never"


def test_an_execution_that_was_resumed_is_kept_until_its_resumes_are_deleted(store: Store) -> None:
    fill(store, "root", created_at=1.0)
    # A resume reads its inputs from the first execution of its lineage.
    store.create_execution(make_record("child", parent_id="root", input_source="root", created_at=2.0))
    store.create_execution(make_record("grandchild", parent_id="child", input_source="root", created_at=3.0))
    with pytest.raises(ExecutionInUse) as caught:
        store.delete_execution("root")
    assert caught.value.execution_id == "root"
    assert caught.value.dependents == ["child", "grandchild"]
    assert "'child'" in str(caught.value) and "'grandchild'" in str(caught.value)
    with pytest.raises(ExecutionInUse) as caught:
        store.delete_execution("child")
    assert caught.value.dependents == ["grandchild"]
    # Refused means unchanged.
    assert [record.id for record in store.list_executions()] == ["root", "child", "grandchild"]
    assert len(list(store.read_batches("root", payloads=True))) == 2
    for execution_id in ("grandchild", "child", "root"):
        store.delete_execution(execution_id)
    assert store.list_executions() == []


@pytest.mark.parametrize("execution_id", ["a.b", "x" * 128, "with-dash_and.dots", "0"])
def test_any_valid_id_can_be_deleted(store: Store, execution_id: str) -> None:
    store.create_execution(make_record(execution_id))
    store.delete_execution(execution_id)
    assert store.list_executions() == []


# -- the file store: rename, then remove --------------------------------------------


def test_file_store_leaves_no_trace_of_a_deleted_execution(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    fill(store, "gone")
    store.delete_execution("gone")
    assert os.listdir(tmp_path / "executions") == []
    assert all(not files for _, _, files in os.walk(tmp_path / "labels"))


def test_file_store_a_crash_after_the_rename_leaves_no_execution_and_the_next_delete_clears_it(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    fill(store, "half")
    fill(store, "other")
    # What a crash between the rename and the removal leaves behind.
    os.rename(tmp_path / "executions" / "half", tmp_path / "executions" / ".deleted-half-0000")
    reader = FileStore(tmp_path, create=False)
    assert [record.id for record in reader.list_executions()] == ["other"]
    with pytest.raises(ExecutionNotFound):
        reader.get_execution("half")
    store.delete_execution("other")
    assert os.listdir(tmp_path / "executions") == []
