"""PostgreSQL as a shared store: several coordinators, live readers, first use.

The store contract suite (tests/stores) and the behaviour tests already run
on PostgreSQL; these tests cover what only a database server shared by many
processes (standing in for many machines) brings. They use the session
fixture ``postgres_url``, which skips, saying why, when no server can be had.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pg_server import fresh_schema

from pylo import ExecutionNotFound, ExecutionStatus, Pylo
from pylo.stores import _sqlmessage
from pylo.stores._sqlschema import on_postgres_connect
from pylo.stores.base import FINISHED, PENDING, BatchRecord, ChunkRow, ExecutionRecord, FailureRow, Flush
from pylo.stores.sql import SQLStore

SPAWN = multiprocessing.get_context("spawn")

#: Seconds any wait may block before the test fails.
WAIT = 60.0

#: Inputs of each coordinator's execution.
N_INPUTS = 3000

#: The input at which every coordinator's lane pauses until the reader has
#: seen all executions running (so the reader provably reads live executions).
PAUSE_AT = 1200


@pytest.fixture
def store_url(postgres_url: str, tmp_path: Path) -> Iterator[str]:
    """A URL selecting a fresh schema of its own in the test database."""
    with fresh_schema(postgres_url, str(tmp_path)) as url:
        yield url


def fail_on_multiples_of_seven(item: int) -> None:
    if item % 7 == 0:
        raise ValueError(f"bad input {item}")


def run_coordinator(url: str, execution_id: str, store_dir: str, go: Any, results: Any) -> None:
    """One coordinator, as on its own machine: run an execution in ``url``."""
    try:

        def task(item: int) -> None:
            if item == PAUSE_AT and not go.wait(timeout=WAIT):
                raise TimeoutError("the reader never said go")
            fail_on_multiples_of_seven(item)

        with Pylo.local_multithread(
            store_dir, 2, store=url, task_executions_before_flush=50, flush_seconds=0.05
        ) as pylo:
            pylo.start_from_scratch(range(N_INPUTS), task, execution_id=execution_id)
        results.put(("ok", execution_id))
    except BaseException:
        results.put(("error", execution_id + ": " + traceback.format_exc()))


def check_snapshot(pylo: Pylo, execution_id: str, last: dict[str, tuple[int, int]]) -> None:
    """Read one execution while it may be running; check what every snapshot must satisfy."""
    record = pylo.get_execution(execution_id)
    finished, unfinished = pylo.get_state(execution_id)
    # Rules 1 and 2 hold in every snapshot: each recorded input in exactly one
    # state, in input order, and an input that always fails is never finished.
    assert finished == sorted(finished) and unfinished == sorted(unfinished)
    assert not set(finished) & set(unfinished)
    if record.inputs_complete:
        assert sorted(finished + unfinished) == list(range(N_INPUTS))
    else:
        assert set(finished) | set(unfinished) <= set(range(N_INPUTS))
    assert not any(item % 7 == 0 for item in finished)
    assert record.finished + record.failed <= record.total <= N_INPUTS
    # Counts only grow from one read to the next; the states, read after the
    # record, are at least as far along.
    counts = (record.finished, record.failed)
    before = last.get(execution_id, (0, 0))
    assert counts[0] >= before[0] and counts[1] >= before[1], (execution_id, before, counts)
    assert len(finished) >= record.finished
    last[execution_id] = counts


def test_coordinators_on_several_machines_share_one_store_while_a_reader_polls(store_url: str, tmp_path: Path) -> None:
    ids = [f"machine-{number}" for number in range(3)]
    go = SPAWN.Event()
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=run_coordinator, args=(store_url, execution_id, str(tmp_path / execution_id), go, results))
        for execution_id in ids
    ]
    for process in processes:
        process.start()
    try:
        with Pylo.local_multithread(tmp_path / "reader", 1, store=store_url) as reader:
            last: dict[str, tuple[int, int]] = {}
            # Phase 1: every coordinator is paused mid-run; the reader must see
            # all three executions running, with outcomes flushed.
            deadline = time.monotonic() + WAIT
            while True:
                records = {record.id: record for record in reader.list_executions()}
                for execution_id in records:
                    check_snapshot(reader, execution_id, last)
                live = [
                    record
                    for record in records.values()
                    if record.status is ExecutionStatus.RUNNING and record.finished > 0 and record.failed > 0
                ]
                if len(live) == len(ids):
                    break
                assert time.monotonic() < deadline, f"never saw every execution running: {records}"
                time.sleep(0.02)
            assert sorted(records) == ids
            assert {record.pid for record in records.values()} == {process.pid for process in processes}
            go.set()
            # Phase 2: keep reading while they finish.
            while not all(record.status is ExecutionStatus.COMPLETED for record in reader.list_executions()):
                for execution_id in ids:
                    check_snapshot(reader, execution_id, last)
                assert time.monotonic() < deadline + WAIT, "the coordinators never finished"
                time.sleep(0.02)
            outcomes = sorted(results.get(timeout=WAIT) for _ in ids)
            assert outcomes == [("ok", execution_id) for execution_id in ids], outcomes
            failing = [item for item in range(N_INPUTS) if item % 7 == 0]
            for execution_id in ids:
                assert reader.get_state(execution_id) == ([x for x in range(N_INPUTS) if x % 7], failing)
                assert [str(exc) for exc in reader.get_exceptions(execution_id)] == [
                    f"bad input {item}" for item in failing
                ]
                record = reader.get_execution(execution_id)
                assert (record.total, record.finished, record.failed) == (
                    N_INPUTS,
                    N_INPUTS - len(failing),
                    len(failing),
                )
    finally:
        go.set()
        for process in processes:
            process.join(timeout=WAIT)
            if process.is_alive():
                process.kill()
                process.join(timeout=WAIT)
    assert [process.exitcode for process in processes] == [0] * len(processes)


# -- a coordinator killed for real ------------------------------------------------------


def run_and_hang(url: str, store_dir: str) -> None:
    """Run an execution whose lanes hang at PAUSE_AT until the process is killed."""
    # An event of this process only: a process-shared one that a killed
    # process was waiting on would hang whoever sets it next.
    never = threading.Event()

    def task(item: int) -> None:
        if item >= PAUSE_AT:
            never.wait(timeout=WAIT)
        fail_on_multiples_of_seven(item)

    pylo = Pylo.local_multithread(store_dir, 2, store=url, task_executions_before_flush=50, flush_seconds=0.05)
    pylo.start_from_scratch(range(N_INPUTS), task, execution_id="victim")


def test_an_execution_killed_mid_run_is_crashed_and_resumable_from_another_process(
    store_url: str, tmp_path: Path
) -> None:
    child = SPAWN.Process(target=run_and_hang, args=(store_url, str(tmp_path / "victim")))
    child.start()
    try:
        with Pylo.local_multithread(tmp_path / "rescuer", 2, store=store_url) as rescuer:
            deadline = time.monotonic() + WAIT
            while not any(record.finished > 0 for record in rescuer.list_executions()):
                assert child.is_alive(), "the coordinator ended before it could be killed"
                assert time.monotonic() < deadline, "the coordinator never flushed"
                time.sleep(0.02)
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            child.join(timeout=WAIT)
            assert child.exitcode == -signal.SIGKILL

            assert rescuer.get_execution("victim").status is ExecutionStatus.CRASHED
            finished, unfinished = rescuer.get_state("victim")
            assert sorted(finished + unfinished) == list(range(N_INPUTS))
            assert finished and max(finished) < PAUSE_AT

            rerun: list[int] = []
            resumed = rescuer.start_from_past_execution("victim", rerun.append)
            assert sorted(rerun) == unfinished
            assert rescuer.get_state(resumed) == (list(range(N_INPUTS)), [])
            assert rescuer.get_execution("victim").status is ExecutionStatus.CRASHED
    finally:
        if child.is_alive():
            child.kill()
        child.join(timeout=WAIT)


# -- first use of a brand-new database by several processes at once ---------------------


@pytest.fixture
def new_database_url(postgres_url: str) -> Iterator[str]:
    """The URL of a database that is created empty for the test and dropped after it."""
    name = "pylo_new_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as connection:
            try:
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
            except sa.exc.ProgrammingError as exc:
                pytest.skip(f"the test role may not create databases: {exc.orig}")
        yield sa.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def open_and_run(url: str, store_dir: str, execution_id: str, barrier: Any, results: Any) -> None:
    """Wait for the others, then open the store (creating its tables) and run an execution."""
    try:
        barrier.wait(timeout=WAIT)
        with Pylo.local_multithread(store_dir, 2, store=url) as pylo:
            pylo.start_from_scratch(range(100), fail_on_multiples_of_seven, execution_id=execution_id)
        results.put(("ok", execution_id))
    except BaseException:
        results.put(("error", execution_id + ": " + traceback.format_exc()))


def test_processes_opening_a_new_database_at_once_create_its_tables_once(new_database_url: str, tmp_path: Path) -> None:
    count = 6
    ids = [f"first-{number}" for number in range(count)]
    barrier = SPAWN.Barrier(count)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=open_and_run, args=(new_database_url, str(tmp_path / execution_id), execution_id, barrier, results)
        )
        for execution_id in ids
    ]
    for process in processes:
        process.start()
    try:
        outcomes = sorted(results.get(timeout=WAIT) for _ in ids)
    finally:
        for process in processes:
            process.join(timeout=WAIT)
            if process.is_alive():
                process.kill()
                process.join(timeout=WAIT)
    assert outcomes == [("ok", execution_id) for execution_id in ids], outcomes
    assert [process.exitcode for process in processes] == [0] * count

    engine = sa.create_engine(new_database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            meta = connection.execute(sa.text("SELECT key, value FROM pylo_meta ORDER BY key")).all()
            tables = sa.inspect(connection).get_table_names()
    finally:
        engine.dispose()
    assert [tuple(row) for row in meta] == [("format", "pylo-sql"), ("version", "1")]
    # The runs' first flushes made the optional chunk rows table, once, as they raced.
    assert sorted(tables) == [
        "pylo_batches",
        "pylo_chunks",
        "pylo_executions",
        "pylo_failures",
        "pylo_meta",
        "pylo_results",
    ]
    with Pylo.local_multithread(tmp_path / "check", 1, store=new_database_url) as pylo:
        assert sorted(record.id for record in pylo.list_executions()) == ids
        for execution_id in ids:
            assert pylo.get_state(execution_id)[1] == [item for item in range(100) if item % 7 == 0]


def test_large_values_are_compressed_with_lz4_and_read_back_whole(store_url: str, tmp_path: Path) -> None:
    # pglz, the server's default, took about 0.6 ms a row for batches of pickled
    # numbers; pylo's sessions ask for LZ4 (when the server has it, as this one does).
    inputs = list(range(500_000, 503_000))  # batches of kilobytes: above the server's inline limit
    with Pylo.local_multithread(None, 2, store=store_url, progress=False, store_results=True) as pylo:
        execution_id = pylo.start_from_scratch(inputs, str)
        assert pylo.get_results(execution_id) == [(item, str(item)) for item in inputs]
        store = pylo.store
        assert isinstance(store, SQLStore)
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW default_toast_compression").scalar() == "lz4"
            methods = conn.exec_driver_sql("SELECT DISTINCT pg_column_compression(payload) FROM pylo_batches")
            assert {method for (method,) in methods} - {None} == {"lz4"}


class _ServerWithoutLz4:
    """A driver connection (and its cursor) to a server without LZ4: before PostgreSQL 14, or built without it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def cursor(self) -> _ServerWithoutLz4:
        return self

    def execute(self, sql: str) -> None:
        self.calls.append(sql)
        raise ValueError('invalid value for parameter "default_toast_compression": "lz4"')

    def commit(self) -> None:
        self.calls.append("commit")

    def rollback(self) -> None:
        self.calls.append("rollback")

    def close(self) -> None:
        self.calls.append("close")


