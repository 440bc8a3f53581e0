"""Labels on executions, lineage from the first execution to the latest resume."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pylo import Pylo, StoreError
from pylo.errors import DamagedExecutions


def fail_odd(item: int) -> int:
    if item % 2:
        raise ValueError(item)
    return item


def identity(item: int) -> int:
    return item


def test_labels_are_kept_and_found(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    nightly = pylo.start_from_scratch(range(10), fail_odd, labels={"job": "nightly", "day": "2026-11-28"})
    other = pylo.start_from_scratch(range(3), identity, labels={"job": "adhoc"})
    plain = pylo.start_from_scratch(range(3), identity)
    assert pylo.get_execution(nightly).labels == {"job": "nightly", "day": "2026-11-28"}
    assert pylo.get_execution(plain).labels == {}
    assert [r.id for r in pylo.list_executions(labels={"job": "nightly"})] == [nightly]
    assert [r.id for r in pylo.list_executions(labels={"job": "adhoc"})] == [other]
    assert [r.id for r in pylo.list_executions()] == [nightly, other, plain]
    assert pylo.list_executions(labels={}) == pylo.list_executions()


def test_a_resume_inherits_its_parents_labels_and_may_change_them(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    first = pylo.start_from_scratch(range(10), fail_odd, labels={"job": "nightly", "try": "1"})
    second = pylo.start_from_past_execution(first, identity, labels={"try": "2"})
    assert pylo.get_execution(second).labels == {"job": "nightly", "try": "2"}
    assert [r.id for r in pylo.list_executions(labels={"job": "nightly"})] == [first, second]
    assert [r.id for r in pylo.list_executions(labels={"try": "2"})] == [second]


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        (["job"], TypeError, "labels must be a dict of str to str, got list"),
        ({3: "x"}, TypeError, "labels keys must be str, got int 3"),
        ({"n": 3}, TypeError, "labels['n'] must be a str, got int 3; labels are text"),
        ({"": "x"}, ValueError, "labels keys must be 1 to 64 characters"),
        ({"k" * 65: "x"}, ValueError, "labels keys must be 1 to 64 characters"),
        ({"k": "v" * 256}, ValueError, "labels['k'] must be at most 255 characters, got 256"),
        ({"k": "a\nb"}, ValueError, "labels must be printable text without control characters"),
    ],
)
def test_bad_labels_are_refused_before_anything_is_recorded(
    make_pylo: Callable[..., Pylo], labels: Any, error: type[Exception], message: str
) -> None:
    pylo = make_pylo()
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        pylo.start_from_scratch(range(3), identity, labels=labels)
    with pytest.raises(error):
        pylo.list_executions(labels=labels)
    assert pylo.list_executions() == []


def test_lineage_runs_from_the_first_execution_to_the_latest_resume(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    first = pylo.start_from_scratch(range(10), fail_odd)
    second = pylo.start_from_past_execution(first, fail_odd)
    early = pylo.start_from_past_execution(second, fail_odd)  # an older branch
    latest = pylo.start_from_past_execution(second, identity)
    other = pylo.start_from_scratch(range(2), identity)
    chain = [first, second, latest]
    for member in chain:
        assert [r.id for r in pylo.lineage(member)] == chain
    assert [r.id for r in pylo.lineage(early)] == [first, second, early]
    assert [r.id for r in pylo.lineage(other)] == [other]
    assert [r.parent_id for r in pylo.lineage(latest)] == [None, first, second]


def test_lineage_names_a_missing_parent(tmp_path: Path) -> None:
    with Pylo.local_multithread(tmp_path, 1, progress=False) as pylo:
        pylo.start_from_scratch(range(4), fail_odd, execution_id="one")
        pylo.start_from_past_execution("one", fail_odd, execution_id="two")
        pylo.start_from_past_execution("two", identity, execution_id="three")
    with sqlite3.connect(tmp_path / "pylo.sqlite") as connection:
        connection.execute("DELETE FROM pylo_batches WHERE execution_id = 'two'")
        connection.execute("DELETE FROM pylo_executions WHERE id = 'two'")
    with Pylo.local_multithread(tmp_path, 1, progress=False) as pylo:
        with pytest.raises(StoreError, match="resumed execution 'two', which is missing from the store"):
            pylo.lineage("three")
        assert [r.id for r in pylo.lineage("one")] == ["one"]
        assert [r.id for r in pylo.list_executions(labels=None)] == ["one", "three"]


def test_a_labels_query_reads_only_the_labelled_executions(tmp_path: Path) -> None:
    with Pylo.local_multithread(tmp_path, 1, store="files", progress=False) as pylo:
        pylo.start_from_scratch(range(3), identity, execution_id="wanted", labels={"job": "x"})
        pylo.start_from_scratch(range(3), identity, execution_id="other")
    (tmp_path / "executions" / "other" / "execution.json").write_text("garbage")
    with Pylo.local_multithread(tmp_path, 1, store="files", progress=False) as pylo:
        assert [r.id for r in pylo.list_executions(labels={"job": "x"})] == ["wanted"]
        with pytest.raises(DamagedExecutions):
            pylo.list_executions()
