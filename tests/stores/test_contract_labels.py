"""The labels contract: kept with the execution, found through the store's index, on every store kind."""

from __future__ import annotations

import pytest
from store_kit import StoreFactory, make_record

from pylo.stores.base import Store

ODD = {"team/area": "data=eng, ünïcode ☃", "empty": "", "long": "v" * 255}


def test_labels_are_kept_with_the_execution(store: Store) -> None:
    record = make_record("labelled", labels=ODD)
    store.create_execution(record)
    store.create_execution(make_record("bare"))
    assert store.get_execution("labelled") == record
    assert store.get_execution("bare").labels == {}
    assert [r.labels for r in store.list_executions()] == [ODD, {}]


def test_list_executions_by_labels_keeps_those_with_all_of_them(store: Store) -> None:
    store.create_execution(make_record("a", labels={"job": "nightly", "env": "prod"}, created_at=1.0))
    store.create_execution(make_record("b", labels={"job": "nightly", "env": "test"}, created_at=2.0))
    store.create_execution(make_record("c", labels={"job": "weekly", "env": "prod"}, created_at=3.0))
    store.create_execution(make_record("d", created_at=4.0))
    assert [r.id for r in store.list_executions(labels={"job": "nightly"})] == ["a", "b"]
    assert [r.id for r in store.list_executions(labels={"env": "prod"})] == ["a", "c"]
    assert [r.id for r in store.list_executions(labels={"job": "nightly", "env": "prod"})] == ["a"]
    assert store.list_executions(labels={"job": "nightly", "env": "dev"}) == []
    assert store.list_executions(labels={"job": "Nightly"}) == []
    assert [r.labels for r in store.list_executions(labels={"env": "test"})] == [{"job": "nightly", "env": "test"}]
    assert [r.id for r in store.list_executions()] == ["a", "b", "c", "d"]


def test_a_store_without_labelled_executions_finds_none(store: Store) -> None:
    store.create_execution(make_record("plain"))
    assert store.list_executions(labels={"job": "x"}) == []


@pytest.mark.parametrize("value", ODD.values(), ids=["odd", "empty", "long"])
def test_any_label_value_is_found_by_itself(store_factory: StoreFactory, value: str) -> None:
    store = store_factory()
    store.create_execution(make_record("x", labels={"k": value}))
    store.create_execution(make_record("y", labels={"k": value[:-1] + "!" if value else "!"}))
    assert [r.id for r in store_factory().list_executions(labels={"k": value})] == ["x"]