def test_a_server_without_lz4_keeps_its_own_compression_and_the_connection_opens() -> None:
    connection = _ServerWithoutLz4()
    on_postgres_connect(connection, None)
    assert connection.calls == ["SET default_toast_compression = 'lz4'", "rollback", "close"]


# -- small flushes in one message (pylo.stores._sqlmessage) ---------------------------------


def _new_execution(store: SQLStore, execution_id: str) -> None:
    """A running execution of 8 recorded inputs, in one batch."""
    now = time.time()
    running = ExecutionStatus.RUNNING
    store.create_execution(ExecutionRecord(execution_id, None, execution_id, running, now, now, None, "t:w", "pickle"))
    store.add_batches(execution_id, [BatchRecord(0, 0, 8, bytes([PENDING]) * 8, b"inputs")])


def _warm(store: SQLStore, execution_id: str) -> None:
    """Two flushes: the first creates pylo_chunks and the second notes it, as any execution's first flushes do."""
    store.record_flush(execution_id, _small_flush(1))
    store.record_flush(execution_id, _small_flush(2))


def _small_flush(finished: int) -> Flush:
    """Inputs ``[0, finished)`` finished by worker 0: counts, a batch's states and a chunk row."""
    states = bytes([FINISHED]) * finished + bytes([PENDING]) * (8 - finished)
    return Flush(
        states={0: states}, failures=[], results=[], total=8, finished=finished, failed=0,
        chunks=[ChunkRow(finished - 1, finished - 1, 0)],
    )  # fmt: skip


