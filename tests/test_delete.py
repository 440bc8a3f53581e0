"""Deleting executions with ``Pylo.delete_execution``: what goes, and what is kept while in use."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylo import ExecutionExists, ExecutionInUse, ExecutionNotFound, ExecutionStatus, Pylo
from pylo.errors import ExecutionNotResumable, StoreError
from pylo.pipeline import task
from pylo.stores.base import ExecutionRecord, Store
from pylo.stores.sql import SQLStore

# Most rules are the facade's, the same on every store: these tests run on
# SQLite only (SQLITE_ONLY); the others on every store.
SQLITE_ONLY = pytest.mark.parametrize("store_name", ["sqlite"])

WAIT = 30.0


def fail_odd(item: int) -> int:
    if item % 2:
        raise ValueError(f"odd {item}")
    return item


@task
def square(item: int) -> int:
    return item * item


class Gate:
    """A task that blocks until released, after telling the test it started."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, item: int) -> int:
        self.started.set()
        assert self.release.wait(WAIT)
        return item


def in_thread(call: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


@SQLITE_ONLY
def test_a_deleted_execution_is_gone_and_others_stay(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo(store_results=True)
    gone = pylo.start_from_scratch(range(6), fail_odd, labels={"team": "a"})
    kept = pylo.start_from_scratch(range(4), fail_odd)
    pylo.delete_execution(gone)
    with pytest.raises(ExecutionNotFound):
        pylo.get_execution(gone)
    assert [record.id for record in pylo.list_executions()] == [kept]
    assert pylo.list_executions(labels={"team": "a"}) == []
    assert pylo.get_state(kept) == ([0, 2], [1, 3])


@SQLITE_ONLY
def test_unknown_and_invalid_ids_are_refused(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    with pytest.raises(ExecutionNotFound, match="'nope'"):
        pylo.delete_execution("nope")
    with pytest.raises(ValueError, match="execution_id"):
        pylo.delete_execution("../x")


def test_a_resumed_execution_is_kept_while_its_resumes_read_it(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo(store_results=True)
    first = pylo.start_from_scratch(range(6), fail_odd)
    second = pylo.start_from_past_execution(first, fail_odd)
    with pytest.raises(ExecutionInUse) as caught:
        pylo.delete_execution(first)
    assert caught.value.dependents == [second]
    assert repr(second) in str(caught.value) and "delete those first" in str(caught.value)
    # The resume still reads its inputs and inherited results.
    assert pylo.get_state(second) == ([0, 2, 4], [1, 3, 5])
    assert pylo.get_results(second) == [(0, 0), (2, 2), (4, 4)]
    pylo.delete_execution(second)
    pylo.delete_execution(first)
    assert pylo.list_executions() == []


@SQLITE_ONLY
def test_a_running_execution_is_refused(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo(number_of_workers=1)
    gate = Gate()
    thread = in_thread(lambda: pylo.start_from_scratch([1], gate, execution_id="live"))
    assert gate.started.wait(WAIT)
    try:
        with pytest.raises(ExecutionInUse, match=r"'live' cannot be deleted: it is running \(process \d+\)"):
            pylo.delete_execution("live")
    finally:
        gate.release.set()
        thread.join(WAIT)
    pylo.delete_execution("live")


def test_an_execution_being_resumed_is_refused(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo(number_of_workers=1)
    past = pylo.start_from_scratch([1, 2], fail_odd)
    gate = Gate()
    thread = in_thread(lambda: pylo.start_from_past_execution(past, gate, execution_id="resume"))
    assert gate.started.wait(WAIT)
    try:
        with pytest.raises(ExecutionInUse, match="being resumed by execution resume") as caught:
            pylo.delete_execution(past)
        assert caught.value.dependents == ["resume"]
    finally:
        gate.release.set()
        thread.join(WAIT)
    assert pylo.get_execution("resume").status is ExecutionStatus.COMPLETED


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(WAIT)
    return process.pid


def _stuck_record(execution_id: str, *, pid: int, host: str) -> ExecutionRecord:
    now = time.time()
    return ExecutionRecord(
        execution_id, None, execution_id, ExecutionStatus.RUNNING, now, now, None, "m:f", "pickle", pid=pid, host=host
    )


@SQLITE_ONLY
def test_a_crashed_execution_can_be_deleted_but_one_running_elsewhere_cannot(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    pylo.store.create_execution(_stuck_record("crashed", pid=_dead_pid(), host=socket.gethostname()))
    pylo.store.create_execution(_stuck_record("elsewhere", pid=1, host="another-host.invalid"))
    assert pylo.get_execution("crashed").status is ExecutionStatus.CRASHED
    pylo.delete_execution("crashed")
    with pytest.raises(ExecutionInUse, match=r"marked running on host another-host\.invalid"):
        pylo.delete_execution("elsewhere")


def test_a_batch_node_execution_is_kept_with_its_pipeline_run(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    run_id = pylo.run_pipeline(square.map([1, 2, 3]))
    (node,) = pylo.get_pipeline(run_id).nodes
    assert node.execution_id is not None
    with pytest.raises(ExecutionInUse, match=f"batch node .* of pipeline run {run_id}"):
        pylo.delete_execution(node.execution_id)
    assert pylo.get_pipeline_result(run_id) == [1, 4, 9]


# -- Ctrl-C while the inputs were read: the id can be used again --------------------


def interrupted_inputs() -> Iterator[int]:
    yield from range(3)
    raise KeyboardInterrupt


def test_an_execution_stopped_while_recording_inputs_is_replaced_by_a_run_with_its_id(
    make_pylo: Callable[..., Pylo],
) -> None:
    pylo = make_pylo()
    with pytest.raises(KeyboardInterrupt):
        pylo.start_from_scratch(interrupted_inputs(), fail_odd, execution_id="again")
    record = pylo.get_execution("again")
    assert (record.status, record.inputs_complete, record.finished) == (ExecutionStatus.INTERRUPTED, False, 0)
    with pytest.raises(ExecutionNotResumable, match=r"start_from_scratch\(inputs, function, execution_id='again'\)"):
        pylo.start_from_past_execution("again", fail_odd)
    assert pylo.start_from_scratch(range(4), fail_odd, execution_id="again") == "again"
    record = pylo.get_execution("again")
    assert (record.status, record.inputs_complete, record.total, record.finished) == (
        ExecutionStatus.COMPLETED,
        True,
        4,
        2,
    )


@SQLITE_ONLY
def test_an_execution_that_recorded_its_inputs_keeps_its_id(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    pylo.start_from_scratch(range(3), fail_odd, execution_id="taken")
    with pytest.raises(ExecutionExists, match="'taken'"):
        pylo.start_from_scratch(range(3), fail_odd, execution_id="taken")
    assert pylo.get_execution("taken").total == 3


class NoDelete(SQLStore):
    """A store written before stores could delete: it keeps the protocol's default."""

    def delete_execution(self, execution_id: str) -> None:
        Store.delete_execution(self, execution_id)


def test_a_store_that_cannot_delete_says_so(tmp_path: Path) -> None:
    store = NoDelete.sqlite(tmp_path / "old.sqlite")
    with Pylo.local_multithread(None, 1, store=store) as pylo:
        done = pylo.start_from_scratch([2], fail_odd)
        with pytest.raises(StoreError, match=r"\(NoDelete\) cannot delete executions"):
            pylo.delete_execution(done)
        assert pylo.get_execution(done).finished == 1


# -- property: deleting in the planned order never breaks a lineage ------------------


@st.composite
def forests(draw: st.DrawFn) -> tuple[list[int | None], set[int]]:
    """Lineages of up to 7 executions (each resumes an earlier one, or none), and a subset to delete."""
    count = draw(st.integers(1, 7))
    parents = [draw(st.one_of(st.none(), st.integers(0, i - 1))) if i else None for i in range(count)]
    chosen = draw(st.sets(st.integers(0, count - 1)))
    return parents, chosen


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(forests())
def test_planned_deletions_never_leave_a_resume_without_its_lineage(
    tmp_path_factory: pytest.TempPathFactory, forest: tuple[list[int | None], set[int]]
) -> None:
    from pylo._cli_housekeeping import kept_reasons
    from pylo._deleting import deletion_order

    parents, chosen = forest
    roots: list[int] = []
    for index, parent in enumerate(parents):
        roots.append(index if parent is None else roots[parent])
    with Pylo.local_multithread(tmp_path_factory.mktemp("forest"), 1) as pylo:
        for index, parent in enumerate(parents):
            record = _stuck_record(f"e{index}", pid=1, host="elsewhere")
            pylo.store.create_execution(
                dataclasses.replace(
                    record,
                    parent_id=None if parent is None else f"e{parent}",
                    input_source=f"e{roots[index]}",
                    status=ExecutionStatus.COMPLETED,
                    created_at=float(index),
                )
            )
        records = pylo.list_executions()
        picked = [record for record in records if int(record.id[1:]) in chosen]
        kept = kept_reasons(pylo, picked, records, "")
        going = [record for record in picked if record.id not in kept]
        for record in deletion_order(going):
            pylo.delete_execution(record.id)  # never refused: resumes go first
        left = {record.id: record for record in pylo.list_executions()}
        assert set(left) == {record.id for record in records} - {record.id for record in going}
        for record in left.values():
            assert record.parent_id is None or record.parent_id in left
            assert record.input_source in left
        # Only what a remaining resume reads was kept.
        for execution_id in kept:
            assert any(
                execution_id in (other.parent_id, other.input_source)
                for other in left.values()
                if other.id != execution_id
            )
