"""Rows of a flush inserted a few statements at a time (``Raw.inserts``), on the SQL stores.

SQLite's driver runs one step per row of an ``executemany`` and lets go of
the interpreter for each, so the SQL store inserts failures, results and
chunk rows as multi-row ``INSERT`` statements there. What must hold: every
row arrives, in any number (more than one statement holds), through a
flush that goes to the driver and one that goes through SQLAlchemy (a
final flush); a position recorded twice is refused with nothing written;
and statements that are not one-row inserts with positional parameters are
left to ``executemany``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from store_kit import StoreFactory, StoreSpec, failure, make_batches, make_record

from pylo.errors import StoreError
from pylo.stores import _sqlraw, _sqlschema
from pylo.stores.base import FAILED, FINISHED, ExecutionStatus, Flush
from pylo.stores.sql import SQLStore

#: Inputs of the execution: more results than one statement binds (333 of 3 values each).
SIZE = 1000


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStore]:
    if request.param == "postgres":
        request.getfixturevalue("postgres_url")  # skips, saying why, without a server
    factory = StoreFactory(StoreSpec(request.param, str(tmp_path)))
    store = factory()
    assert isinstance(store, SQLStore)
    store.create_execution(make_record("e"))
    store.add_batches("e", make_batches("e", [SIZE]))
    yield store
    factory.close_all()


def outcomes(first: int, last: int, *, fail_every: int, final: bool = False) -> Flush:
    """Positions ``[first, last)`` attempted: every ``fail_every``-th fails, the others finish with a result."""
    failed = [position for position in range(first, last) if position % fail_every == 0]
    states = bytearray([FINISHED]) * last
    for position in range(last):
        if position % fail_every == 0:
            states[position] = FAILED
    return Flush(
        states={0: bytes(states) + bytes(SIZE - last)},
        failures=[failure(position) for position in failed],
        results=[(position, f"r{position}".encode()) for position in range(first, last) if position % fail_every],
        total=SIZE,
        finished=last - len([p for p in range(last) if p % fail_every == 0]),
        failed=len([p for p in range(last) if p % fail_every == 0]),
        status=ExecutionStatus.COMPLETED if final else None,
        ended_at=2.0 if final else None,
    )


def test_every_row_of_a_large_flush_arrives_through_the_driver_and_through_a_final_flush(sql_store: SQLStore) -> None:
    sql_store.record_flush("e", outcomes(0, 700, fail_every=3))  # 234 failures, 466 results
    sql_store.record_flush("e", outcomes(700, SIZE, fail_every=3, final=True))
    assert [row.position for row in sql_store.read_failures("e")] == list(range(0, SIZE, 3))
    assert sql_store.read_failures("e")[5] == failure(15)
    results = dict(sql_store.read_results("e"))
    assert sorted(results) == [position for position in range(SIZE) if position % 3]
    assert all(value == f"r{position}".encode() for position, value in results.items())
    record = sql_store.get_execution("e")
    assert (record.finished, record.failed, record.status) == (666, 334, ExecutionStatus.COMPLETED)


def test_a_failure_recorded_twice_is_refused_and_the_flush_writes_nothing(sql_store: SQLStore) -> None:
    sql_store.record_flush("e", outcomes(0, 300, fail_every=2))
    again = outcomes(0, 400, fail_every=2)  # positions 0-298 are recorded already
    with pytest.raises(StoreError):
        sql_store.record_flush("e", again)
    record = sql_store.get_execution("e")
    assert (record.finished, record.failed) == (150, 150)
    assert len(sql_store.read_failures("e")) == 150
    assert len(dict(sql_store.read_results("e"))) == 150


def test_a_one_row_insert_becomes_a_few_statements_binding_at_most_the_limit() -> None:
    statement, keys = _sqlschema.results_statement()
    raw = _sqlraw.Raw.compile(statement, sqlite.dialect(), keys)
    assert raw.names == ("execution_id", "position", "value")
    rows = [("e", position, b"v") for position in range(700)]
    inserts = raw.inserts(rows)
    assert inserts is not None
    assert [len(values) // 3 for _, values in inserts] == [333, 333, 34]
    first_sql, first_values = inserts[0]
    assert first_sql.count("(?, ?, ?)") == 333 and first_sql.startswith(raw.sql)
    assert first_values[:6] == ["e", 0, b"v", "e", 1, b"v"]
    assert [value for _, values in inserts for value in values] == [value for row in rows for value in row]
    assert raw.inserts([]) is None


def test_updates_and_named_parameters_are_left_to_executemany() -> None:
    states = _sqlraw.Raw.compile(_sqlschema.states_statement()[0], sqlite.dialect())
    assert states.inserts([(b"x", "e", 0)]) is None
    statement, keys = _sqlschema.results_statement()
    named = _sqlraw.Raw.compile(statement, postgresql.psycopg.dialect(), keys)
    assert named.names is None and named.inserts([{"execution_id": "e"}]) is None