def _prepared_here(store: SQLStore) -> set[str]:
    """The names pylo prepared on the pool's connection (the only one a test on one thread uses)."""
    with _pooled(store) as raw:
        return raw.info.setdefault("pylo_prepared", set())


@contextlib.contextmanager
def _pooled(store: SQLStore) -> Iterator[Any]:
    """The pool's connection, given back at the end."""
    raw = store._engine.raw_connection()
    try:
        yield raw
    finally:
        raw.close()


def test_a_small_flush_goes_in_one_message_and_the_connection_goes_back_to_transactions(store_url: str) -> None:
    with SQLStore(store_url) as store:
        _new_execution(store, "e")
        _warm(store, "e")
        assert _prepared_here(store) == set()
        assert _sqlmessage.fits(_small_flush(3))
        for finished in range(3, 6):
            store.record_flush("e", _small_flush(finished))
        assert len(_prepared_here(store)) == 3  # counts, states, chunk: prepared once, executed three times
        record = store.get_execution("e")
        assert (record.finished, record.failed) == (5, 0)
        assert [batch.states for batch in store.read_batches("e")] == [bytes([FINISHED]) * 5 + bytes([PENDING]) * 3]
        assert [row.last_position for row in store.read_chunks("e")] == [0, 1, 2, 3, 4]
        with _pooled(store) as raw:
            assert raw.driver_connection.autocommit is False  # SQLAlchemy's transactions work as before


