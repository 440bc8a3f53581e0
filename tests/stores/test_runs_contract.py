"""The run store contract: what every ``Store.runs()`` must do, run on every store kind.

Tests taking ``store`` or ``store_factory`` run on each kind of
``store_kit.STORE_KINDS`` (SQLite, files, PostgreSQL). The sections at the
end check what is specific to one store: how it refuses damage, its files.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from run_kit import (
    KILL_NODES,
    chain,
    make_node,
    make_run,
    nodes_after,
    numbered_update,
    race_create_run,
    update_forever,
)
from store_kit import WAIT, StoreFactory, make_batches, make_record

from pylo.errors import PipelineExists, PipelineNotFound, StoreError
from pylo.stores.base import FINISHED, Flush, Store
from pylo.stores.files import FileStore
from pylo.stores.runs import NodeRow, RunStore, RunUpdate
from pylo.stores.sql import SQLStore

SPAWN = multiprocessing.get_context("spawn")


def full_node(key: str, seq: int, **changes: Any) -> NodeRow:
    """A node with every optional field set, text and bytes that stores mangle easily."""
    fields: dict[str, Any] = {
        "kind": "batch",
        "upstream": ("a", "b\u00e9"),
        "state": "failed",
        "attempts": 3,
        "started_at": 1_700_000_000.125,
        "ended_at": 1_700_000_001.5,
        "result": None,
        "exc_type": "builtins.ValueError",
        "message": "bad movie \u00e9\u2603 'quoted' \"twice\"",
        "traceback": "Traceback (most recent call last):\n  line 1\nValueError: bad\n",
        "exception": b"\x80\x04exc\x00\xff",
        "execution_id": "exec-7",
        "child_run_id": "child-1",
    }
    fields.update(changes)
    return make_node(key, seq, **fields)


def done(node: NodeRow, result: bytes = b"\x00ok\xff", **changes: Any) -> NodeRow:
    return dataclasses.replace(node, state="done", attempts=node.attempts + 1, result=result, **changes)


def without_blobs(nodes: list[NodeRow]) -> list[NodeRow]:
    return [dataclasses.replace(node, result=None, exception=None) for node in nodes]


def sql_tables(store: Store) -> set[str]:
    assert isinstance(store, SQLStore)
    with store._engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def join(process: Any) -> None:
    process.join(timeout=WAIT)
    if process.is_alive():
        process.kill()
        process.join(timeout=WAIT)
        raise AssertionError(f"a test process did not finish within {WAIT} s")


# -- creating and reading runs -------------------------------------------------


def test_a_created_run_reads_back_with_every_field(store: Store) -> None:
    runs = store.runs()
    run = make_run("run-1", parent_id="run-0", created_at=1_700_000_000.125, updated_at=1_700_000_000.125)
    nodes = [make_node("list_ids", 0), full_node("download", 1), done(make_node("report", 2), b"")]
    runs.create_run(run, nodes)
    assert runs.get_run("run-1") == run
    assert runs.read_nodes("run-1") == nodes


def test_optional_fields_round_trip_as_none(store: Store) -> None:
    runs = store.runs()
    run = make_run("bare", pid=None, host=None, options={}, name="")
    runs.create_run(run, [make_node("only", 0)])
    assert runs.get_run("bare") == run
    assert runs.read_nodes("bare") == [make_node("only", 0)]


def test_a_run_may_have_no_nodes(store: Store) -> None:
    store.runs().create_run(make_run("empty"), [])
    assert store.runs().read_nodes("empty") == []


def test_nodes_come_back_in_seq_order(store: Store) -> None:
    nodes = [make_node("c", 2), make_node("a", 0), make_node("b", 1)]
    store.runs().create_run(make_run("r"), nodes)
    assert [node.key for node in store.runs().read_nodes("r")] == ["a", "b", "c"]


def test_read_nodes_without_results_leaves_out_only_the_blobs(store: Store) -> None:
    nodes = [done(full_node("a", 0)), full_node("b", 1)]
    store.runs().create_run(make_run("r"), nodes)
    assert store.runs().read_nodes("r", results=False) == without_blobs(nodes)


def test_creating_an_existing_id_raises_pipeline_exists(store: Store) -> None:
    runs = store.runs()
    runs.create_run(make_run("twice"), chain(2))
    with pytest.raises(PipelineExists) as caught:
        runs.create_run(make_run("twice", name="other"), chain(5))
    assert caught.value.run_id == "twice"
    assert caught.value.location == store.location
    assert runs.get_run("twice").name == "report"
    assert len(runs.read_nodes("twice")) == 2


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ([make_node("a", 0), make_node("a", 1)], "two nodes with the key 'a'"),
        ([make_node("a", 0), make_node("b", 0)], "seq 0"),
        ([make_node("a", -1)], "seq -1"),
        ([make_node("", 0)], "1 to 512 characters"),
        ([make_node("k" * 513, 0)], "1 to 512 characters"),
        ([make_node("a", 0, state="finished")], "unknown state 'finished'"),
    ],
    ids=["same-key", "same-seq", "negative-seq", "empty-key", "long-key", "unknown-state"],
)
def test_create_run_refuses_nodes_it_could_not_keep(store: Store, nodes: list[NodeRow], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        store.runs().create_run(make_run("bad"), nodes)
    with pytest.raises(PipelineNotFound):
        store.runs().get_run("bad")
    assert store.runs().list_runs() == []


@pytest.mark.parametrize("status", ["crashed", "done"])
def test_create_run_refuses_a_status_that_is_never_written(store: Store, status: str) -> None:
    with pytest.raises(ValueError, match=repr(status)):
        store.runs().create_run(make_run("bad", status=status), [])


def test_options_must_be_json_serializable(store: Store) -> None:
    with pytest.raises(TypeError, match="JSON-serializable"):
        store.runs().create_run(make_run("bad", options={"when": object()}), [])
    store.runs().create_run(make_run("ok"), [make_node("a", 0)])
    with pytest.raises(TypeError, match="JSON-serializable"):
        store.runs().record_run("ok", RunUpdate(options={"when": object()}))
    assert store.runs().get_run("ok").options == make_run("ok").options


@pytest.mark.parametrize("run_id", ["with space", "slash/and\\back", "..", ".hidden", "\u00e9\u2603", "%41"])
def test_run_ids_are_kept_verbatim(store: Store, run_id: str) -> None:
    store.runs().create_run(make_run(run_id), [make_node("a", 0)])
    assert store.runs().get_run(run_id).id == run_id
    assert [run.id for run in store.runs().list_runs()] == [run_id]


def test_list_runs_is_oldest_first_then_by_id(store: Store) -> None:
    runs = store.runs()
    assert runs.list_runs() == []
    for run_id, created in (("c", 300.0), ("b", 100.0), ("z", 200.0), ("a", 300.0)):
        runs.create_run(make_run(run_id, created_at=created), [])
    assert [run.id for run in runs.list_runs()] == ["b", "z", "a", "c"]


CALLS: dict[str, Callable[[RunStore], object]] = {
    "get_run": lambda runs: runs.get_run("missing"),
    "read_nodes": lambda runs: runs.read_nodes("missing"),
    "read_nodes-no-results": lambda runs: runs.read_nodes("missing", results=False),
    "record_run": lambda runs: runs.record_run("missing", RunUpdate(status="failed")),
    "record_run-nodes": lambda runs: runs.record_run("missing", RunUpdate(nodes=[make_node("a", 0)])),
}


@pytest.mark.parametrize("call", list(CALLS.values()), ids=list(CALLS))
@pytest.mark.parametrize("has_runs", [False, True], ids=["no-runs-yet", "other-runs"])
def test_every_method_raises_not_found_for_an_unknown_id(
    store: Store, call: Callable[[RunStore], object], has_runs: bool
) -> None:
    if has_runs:
        store.runs().create_run(make_run("present"), [make_node("a", 0)])
    with pytest.raises(PipelineNotFound) as caught:
        call(store.runs())
    assert caught.value.run_id == "missing"
    assert caught.value.location == store.location


def test_runs_and_executions_have_separate_ids(store: Store) -> None:
    store.create_execution(make_record("same"))
    store.runs().create_run(make_run("same"), [make_node("a", 0)])
    assert store.get_execution("same").task_name == "tests.tasks:work"
    assert store.runs().get_run("same").name == "report"
    assert [record.id for record in store.list_executions()] == ["same"]


def test_runs_do_not_see_each_others_nodes(store: Store) -> None:
    runs = store.runs()
    runs.create_run(make_run("one"), [make_node("a", 0), make_node("b", 1)])
    runs.create_run(make_run("two"), [make_node("a", 0)])
    runs.record_run("two", RunUpdate(nodes=[done(make_node("a", 0))]))
    assert [node.state for node in runs.read_nodes("one")] == ["pending", "pending"]
    assert [node.state for node in runs.read_nodes("two")] == ["done"]


# -- updates -------------------------------------------------------------------


def test_updates_are_applied_in_order(store: Store) -> None:
    runs = store.runs()
    nodes = chain(3)
    runs.create_run(make_run("r"), nodes)
    running = dataclasses.replace(nodes[0], state="running", started_at=10.0, attempts=1)
    runs.record_run("r", RunUpdate(nodes=[running]))
    assert runs.read_nodes("r") == [running, nodes[1], nodes[2]]
    finished = done(running, ended_at=11.0)
    second = dataclasses.replace(nodes[1], state="running", started_at=11.0)
    runs.record_run("r", RunUpdate(nodes=[finished, second]))
    assert runs.read_nodes("r") == [finished, second, nodes[2]]


def test_the_last_change_of_a_node_in_one_update_wins(store: Store) -> None:
    runs = store.runs()
    nodes = chain(2)
    runs.create_run(make_run("r"), nodes)
    running = dataclasses.replace(nodes[1], state="running", attempts=1)
    failed = full_node("n1", 1, upstream=nodes[1].upstream, kind="call")
    runs.record_run("r", RunUpdate(nodes=[running, done(nodes[0]), failed]))
    assert runs.read_nodes("r") == [done(nodes[0]), failed]


def test_an_update_may_clear_a_result_and_a_failure(store: Store) -> None:
    runs = store.runs()
    node = full_node("a", 0, result=b"old")
    runs.create_run(make_run("r"), [node])
    cleared = make_node("a", 0, kind=node.kind, upstream=node.upstream)
    runs.record_run("r", RunUpdate(nodes=[cleared]))
    assert runs.read_nodes("r") == [cleared]


def test_an_update_never_changes_what_create_run_fixed(store: Store) -> None:
    runs = store.runs()
    node = make_node("a", 0, upstream=("x",), kind="batch")
    runs.create_run(make_run("r"), [node])
    moved = dataclasses.replace(
        node, seq=9, task_name="other:task", display_name="other", kind="call", upstream=(), state="done"
    )
    runs.record_run("r", RunUpdate(nodes=[moved]))
    assert runs.read_nodes("r") == [dataclasses.replace(node, state="done")]


def test_record_run_sets_status_end_time_options_and_updated_at(store: Store) -> None:
    runs = store.runs()
    run = make_run("r", updated_at=1.0)
    runs.create_run(run, [])
    before = time.time()
    runs.record_run("r", RunUpdate(options={"trace": "abc", "max_parallel": 2}))
    after_options = runs.get_run("r")
    assert after_options.options == {**run.options, "trace": "abc", "max_parallel": 2}
    assert after_options.status == "running"
    assert after_options.updated_at >= before
    runs.record_run("r", RunUpdate(status="paused"))
    assert runs.get_run("r").status == "paused"
    assert runs.get_run("r").ended_at is None
    runs.record_run("r", RunUpdate(status="failed", ended_at=1_700_000_009.25))
    final = runs.get_run("r")
    assert (final.status, final.ended_at) == ("failed", 1_700_000_009.25)
    assert final.options == after_options.options
    assert dataclasses.replace(final, status="running", ended_at=None, updated_at=1.0, options=run.options) == run


@pytest.mark.parametrize("status", ["running", "completed", "failed", "paused", "cancelled", "interrupted"])
def test_every_written_status_round_trips(store: Store, status: str) -> None:
    store.runs().create_run(make_run("r"), [])
    store.runs().record_run("r", RunUpdate(status=status))
    assert store.runs().get_run("r").status == status


@pytest.mark.parametrize(
    "state", ["pending", "running", "done", "failed", "failed_softly", "failed_dependency", "skipped", "cancelled"]
)
def test_every_node_state_round_trips(store: Store, state: str) -> None:
    store.runs().create_run(make_run("r"), [make_node("a", 0)])
    store.runs().record_run("r", RunUpdate(nodes=[make_node("a", 0, state=state)]))
    assert store.runs().read_nodes("r")[0].state == state


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        (RunUpdate(status="crashed"), "derived on read"),
        (RunUpdate(status="finished"), "unknown status"),
        (RunUpdate(nodes=[make_node("a", 0, state="exploded")]), "unknown state"),
        (RunUpdate(nodes=[make_node("a", 0, attempts=-1)]), "negative attempts"),
    ],
    ids=["crashed", "unknown-status", "unknown-state", "negative-attempts"],
)
def test_record_run_refuses_what_is_never_written(store: Store, update: RunUpdate, expected: str) -> None:
    store.runs().create_run(make_run("r"), [make_node("a", 0)])
    with pytest.raises(ValueError, match=expected):
        store.runs().record_run("r", update)
    assert store.runs().get_run("r").status == "running"
    assert store.runs().read_nodes("r") == [make_node("a", 0)]


def test_an_update_naming_an_unknown_node_is_refused_whole(store: Store) -> None:
    runs = store.runs()
    runs.create_run(make_run("r"), chain(2))
    update = RunUpdate(
        nodes=[done(chain(2)[0]), make_node("stranger", 7, state="done")], status="completed", options={"x": 1}
    )
    with pytest.raises(StoreError, match="'stranger'") as caught:
        runs.record_run("r", update)
    assert store.location in str(caught.value)
    assert runs.read_nodes("r") == chain(2)
    assert runs.get_run("r").status == "running"
    assert "x" not in runs.get_run("r").options
    # The run is still writable.
    runs.record_run("r", RunUpdate(nodes=[done(chain(2)[0])]))
    assert runs.read_nodes("r")[0].state == "done"


def test_failure_text_a_database_cannot_hold_is_kept_readable(store: Store) -> None:
    runs = store.runs()
    runs.create_run(make_run("r"), [make_node("a", 0)])
    text = "bad file \udcff name with a NUL \x00 inside"
    runs.record_run("r", RunUpdate(nodes=[make_node("a", 0, state="failed", message=text, traceback=text)]))
    (node,) = runs.read_nodes("r")
    assert node.message is not None and "bad file" in node.message and "inside" in node.message


def test_a_large_update_round_trips(store: Store) -> None:
    runs = store.runs()
    nodes = chain(2000)
    runs.create_run(make_run("wide"), nodes)
    changed = [done(node, result=node.key.encode() * 10) for node in nodes[::2]]
    runs.record_run("wide", RunUpdate(nodes=changed, status="completed", ended_at=5.0))
    read = runs.read_nodes("wide")
    assert read[::2] == changed
    assert read[1::2] == nodes[1::2]


def test_data_survives_closing_and_reopening(store_factory: StoreFactory) -> None:
    with store_factory() as store:
        runs = store.runs()
        runs.create_run(make_run("r", created_at=5.0), chain(3))
        runs.record_run("r", RunUpdate(nodes=[done(chain(3)[0])], options={"n": 1}))
    with store_factory() as store:
        runs = store.runs()
        assert runs.read_nodes("r") == [done(chain(3)[0]), *chain(3)[1:]]
        # Another store object (think: another process) goes on writing it.
        runs.record_run("r", RunUpdate(nodes=[done(chain(3)[1])], status="completed", ended_at=9.0))
    with store_factory() as store:
        assert [node.state for node in store.runs().read_nodes("r")] == ["done", "done", "pending"]
        assert store.runs().get_run("r").status == "completed"
        assert store.runs().get_run("r").options["n"] == 1


def test_readers_in_other_threads_see_only_whole_updates(store: Store) -> None:
    runs = store.runs()
    runs.create_run(make_run("live"), chain(KILL_NODES))
    stop = threading.Event()
    problems: list[str] = []

    def read() -> None:
        while not stop.is_set():
            number = runs.get_run("live").options.get("n", 0)
            nodes = runs.read_nodes("live")
            # The run row and the nodes are read apart, so the nodes may be
            # a later update's; each must be a whole update, though.
            if not any(nodes == nodes_after(seen) for seen in range(number, number + 40)):
                problems.append(f"after update {number}: {[(node.key, node.attempts) for node in nodes]}")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for number in range(1, 31):
            runs.record_run("live", numbered_update(number))
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=WAIT)
    assert not problems, problems[:3]
    assert runs.read_nodes("live") == nodes_after(30)


# -- processes -------------------------------------------------------------------


def test_processes_racing_to_create_one_run_have_exactly_one_winner(store_factory: StoreFactory) -> None:
    count = 3
    # The store exists (executions), but the run tables do not: the racers
    # also race to create them.
    store_factory().create_execution(make_record("old"))
    barrier = SPAWN.Barrier(count)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=race_create_run, args=(store_factory.spec, "contested", barrier, results))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=WAIT) for _ in range(count)]
    for process in processes:
        join(process)
    assert sorted(outcomes) == ["exists"] * (count - 1) + ["won"], outcomes
    assert [node.key for node in store_factory().runs().read_nodes("contested")] == ["n0", "n1", "n2"]


@pytest.mark.parametrize("round_", range(2))
def test_a_writer_killed_mid_flush_loses_at_most_its_last_update(store_factory: StoreFactory, round_: int) -> None:
    reached = SPAWN.Event()
    progress = SPAWN.RawValue("q", 0)
    writer = SPAWN.Process(target=update_forever, args=(store_factory.spec, "killed", reached, progress))
    writer.start()
    try:
        assert reached.wait(timeout=WAIT), "the writer did not get going"
        # The writer goes on recording: the kill lands wherever it is, often
        # in the middle of writing an update.
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        join(writer)
    assert writer.exitcode == -signal.SIGKILL
    returned = progress.value
    runs = store_factory().runs()
    durable = runs.get_run("killed").options["n"]
    assert returned <= durable <= returned + 1, (returned, durable)
    assert runs.read_nodes("killed") == nodes_after(durable)
    # The next writer (a resume) carries on from there.
    runs.record_run("killed", numbered_update(durable + 1))
    assert runs.read_nodes("killed") == nodes_after(durable + 1)
    assert store_factory().runs().get_run("killed").options["n"] == durable + 1


# -- a store written before pipelines ------------------------------------------------


def test_a_store_without_runs_reads_as_empty_and_is_not_written(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.create_execution(make_record("old"))
    store.add_batches("old", make_batches("old", [2]))
    store.record_flush(
        "old", Flush(states={0: bytes([FINISHED, 0])}, failures=[], results=[], total=2, finished=1, failed=0)
    )
    before = sql_tables(store) if store_factory.kind != "files" else None
    reopened = store_factory()
    runs = reopened.runs()
    assert runs.list_runs() == []
    for call in CALLS.values():
        with pytest.raises(PipelineNotFound):
            call(runs)
    if store_factory.kind == "files":
        assert not (Path(store_factory.spec.target) / "runs").exists()
    else:
        assert sql_tables(reopened) == before
        assert not {"pylo_runs", "pylo_nodes"} & sql_tables(reopened)
    assert reopened.get_execution("old").finished == 1
    # Once a run is created, the executions read as before, in a store
    # opened afresh too.
    runs.create_run(make_run("new"), [make_node("a", 0)])
    with store_factory() as fresh:
        assert fresh.get_execution("old").finished == 1
        assert [batch.states for batch in fresh.read_batches("old")] == [bytes([FINISHED, 0])]
        assert [run.id for run in fresh.runs().list_runs()] == ["new"]


def test_a_store_kind_without_runs_says_so() -> None:
    class Elsewhere:
        location = "/somewhere"

    # What Store.runs makes for a store class that does not override _open_runs.
    with pytest.raises(StoreError, match="cannot keep pipeline runs"):
        Store._open_runs(Elsewhere())  # type: ignore[arg-type]


# -- SQL: what is specific -------------------------------------------------------------


def test_sql_record_run_sends_its_nodes_in_one_executemany(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLStore.sqlite(tmp_path / "pylo.sqlite")
    runs = store.runs()
    runs.create_run(make_run("r"), chain(50))
    statements: list[tuple[str, bool]] = []
    driver_write = store._driver_write

    def recording(sent: Any, check: Any = None) -> None:
        statements.extend((sql.split()[0], many) for sql, _, many in sent)
        driver_write(sent, check)

    monkeypatch.setattr(store, "_driver_write", recording)
    try:
        runs.record_run("r", RunUpdate(nodes=[done(node) for node in chain(50)], status="completed"))
    finally:
        store.close()
    writes = [entry for entry in statements if entry[0] in ("UPDATE", "INSERT", "DELETE")]
    assert writes == [("UPDATE", False), ("UPDATE", True)], statements
    with SQLStore.sqlite(tmp_path / "pylo.sqlite") as reopened:
        assert {node.state for node in reopened.runs().read_nodes("r")} == {"done"}


def _damage_sqlite(path: Path, statement: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(statement)


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("UPDATE pylo_runs SET status = 'exploded'", "unknown status 'exploded'"),
        ("UPDATE pylo_runs SET options = 'not json'", "JSONDecodeError"),
        ("UPDATE pylo_nodes SET upstream = '{\"a\": 1}' WHERE key = 'n1'", "not a JSON list"),
        ("UPDATE pylo_nodes SET state = 'exploded' WHERE key = 'n1'", "unknown state 'exploded'"),
        ("DROP TABLE pylo_nodes", "pylo_nodes"),
    ],
    ids=["status", "options", "upstream", "state", "dropped-table"],
)
def test_sql_damage_is_a_store_error_naming_the_database(tmp_path: Path, statement: str, expected: str) -> None:
    path = tmp_path / "pylo.sqlite"
    with SQLStore.sqlite(path) as store:
        store.runs().create_run(make_run("r"), chain(2))
    _damage_sqlite(path, statement)
    with SQLStore.sqlite(path) as store:
        runs = store.runs()
        with pytest.raises(StoreError, match=expected) as caught:
            runs.get_run("r")
            runs.read_nodes("r")
        assert str(path) in str(caught.value)
        if "pylo_runs" in statement:
            with pytest.raises(StoreError, match=expected):
                runs.list_runs()


def test_sql_driver_errors_become_store_errors(tmp_path: Path) -> None:
    path = tmp_path / "pylo.sqlite"
    with SQLStore.sqlite(path) as store:
        store.runs().create_run(make_run("r"), chain(2))
    # A column that is gone is a driver error deep down.
    _damage_sqlite(path, "ALTER TABLE pylo_nodes DROP COLUMN traceback")
    with SQLStore.sqlite(path) as store:
        with pytest.raises(StoreError, match="cannot read the nodes of pipeline run 'r'") as caught:
            store.runs().read_nodes("r")
        assert str(path) in str(caught.value)
        with pytest.raises(StoreError, match="cannot record an update"):
            store.runs().record_run("r", RunUpdate(nodes=[done(chain(2)[0])]))


# -- files: what is specific -----------------------------------------------------------


def _log(root: Path, run_id: str = "r") -> Path:
    return root / "runs" / run_id / "run.log"


def _two_updates(root: Path) -> tuple[int, bytes]:
    """A run with two updates; returns the log size after the first and the whole log."""
    with FileStore(root) as store:
        runs = store.runs()
        runs.create_run(make_run("r"), chain(3))
        runs.record_run("r", RunUpdate(nodes=[done(chain(3)[0])]))
        first = _log(root).stat().st_size
        runs.record_run("r", RunUpdate(nodes=[done(chain(3)[1], b"x" * 100)], status="completed", ended_at=3.0))
    return first, _log(root).read_bytes()


def test_file_runs_are_private(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        store.runs().create_run(make_run("r"), chain(1))
    for path in (tmp_path / "runs", tmp_path / "runs" / "r"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE(_log(tmp_path).stat().st_mode) == 0o600
    assert [path.name for path in (tmp_path / "runs" / "r").iterdir()] == ["run.log"]


def test_file_store_ignores_a_torn_update_at_every_cut(tmp_path: Path) -> None:
    first, complete = _two_updates(tmp_path)
    after_first = [done(chain(3)[0]), *chain(3)[1:]]
    for cut in range(first, len(complete) + 1):
        _log(tmp_path).write_bytes(complete[:cut])
        with FileStore(tmp_path) as store:
            runs = store.runs()
            if cut == len(complete):
                assert runs.get_run("r").status == "completed"
                assert runs.read_nodes("r")[1].result == b"x" * 100
            else:
                assert runs.get_run("r").status == "running", cut
                assert runs.read_nodes("r") == after_first, cut
                assert [run.status for run in runs.list_runs()] == ["running"]


def test_file_store_writer_cuts_a_torn_tail_before_appending(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, complete = _two_updates(tmp_path)
    _log(tmp_path).write_bytes(complete[: (first + len(complete)) // 2])
    with caplog.at_level(logging.WARNING, logger="pylo.stores.files_runs"), FileStore(tmp_path) as store:
        store.runs().record_run("r", RunUpdate(nodes=[done(chain(3)[2])], status="failed"))
    assert "unfinished write" in caplog.text
    with FileStore(tmp_path) as store:
        assert [node.state for node in store.runs().read_nodes("r")] == ["done", "pending", "done"]
        assert store.runs().get_run("r").status == "failed"


def test_file_store_ignores_a_zero_filled_tail(tmp_path: Path) -> None:
    _, complete = _two_updates(tmp_path)
    _log(tmp_path).write_bytes(complete + bytes(4096))
    with FileStore(tmp_path) as store:
        assert store.runs().get_run("r").status == "completed"


@pytest.mark.parametrize("where", ["create", "first-update", "magic"])
def test_file_store_reports_damage_before_the_tail(tmp_path: Path, where: str) -> None:
    first, complete = _two_updates(tmp_path)
    data = bytearray(complete)
    if where == "create":
        data[40] ^= 0xFF  # inside the body of the first frame
    elif where == "first-update":
        data[first - 5] ^= 0xFF  # inside the body of the first update
    else:
        data[first] ^= 0xFF  # the magic of the second update
    _log(tmp_path).write_bytes(bytes(data))
    with FileStore(tmp_path) as store:
        runs = store.runs()
        for call in (
            lambda: runs.get_run("r"),
            lambda: runs.read_nodes("r"),
            runs.list_runs,
            lambda: runs.record_run("r", RunUpdate(status="failed")),
        ):
            with pytest.raises(StoreError, match="damaged") as caught:
                call()
            assert str(_log(tmp_path)) in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"PLRn", b"not a log at all, just text"], ids=["empty", "magic", "text"])
def test_file_store_refuses_a_log_without_a_run(tmp_path: Path, content: bytes) -> None:
    _two_updates(tmp_path)
    _log(tmp_path).write_bytes(content)
    with FileStore(tmp_path) as store, pytest.raises(StoreError, match="damaged"):
        store.runs().get_run("r")


def test_file_store_refuses_a_log_of_another_run(tmp_path: Path) -> None:
    _two_updates(tmp_path)
    with FileStore(tmp_path) as store:
        store.runs().create_run(make_run("other"), [])
    os.replace(_log(tmp_path, "other"), _log(tmp_path))
    with FileStore(tmp_path) as store, pytest.raises(StoreError, match="holds run 'other' instead of 'r'"):
        store.runs().get_run("r")


def test_file_store_skips_a_run_being_created(tmp_path: Path) -> None:
    _two_updates(tmp_path)
    (tmp_path / "runs" / "half").mkdir()
    with FileStore(tmp_path) as store:
        assert [run.id for run in store.runs().list_runs()] == ["r"]
        with pytest.raises(PipelineNotFound):
            store.runs().get_run("half")
        with pytest.raises(PipelineExists):
            store.runs().create_run(make_run("half"), [])


def test_file_store_refuses_a_run_id_too_long_for_a_file_name(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        with pytest.raises(ValueError, match="cannot be kept in the file store"):
            store.runs().create_run(make_run("x" * 300), [])
        with pytest.raises(PipelineNotFound):
            store.runs().get_run("x" * 300)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"state": 5}, "state that is not text"),
        ({"attempts": "3"}, "attempts that is not a whole number"),
        ({"state": "exploded"}, "unknown state 'exploded'"),
        ({"message": ["not", "text"]}, "message that is not text"),
    ],
    ids=["state-type", "attempts-type", "state-value", "message-type"],
)
def test_file_store_refuses_well_framed_records_of_the_wrong_shape(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    from pylo.stores import files_runs

    _two_updates(tmp_path)
    bad = dataclasses.replace(done(chain(3)[2]), **change)
    header = {"op": "update", "updated_at": 1.0, "status": None, "ended_at": None, "options": None}
    with _log(tmp_path).open("ab") as log:
        log.write(files_runs._encode(header, [bad], files_runs._UPDATED))
    with FileStore(tmp_path) as store, pytest.raises(StoreError, match=expected) as caught:
        store.runs().read_nodes("r")
    assert str(_log(tmp_path)) in str(caught.value)


def _tables_or_dirs(pylo: Any, kind: str, root: Path) -> set[str]:
    store = pylo.store
    if kind == "files":
        return {path.name for path in root.iterdir()}
    return sql_tables(store)


def test_executions_of_a_store_without_runs_still_read_and_resume(
    make_pylo: Callable[..., Any], store_name: str, store_dir: Path
) -> None:
    from tasks import double, fail_on_multiples_of_seven

    pylo = make_pylo()
    first = pylo.start_from_scratch(range(20), fail_on_multiples_of_seven)
    before = _tables_or_dirs(pylo, store_name, store_dir)
    # Reading pipelines (what `pylo pipeline list` does) finds none and writes nothing.
    assert make_pylo().list_pipelines() == []
    with pytest.raises(PipelineNotFound):
        make_pylo().get_pipeline("nope")
    assert _tables_or_dirs(pylo, store_name, store_dir) == before
    resumed = make_pylo().start_from_past_execution(first, double)
    finished, unfinished = make_pylo().get_state(resumed)
    assert (len(finished), unfinished) == (20, [])
