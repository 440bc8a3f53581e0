"""The store contract: what every Store must do, run on every store kind.

Tests taking ``store`` or ``store_factory`` run on each kind of
``store_kit.STORE_KINDS``. The sections at the end check what is specific to
one store: how it refuses damaged or foreign data, and its file modes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_kit import (
    LIVE_BATCHES,
    LIVE_FLUSHES,
    LIVE_SIZE,
    WAIT,
    StoreFactory,
    failure,
    flush_while_read,
    live_flush,
    make_batches,
    make_record,
    payload_of,
    race_create,
    write_own_execution,
)

from pylo.errors import ExecutionExists, ExecutionNotFound, StoreError
from pylo.stores.base import (
    FAILED,
    FINISHED,
    FORMAT_VERSION,
    PENDING,
    BatchRecord,
    ExecutionStatus,
    Flush,
    Store,
)
from pylo.stores.files import MARKER_NAME, FileStore
from pylo.stores.sql import SQLStore

SPAWN = multiprocessing.get_context("spawn")


def flush(**changes: Any) -> Flush:
    fields: dict[str, Any] = {"states": {}, "failures": [], "results": [], "total": 0, "finished": 0, "failed": 0}
    fields.update(changes)
    return Flush(**fields)


def start_processes(target: Callable[..., None], argument_lists: list[tuple[Any, ...]]) -> list[Any]:
    processes = [SPAWN.Process(target=target, args=arguments) for arguments in argument_lists]
    for process in processes:
        process.start()
    return processes


def join_all(processes: list[Any]) -> None:
    for process in processes:
        process.join(timeout=WAIT)
    alive = [process for process in processes if process.is_alive()]
    for process in alive:
        process.kill()
        process.join(timeout=WAIT)
    assert not alive, f"{len(alive)} test processes did not finish within {WAIT} s"
    assert [process.exitcode for process in processes] == [0] * len(processes)


# -- creating and reading executions ---------------------------------------------


def test_created_execution_reads_back_with_every_field(store: Store) -> None:
    record = make_record("exec-1", parent_id="exec-0", input_source="exec-0", created_at=1_700_000_000.125)
    store.create_execution(record)
    assert store.get_execution("exec-1") == record


def test_optional_fields_round_trip_as_none(store: Store) -> None:
    record = make_record("bare", pid=None, host=None, options={})
    store.create_execution(record)
    assert store.get_execution("bare") == record


def test_a_new_execution_has_no_batches_failures_or_results(store: Store) -> None:
    store.create_execution(make_record("empty"))
    assert list(store.read_batches("empty")) == []
    assert list(store.read_batches("empty", payloads=True)) == []
    assert list(store.read_payloads("empty", [0, 1])) == []
    assert store.read_failures("empty") == []
    assert list(store.read_results("empty")) == []


def test_creating_an_existing_id_raises_execution_exists(store: Store) -> None:
    store.create_execution(make_record("twice"))
    with pytest.raises(ExecutionExists) as caught:
        store.create_execution(make_record("twice", task_name="other:task"))
    assert caught.value.execution_id == "twice"
    assert caught.value.location == store.location
    assert store.get_execution("twice").task_name == "tests.tasks:work"


def test_threads_racing_to_create_one_id_have_exactly_one_winner(store: Store) -> None:
    count = 8
    barrier = threading.Barrier(count, timeout=WAIT)
    outcomes: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait()
        try:
            store.create_execution(make_record("contested"))
            result = "won"
        except ExecutionExists:
            result = "exists"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=create) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(outcomes) == ["exists"] * (count - 1) + ["won"]


def test_processes_racing_to_create_one_id_have_exactly_one_winner(store_factory: StoreFactory) -> None:
    count = 4
    barrier = SPAWN.Barrier(count)
    results = SPAWN.Queue()
    # The store is not opened beforehand: the processes also race to create it.
    processes = start_processes(race_create, [(store_factory.spec, "contested", barrier, results)] * count)
    outcomes = [results.get(timeout=WAIT) for _ in range(count)]
    join_all(processes)
    assert sorted(outcomes) == ["exists"] * (count - 1) + ["won"], outcomes
    assert store_factory().get_execution("contested").id == "contested"


def test_list_executions_is_oldest_first_then_by_id(store: Store) -> None:
    assert store.list_executions() == []
    store.create_execution(make_record("c", created_at=300.0))
    store.create_execution(make_record("b", created_at=100.0))
    store.create_execution(make_record("z", created_at=200.0))
    store.create_execution(make_record("a", created_at=300.0))
    assert [record.id for record in store.list_executions()] == ["b", "z", "a", "c"]
    assert store.list_executions()[0] == store.get_execution("b")


@pytest.mark.parametrize(
    "execution_id",
    ["a/b", "a%2Fb", "..", ".", ".hidden", "100% sure", "sp ace", "\u00fcn\u00efc\u00f8de \u2603", "x" * 60],
)
def test_ids_are_kept_verbatim(store: Store, execution_id: str) -> None:
    store.create_execution(make_record(execution_id))
    store.create_execution(make_record(execution_id + "-sibling"))
    store.add_batches(execution_id, make_batches(execution_id, [2]))
    assert store.get_execution(execution_id).total == 2
    assert sorted(record.id for record in store.list_executions()) == sorted([execution_id, execution_id + "-sibling"])
    assert [batch.payload for batch in store.read_batches(execution_id, payloads=True)] == [payload_of(execution_id, 0)]


def test_options_must_be_json_serializable(store: Store) -> None:
    with pytest.raises(TypeError, match="JSON-serializable"):
        store.create_execution(make_record("bad-options", options={"when": object()}))
    with pytest.raises(ExecutionNotFound):
        store.get_execution("bad-options")


# -- every method on an unknown id -------------------------------------------------


UNKNOWN_ID_CALLS: dict[str, Callable[[Store], object]] = {
    "add_batches": lambda store: store.add_batches("missing", make_batches("missing", [1])),
    "add_no_batches": lambda store: store.add_batches("missing", []),
    "record_flush": lambda store: store.record_flush("missing", flush(total=1)),
    "get_execution": lambda store: store.get_execution("missing"),
    "read_batches": lambda store: list(store.read_batches("missing")),
    "read_batches_payloads": lambda store: list(store.read_batches("missing", payloads=True)),
    "read_payloads": lambda store: list(store.read_payloads("missing", [0])),
    "read_failures": lambda store: store.read_failures("missing"),
    "read_results": lambda store: list(store.read_results("missing")),
    "read_chunks": lambda store: store.read_chunks("missing"),
}


@pytest.mark.parametrize("call", list(UNKNOWN_ID_CALLS.values()), ids=list(UNKNOWN_ID_CALLS))
def test_every_method_raises_not_found_for_an_unknown_id(store: Store, call: Callable[[Store], object]) -> None:
    store.create_execution(make_record("present"))
    with pytest.raises(ExecutionNotFound) as caught:
        call(store)
    assert caught.value.execution_id == "missing"
    assert caught.value.location == store.location
    assert "'missing'" in str(caught.value)
    assert [record.id for record in store.list_executions()] == ["present"]


def test_impossible_ids_are_not_found(store: Store) -> None:
    for execution_id in ["", "x" * 1000]:
        with pytest.raises(ExecutionNotFound):
            store.get_execution(execution_id)


# -- batches ---------------------------------------------------------------------


def test_add_batches_appends_and_adds_sizes_to_total(store: Store) -> None:
    store.create_execution(make_record("e"))
    store.add_batches("e", make_batches("e", [3, 4]))
    assert store.get_execution("e").total == 7
    store.add_batches("e", make_batches("e", [5], first_batch=2, first_position=7))
    store.add_batches("e", [])
    record = store.get_execution("e")
    assert (record.total, record.finished, record.failed, record.pending) == (12, 0, 0, 12)
    assert list(store.read_batches("e")) == [
        BatchRecord(0, 0, 3, bytes(3)),
        BatchRecord(1, 3, 4, bytes(4)),
        BatchRecord(2, 7, 5, bytes(5)),
    ]


def test_add_batches_keeps_initial_states(store: Store) -> None:
    store.create_execution(make_record("e"))
    states = bytes([FINISHED, PENDING, FAILED])
    store.add_batches("e", [BatchRecord(0, 0, 3, states, b"p")])
    assert [batch.states for batch in store.read_batches("e")] == [states]


def test_add_batches_bumps_updated_at(store: Store) -> None:
    store.create_execution(make_record("e", updated_at=1.0))
    before = time.time()
    store.add_batches("e", make_batches("e", [1]))
    assert before <= store.get_execution("e").updated_at <= time.time()


def test_add_batches_rejects_states_of_the_wrong_length(store: Store) -> None:
    store.create_execution(make_record("e"))
    with pytest.raises(ValueError, match="state bytes"):
        store.add_batches("e", [BatchRecord(0, 0, 3, bytes(2), b"p")])
    assert store.get_execution("e").total == 0
    assert list(store.read_batches("e")) == []


def test_read_batches_with_payloads(store: Store) -> None:
    store.create_execution(make_record("e"))
    store.add_batches("e", make_batches("e", [2, 3, 1]))
    batches = list(store.read_batches("e", payloads=True))
    assert [batch.batch_no for batch in batches] == [0, 1, 2]
    assert [batch.payload for batch in batches] == [payload_of("e", n) for n in range(3)]
    assert all(batch.payload is None for batch in store.read_batches("e"))


def test_read_payloads_follows_the_order_asked_and_skips_unknown_batches(store: Store) -> None:
    store.create_execution(make_record("e"))
    count = 75  # more than one query group in the SQL store
    store.add_batches("e", make_batches("e", [1] * count))
    wanted = [74, 3, 999, 0, 40, -1, 41, *range(50, 75)]
    got = list(store.read_payloads("e", iter(wanted)))
    assert got == [(n, payload_of("e", n)) for n in wanted if 0 <= n < count]


def test_resumed_execution_reads_payloads_from_its_input_source(store: Store) -> None:
    store.create_execution(make_record("parent"))
    store.add_batches("parent", make_batches("parent", [2, 2, 2]))
    store.create_execution(make_record("child", parent_id="parent", input_source="parent"))
    # A resume records its own states, and only some of the batches here.
    own = [BatchRecord(0, 0, 2, bytes([FINISHED, PENDING])), BatchRecord(2, 4, 2, bytes([PENDING, PENDING]))]
    store.add_batches("child", own)
    batches = list(store.read_batches("child", payloads=True))
    assert batches == [
        dataclasses.replace(own[0], payload=payload_of("parent", 0)),
        dataclasses.replace(own[1], payload=payload_of("parent", 2)),
    ]
    assert list(store.read_batches("child")) == own
    assert list(store.read_payloads("child", [2, 1, 0])) == [(2, payload_of("parent", 2)), (0, payload_of("parent", 0))]
    assert store.get_execution("child").total == 4
    assert [batch.states for batch in store.read_batches("parent")] == [bytes(2)] * 3


# -- flushes ---------------------------------------------------------------------


def test_record_flush_replaces_states_of_the_named_batches_only(store: Store) -> None:
    store.create_execution(make_record("e"))
    store.add_batches("e", make_batches("e", [3, 3, 3]))
    store.record_flush("e", flush(states={1: bytes([FINISHED, FAILED, FINISHED])}, total=9, finished=2, failed=1))
    assert [batch.states for batch in store.read_batches("e")] == [
        bytes(3),
        bytes([FINISHED, FAILED, FINISHED]),
        bytes(3),
    ]
    store.record_flush(
        "e", flush(states={1: bytes([FINISHED] * 3), 2: bytes([FAILED, 0, 0])}, total=9, finished=3, failed=1)
    )
    assert [batch.states for batch in store.read_batches("e", payloads=True)] == [
        bytes(3),
        bytes([FINISHED] * 3),
        bytes([FAILED, 0, 0]),
    ]


def test_record_flush_sets_counts_and_updated_at(store: Store) -> None:
    store.create_execution(make_record("e", updated_at=1.0))
    store.add_batches("e", make_batches("e", [10]))
    before = time.time()
    store.record_flush(
        "e", flush(states={0: bytes([FINISHED] * 6 + [FAILED] * 2 + [0] * 2)}, total=10, finished=6, failed=2)
    )
    record = store.get_execution("e")
    assert (record.total, record.finished, record.failed, record.pending, record.unfinished) == (10, 6, 2, 2, 4)
    assert before <= record.updated_at <= time.time()
    assert (record.status, record.ended_at, record.inputs_complete) == (ExecutionStatus.RUNNING, None, False)


def test_record_flush_sets_status_ended_at_and_inputs_complete_once_given(store: Store) -> None:
    store.create_execution(make_record("e"))
    store.add_batches("e", make_batches("e", [2]))
    store.record_flush("e", flush(total=2, inputs_complete=True))
    assert store.get_execution("e").inputs_complete is True
    store.record_flush(
        "e",
        flush(
            states={0: bytes([FINISHED] * 2)}, total=2, finished=2, status=ExecutionStatus.COMPLETED, ended_at=1234.5
        ),
    )
    record = store.get_execution("e")
    assert (record.status, record.ended_at, record.inputs_complete) == (ExecutionStatus.COMPLETED, 1234.5, True)
    assert record.ended is not None and record.ended.timestamp() == 1234.5
    # A later flush without them keeps them.
    store.record_flush("e", flush(total=2, finished=2))
    record = store.get_execution("e")
    assert (record.status, record.ended_at, record.inputs_complete) == (ExecutionStatus.COMPLETED, 1234.5, True)


@pytest.mark.parametrize("status", [s for s in ExecutionStatus if s is not ExecutionStatus.CRASHED])
def test_every_written_status_round_trips(store: Store, status: ExecutionStatus) -> None:
    store.create_execution(make_record("e"))
    store.record_flush("e", flush(status=status, ended_at=5.0))
    assert store.get_execution("e").status is status


def test_crashed_is_never_written(store: Store) -> None:
    store.create_execution(make_record("e"))
    with pytest.raises(ValueError, match="crashed"):
        store.record_flush("e", flush(status=ExecutionStatus.CRASHED))
    assert store.get_execution("e").status is ExecutionStatus.RUNNING


def test_failures_are_ordered_by_position_and_round_trip(store: Store) -> None:
    store.create_execution(make_record("e"))
    store.add_batches("e", make_batches("e", [10, 10]))
    first = [failure(17, worker=1), failure(3, full=False)]
    second = [failure(9, worker=2), failure(0), failure(12, full=False)]
    store.record_flush("e", flush(failures=first, total=20, failed=2))
    store.record_flush("e", flush(failures=second, total=20, failed=5))
    rows = store.read_failures("e")
    assert rows == sorted(first + second, key=lambda row: row.position)
    assert rows[1].exc_type is None and rows[1].exception is None and rows[1].traceback is None


def test_failure_text_and_bytes_survive_exactly(store: Store) -> None:
    store.create_execution(make_record("e"))
    row = dataclasses.replace(
        failure(0),
        message="quotes ' \" \\ tabs\t newlines\n\r unicode \U0001f600 and \x7f",
        traceback="x" * 100_000,
        exception=bytes(range(256)) * 4,
    )
    store.record_flush("e", flush(failures=[row], failed=1))
    assert store.read_failures("e") == [row]


@pytest.mark.parametrize("text", ["nul \x00 byte", "lone surrogate \udcff from a file name"], ids=["nul", "surrogate"])
def test_failure_text_a_database_cannot_hold_is_kept_readable(store: Store, text: str) -> None:
    store.create_execution(make_record("e"))
    row = dataclasses.replace(failure(0), exc_type=text, message=text, traceback=text)
    store.record_flush("e", flush(failures=[row], failed=1))
    (stored,) = store.read_failures("e")
    readable = {text, text.encode("utf-8", "backslashreplace").decode("utf-8"), text.replace("\x00", "\\x00")}
    assert {stored.exc_type, stored.message, stored.traceback} <= readable
    assert stored.exception == row.exception


def test_results_are_ordered_by_position(store: Store) -> None:
    store.create_execution(make_record("e"))
    store.add_batches("e", make_batches("e", [5, 5]))
    store.record_flush("e", flush(results=[(7, b"seven"), (2, b"two")], total=10, finished=2))
    store.record_flush("e", flush(results=[(0, b""), (9, b"\x00nine\xff")], total=10, finished=4))
    assert list(store.read_results("e")) == [(0, b""), (2, b"two"), (7, b"seven"), (9, b"\x00nine\xff")]


def test_many_results_come_back_in_order(store: Store) -> None:
    store.create_execution(make_record("e"))
    positions = list(range(2500))
    shuffled = positions[1::2] + positions[::2]
    for start in range(0, len(shuffled), 500):
        chunk = shuffled[start : start + 500]
        store.record_flush("e", flush(results=[(p, str(p).encode()) for p in chunk]))
    assert list(store.read_results("e")) == [(p, str(p).encode()) for p in positions]


def test_executions_do_not_see_each_others_data(store: Store) -> None:
    for execution_id in ("one", "two"):
        store.create_execution(make_record(execution_id))
        store.add_batches(execution_id, make_batches(execution_id, [2]))
    store.record_flush(
        "one",
        flush(
            states={0: bytes([FAILED, FINISHED])},
            failures=[failure(0)],
            results=[(1, b"r")],
            total=2,
            finished=1,
            failed=1,
        ),
    )
    assert [batch.states for batch in store.read_batches("two")] == [bytes(2)]
    assert store.read_failures("two") == []
    assert list(store.read_results("two")) == []
    assert store.get_execution("two").finished == 0
    assert list(store.read_payloads("two", [0])) == [(0, payload_of("two", 0))]


def test_data_survives_closing_and_reopening(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.create_execution(make_record("parent", created_at=1.0))
    store.add_batches("parent", make_batches("parent", [3, 3]))
    store.record_flush(
        "parent",
        flush(
            states={0: bytes([FINISHED, FAILED, FINISHED])},
            failures=[failure(1)],
            results=[(0, b"zero"), (2, b"two")],
            total=6,
            finished=2,
            failed=1,
            status=ExecutionStatus.STOPPED,
            ended_at=99.5,
            inputs_complete=True,
        ),
    )
    store.create_execution(make_record("child", parent_id="parent", input_source="parent", created_at=2.0))
    store.add_batches("child", make_batches("child", [3, 3], payloads=False))

    def snapshot(store: Store) -> object:
        return (
            store.list_executions(),
            {
                execution_id: (
                    list(store.read_batches(execution_id, payloads=True)),
                    store.read_failures(execution_id),
                    list(store.read_results(execution_id)),
                )
                for execution_id in ("parent", "child")
            },
        )

    before = snapshot(store)
    store.close()
    reopened = store_factory()
    assert snapshot(reopened) == before
    # And the reopened store can go on writing.
    reopened.record_flush("child", flush(states={1: bytes([FINISHED] * 3)}, total=6, finished=3))
    assert [batch.states for batch in reopened.read_batches("child")] == [bytes(3), bytes([FINISHED] * 3)]


def test_a_store_is_usable_from_many_threads(store: Store) -> None:
    def run(number: int) -> None:
        execution_id = f"thread-{number}"
        store.create_execution(make_record(execution_id))
        store.add_batches(execution_id, make_batches(execution_id, [4, 4]))
        for batch_no in range(2):
            store.record_flush(
                execution_id, flush(states={batch_no: bytes([FINISHED] * 4)}, total=8, finished=4 * (batch_no + 1))
            )
            assert list(store.read_payloads(execution_id, [batch_no])) == [
                (batch_no, payload_of(execution_id, batch_no))
            ]

    errors: list[BaseException] = []

    def guarded(number: int) -> None:
        try:
            run(number)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(number,)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert [record.finished for record in store.list_executions()] == [8] * 6


# -- several processes -------------------------------------------------------------


def test_processes_write_their_own_executions_at_once(store_factory: StoreFactory) -> None:
    count = 4
    barrier = SPAWN.Barrier(count)
    results = SPAWN.Queue()
    ids = [f"proc-{number}" for number in range(count)]
    # Not opened first: the processes also create the store together.
    processes = start_processes(write_own_execution, [(store_factory.spec, i, barrier, results) for i in ids])
    outcomes = [results.get(timeout=WAIT) for _ in range(count)]
    join_all(processes)
    assert sorted(outcomes) == [("ok", i) for i in ids], outcomes
    store = store_factory()
    for execution_id in ids:
        record = store.get_execution(execution_id)
        assert (record.total, record.finished, record.failed) == (60, 48, 12)
        assert (record.status, record.inputs_complete) == (ExecutionStatus.COMPLETED, True)
        assert [batch.states for batch in store.read_batches(execution_id)] == [bytes([FINISHED] * 4 + [FAILED])] * 12
        assert [row.position for row in store.read_failures(execution_id)] == [n * 5 + 4 for n in range(12)]
        assert [position for position, _ in store.read_results(execution_id)] == [n * 5 for n in range(12)]


def test_a_reader_in_another_process_sees_only_whole_flushes(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.create_execution(make_record("live"))
    store.add_batches("live", make_batches("live", [LIVE_SIZE] * LIVE_BATCHES))
    go = SPAWN.Event()
    results = SPAWN.Queue()
    (writer,) = start_processes(flush_while_read, [(store_factory.spec, "live", go, results)])
    everything = LIVE_BATCHES * LIVE_SIZE
    seen_flushes: set[int] = set()
    go.set()
    deadline = time.monotonic() + WAIT
    writing = True
    while writing:
        # Decided before reading, so the last round reads the final state.
        writing = writer.is_alive()
        assert time.monotonic() < deadline, "the writer did not finish in time"
        record = store.get_execution("live")
        assert (record.finished, record.failed) in [(0, 0), (everything, 0), (0, everything)]
        states = {batch.states for batch in store.read_batches("live")}
        assert len(states) == 1, f"a read saw parts of different flushes: {states}"
        assert len(set(states.pop())) == 1
        failures = [row.position for row in store.read_failures("live")]
        assert failures == list(range(len(failures)))
        results_seen = [position for position, _ in store.read_results("live")]
        assert results_seen == list(range(len(results_seen)))
        seen_flushes.add(len(failures))
    assert results.get(timeout=WAIT) == "ok"
    join_all([writer])
    record = store.get_execution("live")
    assert record == dataclasses.replace(record, status=ExecutionStatus.COMPLETED, inputs_complete=True)
    final = live_flush(LIVE_FLUSHES)
    assert (record.finished, record.failed) == (final.finished, final.failed)
    assert LIVE_FLUSHES in seen_flushes
    assert len(store.read_failures("live")) == LIVE_FLUSHES


# -- a property: the last flush of a batch wins -----------------------------------

_unique = itertools.count()

batch_sizes = st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=5)


@st.composite
def flush_plans(draw: st.DrawFn) -> tuple[list[int], list[dict[int, bytes]], list[list[int]]]:
    sizes = draw(batch_sizes)
    total = sum(sizes)
    state = st.sampled_from([PENDING, FINISHED, FAILED])
    plans = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        chosen = draw(st.sets(st.integers(min_value=0, max_value=len(sizes) - 1)))
        plans.append({n: bytes(draw(st.lists(state, min_size=sizes[n], max_size=sizes[n]))) for n in chosen})
    positions = draw(st.permutations(list(range(total))))
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=total), min_size=len(plans), max_size=len(plans))))
    failure_groups = [list(positions[a:b]) for a, b in zip([0, *cuts], cuts, strict=False)]
    return sizes, plans, failure_groups


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=flush_plans())
def test_the_latest_flush_of_each_batch_wins(
    store: Store, plan: tuple[list[int], list[dict[int, bytes]], list[list[int]]]
) -> None:
    sizes, flushes, failure_groups = plan
    execution_id = f"prop-{next(_unique)}"
    store.create_execution(make_record(execution_id))
    store.add_batches(execution_id, make_batches(execution_id, sizes))
    expected = {n: bytes(size) for n, size in enumerate(sizes)}
    failed: list[int] = []
    for number, (states, positions) in enumerate(zip(flushes, failure_groups, strict=True)):
        expected.update(states)
        failed += positions
        store.record_flush(
            execution_id,
            flush(
                states=states,
                failures=[failure(p) for p in positions],
                results=[(p, b"%d" % p) for p in positions],
                total=sum(sizes),
                finished=number,
                failed=len(failed),
            ),
        )
    assert [batch.states for batch in store.read_batches(execution_id)] == [expected[n] for n in range(len(sizes))]
    assert [row.position for row in store.read_failures(execution_id)] == sorted(failed)
    assert list(store.read_results(execution_id)) == [(p, b"%d" % p) for p in sorted(failed)]
    record = store.get_execution(execution_id)
    assert (record.total, record.finished, record.failed) == (sum(sizes), max(len(flushes) - 1, 0), len(failed))


# -- the SQL store -------------------------------------------------------------------


def test_sqlite_store_location_and_file_modes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "pylo.sqlite"
    with SQLStore.sqlite(path) as store:
        assert store.location == str(path)
        store.create_execution(make_record("e"))
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta = dict(connection.execute("SELECT key, value FROM pylo_meta"))
    assert tables == {"pylo_meta", "pylo_executions", "pylo_batches", "pylo_failures", "pylo_results"}
    assert meta == {"format": "pylo-sql", "version": str(FORMAT_VERSION)}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"these are my notes, not a database\n" * 20, "not a SQLite database"),
        (b"SQLite format 3\x00" + b"\xff" * 5000, "file is not a database"),
    ],
    ids=["text", "damaged-sqlite"],
)
def test_sqlite_store_refuses_a_file_that_is_not_sqlite(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=expected) as caught:
        SQLStore.sqlite(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content


@pytest.mark.parametrize("create", [True, False])
def test_sqlite_store_refuses_an_empty_file_and_leaves_it_empty(tmp_path: Path, create: bool) -> None:
    # An empty file is a store truncated to nothing (pylo never makes one):
    # reusing it as a new store would hide that every execution is gone.
    path = tmp_path / "empty.sqlite"
    path.touch()
    with pytest.raises(StoreError, match="empty file") as caught:
        SQLStore.sqlite(path, create=create)
    assert str(path) in str(caught.value)
    assert path.stat().st_size == 0


def test_a_reader_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no pylo store") as caught:
        SQLStore.sqlite(tmp_path / "none" / "pylo.sqlite", create=False)
    assert str(tmp_path / "none" / "pylo.sqlite") in str(caught.value)
    with pytest.raises(StoreError, match="no pylo file store"):
        FileStore(tmp_path / "files", create=False)
    assert list(tmp_path.iterdir()) == []


def test_sqlite_store_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="directory") as caught:
        SQLStore.sqlite(tmp_path)
    assert str(tmp_path) in str(caught.value)


def _make_sqlite_store(path: Path) -> None:
    with SQLStore.sqlite(path) as store:
        store.create_execution(make_record("e"))


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("UPDATE pylo_meta SET value = '99' WHERE key = 'version'", "format version '99'"),
        ("UPDATE pylo_meta SET value = 'someone-else' WHERE key = 'format'", "format 'someone-else'"),
        ("DELETE FROM pylo_meta", "format None"),
        ("DROP TABLE pylo_meta", "no pylo_meta table"),
    ],
    ids=["unknown-version", "other-format", "empty-meta", "no-meta"],
)
def test_sqlite_store_refuses_foreign_or_unknown_formats(tmp_path: Path, statement: str, expected: str) -> None:
    path = tmp_path / "pylo.sqlite"
    _make_sqlite_store(path)
    with sqlite3.connect(path) as connection:
        connection.execute(statement)
    with pytest.raises(StoreError, match=expected) as caught:
        SQLStore.sqlite(path)
    assert str(path) in str(caught.value)


def test_sqlite_store_refuses_a_database_of_something_else_when_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
        connection.execute("INSERT INTO users VALUES ('ada')")
    with pytest.raises(StoreError, match="users") as caught:
        SQLStore.sqlite(path)
    assert str(path) in str(caught.value)
    with pytest.raises(StoreError):
        SQLStore(f"sqlite:///{path}", exclusive=True)
    # Shared with another application on purpose: pylo adds its tables only.
    with SQLStore(f"sqlite:///{path}") as store:
        store.create_execution(make_record("e"))
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT name FROM users").fetchall() == [("ada",)]


def test_sql_errors_become_store_errors_naming_the_location(tmp_path: Path) -> None:
    path = tmp_path / "pylo.sqlite"
    with SQLStore.sqlite(path) as store:
        store.create_execution(make_record("e"))
        with sqlite3.connect(path) as connection:
            connection.execute("DROP TABLE pylo_results")
        with pytest.raises(StoreError) as caught:
            list(store.read_results("e"))
    assert str(path) in str(caught.value)
    assert "pylo_results" in str(caught.value)
    assert caught.value.__cause__ is not None


def test_sql_store_hides_the_password_of_its_url() -> None:
    url = "postgresql+psycopg://pylo:hunter2@127.0.0.1:1/pylo?connect_timeout=5"
    with pytest.raises(StoreError) as caught:
        SQLStore(url)
    assert "hunter2" not in str(caught.value)
    assert "pylo:***@127.0.0.1" in str(caught.value)


def test_sql_store_refuses_a_url_that_is_not_one() -> None:
    with pytest.raises(StoreError, match="not a valid SQLAlchemy database URL"):
        SQLStore("not a url at all")


# -- the file store ------------------------------------------------------------------


def _execution_dir(root: Path, name: str = "e") -> Path:
    return root / "executions" / name


def test_file_store_writes_its_marker_and_private_modes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with FileStore(root) as store:
        assert store.location == str(root)
        store.create_execution(make_record("e"))
        store.add_batches("e", make_batches("e", [1]))
        store.record_flush("e", flush(total=1))
    assert json.loads((root / MARKER_NAME).read_text()) == {"format": "pylo-files", "version": FORMAT_VERSION}
    directory = _execution_dir(root)
    for path in (root, root / "executions", directory):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    for path in (
        root / MARKER_NAME,
        directory / "execution.json",
        directory / "inputs.log",
        directory / "outcomes.log",
    ):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert sorted(os.listdir(directory)) == ["execution.json", "inputs.log", "outcomes.log"]


def test_file_store_shares_a_directory_with_the_sqlite_store(tmp_path: Path) -> None:
    with SQLStore.sqlite(tmp_path / "pylo.sqlite") as sql:
        sql.create_execution(make_record("in-sql"))
        with FileStore(tmp_path) as files:
            files.create_execution(make_record("in-files"))
            assert [record.id for record in files.list_executions()] == ["in-files"]
        assert [record.id for record in sql.list_executions()] == ["in-sql"]
    assert (tmp_path / MARKER_NAME).exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\x01garbage", "not JSON"),
        (b"[1, 2]", "format None"),
        (json.dumps({"format": "someone-else", "version": 1}).encode(), "format 'someone-else'"),
        (json.dumps({"format": "pylo-files", "version": 99}).encode(), "format version 99"),
        (json.dumps({"format": "pylo-files", "version": "1"}).encode(), "format version '1'"),
    ],
    ids=["garbage", "not-an-object", "other-format", "unknown-version", "version-as-text"],
)
def test_file_store_refuses_a_foreign_marker(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / MARKER_NAME).write_bytes(content)
    with pytest.raises(StoreError, match=expected) as caught:
        FileStore(tmp_path)
    assert str(tmp_path / MARKER_NAME) in str(caught.value)


def test_file_store_refuses_a_root_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(StoreError, match="not a directory") as caught:
        FileStore(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", json.dumps({"id": "e"}).encode(), b""],
    ids=["garbage", "not-an-object", "missing-fields", "empty"],
)
def test_file_store_refuses_a_corrupt_execution_json(tmp_path: Path, content: bytes) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("e"))
    path = _execution_dir(tmp_path) / "execution.json"
    path.write_bytes(content)
    with FileStore(tmp_path) as store:
        for call in (
            lambda: store.get_execution("e"),
            store.list_executions,
            lambda: list(store.read_batches("e")),
            lambda: store.add_batches("e", make_batches("e", [1])),
        ):
            with pytest.raises(StoreError) as caught:
                call()
            assert str(path) in str(caught.value)


def test_file_store_ignores_a_torn_tail_of_outcomes_at_every_cut(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("e"))
        store.add_batches("e", make_batches("e", [2, 2]))
        store.record_flush(
            "e",
            flush(
                states={0: bytes([FINISHED, FAILED])},
                failures=[failure(1)],
                results=[(0, b"0")],
                total=4,
                finished=1,
                failed=1,
            ),
        )
    directory = _execution_dir(tmp_path)
    after_first = (directory / "execution.json").read_bytes()
    first_length = (directory / "outcomes.log").stat().st_size
    with FileStore(tmp_path) as store:
        store.record_flush(
            "e",
            flush(
                states={1: bytes([FINISHED, FINISHED])},
                failures=[failure(3, full=False)],
                results=[(2, b"2")],
                total=4,
                finished=3,
                failed=1,
                status=ExecutionStatus.COMPLETED,
                ended_at=7.0,
            ),
        )
    complete = (directory / "outcomes.log").read_bytes()

    first_view = ([bytes([FINISHED, FAILED]), bytes(2)], [1], [0], (1, 1, ExecutionStatus.RUNNING))
    second_view = (
        [bytes([FINISHED, FAILED]), bytes([FINISHED, FINISHED])],
        [1, 3],
        [0, 2],
        (3, 1, ExecutionStatus.COMPLETED),
    )
    for cut in range(first_length, len(complete) + 1):
        # What a crash during the second append leaves: a prefix of the frame,
        # and execution.json as it was written after the first flush.
        (directory / "outcomes.log").write_bytes(complete[:cut])
        (directory / "execution.json").write_bytes(after_first)
        with FileStore(tmp_path) as store:
            record = store.get_execution("e")
            view = (
                [batch.states for batch in store.read_batches("e")],
                [row.position for row in store.read_failures("e")],
                [position for position, _ in store.read_results("e")],
                (record.finished, record.failed, record.status),
            )
            assert [r.finished for r in store.list_executions()] == [record.finished]
        assert view == (second_view if cut == len(complete) else first_view), cut


def test_file_store_writer_truncates_a_torn_tail_before_appending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("e"))
        store.add_batches("e", make_batches("e", [2]))
        store.record_flush("e", flush(states={0: bytes([FINISHED, PENDING])}, total=2, finished=1))
    log = _execution_dir(tmp_path) / "outcomes.log"
    good = log.read_bytes()
    log.write_bytes(good + good[: len(good) // 2])  # half of another frame
    with caplog.at_level(logging.WARNING, logger="pylo.stores.files"), FileStore(tmp_path) as store:
        store.record_flush(
            "e", flush(states={0: bytes([FINISHED, FAILED])}, failures=[failure(1)], total=2, finished=1, failed=1)
        )
        assert [batch.states for batch in store.read_batches("e")] == [bytes([FINISHED, FAILED])]
        assert [row.position for row in store.read_failures("e")] == [1]
    assert "unfinished write" in caplog.text
    with FileStore(tmp_path) as store:
        assert store.get_execution("e").failed == 1


def test_file_store_ignores_a_zero_filled_tail(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("e"))
        store.record_flush("e", flush(total=0, finished=0, status=ExecutionStatus.STOPPED))
    log = _execution_dir(tmp_path) / "outcomes.log"
    log.write_bytes(log.read_bytes() + bytes(100))
    with FileStore(tmp_path) as store:
        assert store.get_execution("e").status is ExecutionStatus.STOPPED
        assert store.read_failures("e") == []


def test_file_store_add_batches_is_atomic_at_every_cut(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("e"))
        store.add_batches("e", make_batches("e", [2, 3]))
    directory = _execution_dir(tmp_path)
    after_first = (directory / "execution.json").read_bytes()
    first_length = (directory / "inputs.log").stat().st_size
    with FileStore(tmp_path) as store:
        store.add_batches("e", make_batches("e", [4, 1, 2], first_batch=2, first_position=5))
    complete = (directory / "inputs.log").read_bytes()
    for cut in range(first_length, len(complete) + 1):
        (directory / "inputs.log").write_bytes(complete[:cut])
        (directory / "execution.json").write_bytes(after_first)
        with FileStore(tmp_path) as store:
            whole = cut == len(complete)
            assert store.get_execution("e").total == (12 if whole else 5), cut
            assert [batch.batch_no for batch in store.read_batches("e", payloads=True)] == (
                [0, 1, 2, 3, 4] if whole else [0, 1]
            ), cut
            assert [n for n, _ in store.read_payloads("e", range(5))] == ([0, 1, 2, 3, 4] if whole else [0, 1])
    # A writer after the torn call drops it and goes on.
    (directory / "inputs.log").write_bytes(complete[: len(complete) - 3])
    (directory / "execution.json").write_bytes(after_first)
    with FileStore(tmp_path) as store:
        store.add_batches("e", make_batches("e", [6], first_batch=2, first_position=5))
        assert [batch.size for batch in store.read_batches("e")] == [2, 3, 6]
        assert store.get_execution("e").total == 11


@pytest.mark.parametrize("log_name", ["inputs.log", "outcomes.log"])
def test_file_store_reports_corruption_before_the_tail(tmp_path: Path, log_name: str) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("e"))
        store.add_batches("e", make_batches("e", [4]))
        store.add_batches("e", make_batches("e", [4], first_batch=1, first_position=4))
        store.record_flush("e", flush(states={0: bytes([FINISHED] * 4)}, failures=[failure(0)], total=8, finished=4))
        store.record_flush("e", flush(states={1: bytes([FINISHED] * 4)}, total=8, finished=8))
    path = _execution_dir(tmp_path) / log_name
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF  # inside the first frame's body: its states or its JSON header
    path.write_bytes(bytes(data))
    with FileStore(tmp_path) as store, pytest.raises(StoreError) as caught:
        list(store.read_batches("e"))
    assert str(path) in str(caught.value)


def test_file_store_reports_a_corrupt_payload(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("e"))
        store.add_batches("e", make_batches("e", [4, 4]))
    path = _execution_dir(tmp_path) / "inputs.log"
    data = bytearray(path.read_bytes())
    # Frame header (16) + batch fields and CRC (29) + states (4): the first payload.
    data[16 + 29 + 4 + 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with FileStore(tmp_path) as store, pytest.raises(StoreError, match="corrupt") as caught:
        list(store.read_payloads("e", [0]))
    assert str(path) in str(caught.value)


def test_file_store_refuses_logs_shorter_than_its_record_says(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("e"))
        store.record_flush("e", flush(total=0))
    path = _execution_dir(tmp_path) / "outcomes.log"
    path.write_bytes(b"")
    with FileStore(tmp_path) as store, pytest.raises(StoreError, match="shorter") as caught:
        store.get_execution("e")
    assert str(path) in str(caught.value)


def test_file_store_skips_an_execution_being_created(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("done"))
        # mkdir has happened, execution.json not yet.
        (tmp_path / "executions" / "half").mkdir()
        assert [record.id for record in store.list_executions()] == ["done"]
        with pytest.raises(ExecutionNotFound):
            store.get_execution("half")
        with pytest.raises(ExecutionExists):
            store.create_execution(make_record("half"))


def test_file_store_copes_with_a_replaced_execution_directory(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        store.create_execution(make_record("e"))
        store.add_batches("e", make_batches("e", [2]))
        assert list(store.read_payloads("e", [0])) == [(0, payload_of("e", 0))]
        shutil.rmtree(_execution_dir(tmp_path))
        with pytest.raises(ExecutionNotFound):
            store.add_batches("e", make_batches("e", [2], first_batch=1, first_position=2))
        store.create_execution(make_record("e"))
        store.add_batches("e", make_batches("e", [5], payloads=True))
        assert list(store.read_payloads("e", [0])) == [(0, payload_of("e", 0))]
        assert store.get_execution("e").total == 5