def test_a_small_flush_of_a_missing_execution_writes_nothing(store_url: str) -> None:
    # The check of the counts comes after the commit in one message: every
    # statement must write nothing on its own, pylo_chunks' row included.
    with SQLStore(store_url) as store:
        _new_execution(store, "e")
        _warm(store, "e")
        with pytest.raises(ExecutionNotFound):
            store.record_flush("missing", _small_flush(3))
        assert len(_prepared_here(store)) == 3  # it went in one message
        with store._engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT execution_id, last_position FROM pylo_chunks ORDER BY 1, 2").all()
        assert [tuple(row) for row in rows] == [("e", 0), ("e", 1)]


def test_a_session_that_lost_its_prepared_statements_writes_anyway_and_prepares_again(store_url: str) -> None:
    # As behind a pooler that hands out another session: EXECUTE fails, nothing
    # is written, the flush runs again the usual way, and the next prepares anew.
    with SQLStore(store_url) as store:
        _new_execution(store, "e")
        _warm(store, "e")
        store.record_flush("e", _small_flush(3))
        assert len(_prepared_here(store)) == 3
        with store._engine.connect() as conn:
            conn.exec_driver_sql("DEALLOCATE ALL")
            conn.commit()
        store.record_flush("e", _small_flush(4))
        assert _prepared_here(store) == set()
        store.record_flush("e", _small_flush(5))
        assert len(_prepared_here(store)) == 3
        _prepared_here(store).clear()  # forgotten here, still in the session: "already exists" is fine
        store.record_flush("e", _small_flush(6))
        assert len(_prepared_here(store)) == 3
        assert store.get_execution("e").finished == 6
        assert [row.last_position for row in store.read_chunks("e")] == [0, 1, 2, 3, 4, 5]


def test_a_flush_with_failures_or_many_rows_is_pipelined_as_before(store_url: str) -> None:
    failure = FailureRow(2, "builtins.ValueError", "bad", "Traceback ...", None, 1, 0, time.time())
    with_failure = Flush(
        states={0: bytes([FINISHED]) * 2 + bytes([2]) + bytes([PENDING]) * 5},
        failures=[failure], results=[], total=8, finished=2, failed=1,
    )  # fmt: skip
    many_chunks = Flush(
        states={0: bytes([FINISHED]) * 8}, failures=[], results=[], total=8, finished=8, failed=0,
        chunks=[ChunkRow(position, position, 0) for position in range(8)],
    )  # fmt: skip
    assert not _sqlmessage.fits(with_failure) and not _sqlmessage.fits(many_chunks)
    with SQLStore(store_url) as store:
        _new_execution(store, "e")
        _warm(store, "e")
        store.record_flush("e", with_failure)
        _new_execution(store, "f")
        store.record_flush("f", many_chunks)
        assert _prepared_here(store) == set()
        assert store.get_execution("e").failed == 1 and store.get_execution("f").finished == 8
        assert len(store.read_chunks("f")) == 8


def test_prepared_statements_number_named_values_once_each_in_order() -> None:
    statement = _sqlmessage._Prepared("UPDATE t SET a = %(a)s::INTEGER, b = %(b)s WHERE id = %(id)s AND a < %(a)s")
    numbered = "UPDATE t SET a = $1::INTEGER, b = $2 WHERE id = $3 AND a < $1"
    assert statement.prepare == f"PREPARE {statement.name} AS {numbered}"
    assert statement.names == ("a", "b", "id")
    assert statement.execute == f"EXECUTE {statement.name}(%s, %s, %s)"
    assert statement.name.startswith("pylo_") and statement.name != _sqlmessage._Prepared("SELECT 1").name
