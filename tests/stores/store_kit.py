"""Store kinds and process bodies for the store contract suite.

This module is imported by name (``store_kit``) by the processes the tests
spawn, so everything a child runs lives here at module level.

To run the contract suite on another store, add one entry to
:data:`STORE_KINDS`: a function that opens that store for a test, given a
fresh directory of its own (the PostgreSQL entry derives a schema name from
it), and, if the store leaves something outside that directory, one to
:data:`STORE_CLEANUPS`.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pg_server import URL_VARIABLE, create_schema, drop_schema, schema_name, url_with_schema

from pylo.errors import ExecutionExists
from pylo.stores.base import (
    FAILED,
    FINISHED,
    PENDING,
    BatchRecord,
    ExecutionRecord,
    ExecutionStatus,
    FailureRow,
    Flush,
    Store,
)

#: Seconds any wait in a test or a test process may block before failing.
WAIT = 60.0


def _open_sqlite(target: Path) -> Store:
    from pylo.stores.sql import SQLStore

    return SQLStore.sqlite(target / "pylo.sqlite")


def _open_files(target: Path) -> Store:
    from pylo.stores.files import FileStore

    return FileStore(target)


def _open_postgres(target: Path) -> Store:
    from pylo.stores.sql import SQLStore

    # The session fixture ``postgres_url`` puts the server's URL in the
    # environment, where spawned test processes find it too.
    url = os.environ[URL_VARIABLE]
    schema = schema_name(str(target))
    create_schema(url, schema)
    # The schema goes in the URL, the way a user would select one.
    return SQLStore(url_with_schema(url, schema))


def _drop_postgres(target: Path) -> None:
    drop_schema(os.environ[URL_VARIABLE], schema_name(str(target)))


#: Test id -> function that opens that kind of store in a directory of its own.
#: The "postgres" kind needs the ``postgres_url`` fixture (which skips, saying
#: why, when no server can be had).
STORE_KINDS: dict[str, Callable[[Path], Store]] = {
    "sqlite": _open_sqlite,
    "files": _open_files,
    "postgres": _open_postgres,
}

#: Test id -> function that removes what a test's stores left outside its directory.
STORE_CLEANUPS: dict[str, Callable[[Path], None]] = {
    "postgres": _drop_postgres,
}


@dataclass(frozen=True)
class StoreSpec:
    """Enough to open the same store again, in this process or a spawned one."""

    kind: str
    target: str

    def open(self) -> Store:
        return STORE_KINDS[self.kind](Path(self.target))


class StoreFactory:
    """Opens stores on one test's location, and closes them after the test."""

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        self._opened: list[Store] = []
        # Start clean even where an earlier run that died left something.
        self._clean_up()

    @property
    def kind(self) -> str:
        return self.spec.kind

    def __call__(self) -> Store:
        store = self.spec.open()
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            store.close()
        self._clean_up()

    def _clean_up(self) -> None:
        cleanup = STORE_CLEANUPS.get(self.spec.kind)
        if cleanup is not None:
            cleanup(Path(self.spec.target))


def make_record(execution_id: str, **changes: Any) -> ExecutionRecord:
    """A fresh RUNNING execution record; keyword arguments override fields."""
    now = time.time()
    fields: dict[str, Any] = {
        "id": execution_id,
        "parent_id": None,
        "input_source": execution_id,
        "status": ExecutionStatus.RUNNING,
        "created_at": now,
        "updated_at": now,
        "ended_at": None,
        "task_name": "tests.tasks:work",
        "codec": "pickle",
        "pid": 4242,
        "host": "test-host",
        "options": {"number_of_workers": 2, "nested": {"names": ["a", "b"]}},
    }
    fields.update(changes)
    return ExecutionRecord(**fields)


def payload_of(execution_id: str, batch_no: int) -> bytes:
    # Includes NUL and high bytes so that blob handling is exercised.
    return f"{execution_id}/{batch_no}".encode() + b"\x00\xff" * (batch_no + 1)


def make_batches(
    execution_id: str, sizes: list[int], *, first_batch: int = 0, first_position: int = 0, payloads: bool = True
) -> list[BatchRecord]:
    """Pending batches of the given sizes, numbered and positioned contiguously."""
    batches = []
    position = first_position
    for offset, size in enumerate(sizes):
        batch_no = first_batch + offset
        payload = payload_of(execution_id, batch_no) if payloads else None
        batches.append(BatchRecord(batch_no, position, size, bytes([PENDING]) * size, payload))
        position += size
    return batches


def failure(position: int, *, worker: int = 0, full: bool = True) -> FailureRow:
    """A failure record; ``full=False`` leaves every optional field None."""
    if not full:
        return FailureRow(position, None, None, None, None, 1, worker, 1_700_000_000.5 + position)
    return FailureRow(
        position=position,
        exc_type="builtins.ValueError",
        message=f"bad input {position} \u00e9\u2603",
        traceback=f"Traceback (most recent call last):\n  line {position}\nValueError: bad\n",
        exception=b"\x80\x04exc\x00" + bytes([position % 256]),
        attempts=3,
        worker=worker,
        failed_at=1_700_000_000.25 + position,
    )


# -- bodies of spawned processes -------------------------------------------------


def race_create(spec: StoreSpec, execution_id: str, barrier: Any, results: Any) -> None:
    """Open the store, wait for the others, then try to create the same execution."""
    try:
        store = spec.open()
        try:
            barrier.wait(timeout=WAIT)
            try:
                store.create_execution(make_record(execution_id))
            except ExecutionExists:
                results.put("exists")
            else:
                results.put("won")
        finally:
            store.close()
    except BaseException:
        results.put("error: " + traceback.format_exc())


def write_own_execution(spec: StoreSpec, execution_id: str, barrier: Any, results: Any) -> None:
    """Write a whole execution of 12 batches and 12 flushes, starting with the others."""
    try:
        store = spec.open()
        try:
            barrier.wait(timeout=WAIT)
            store.create_execution(make_record(execution_id))
            store.add_batches(execution_id, make_batches(execution_id, [5] * 6))
            store.add_batches(execution_id, make_batches(execution_id, [5] * 6, first_batch=6, first_position=30))
            for batch_no in range(12):
                store.record_flush(
                    execution_id,
                    Flush(
                        states={batch_no: bytes([FINISHED] * 4 + [FAILED])},
                        failures=[failure(batch_no * 5 + 4, worker=batch_no % 3)],
                        results=[(batch_no * 5, b"r%d" % batch_no)],
                        total=60,
                        finished=4 * (batch_no + 1),
                        failed=batch_no + 1,
                        status=ExecutionStatus.COMPLETED if batch_no == 11 else None,
                        ended_at=time.time() if batch_no == 11 else None,
                        inputs_complete=batch_no == 0,
                    ),
                )
        finally:
            store.close()
        results.put(("ok", execution_id))
    except BaseException:
        results.put(("error", execution_id + ": " + traceback.format_exc()))


#: Layout of the execution that :func:`flush_while_read` writes.
LIVE_BATCHES = 4
LIVE_SIZE = 8
LIVE_FLUSHES = 30


def live_flush(number: int) -> Flush:
    """Flush ``number`` (from 1) of the live execution: every batch all FINISHED or all FAILED."""
    state = FINISHED if number % 2 else FAILED
    everything = LIVE_BATCHES * LIVE_SIZE
    last = number == LIVE_FLUSHES
    return Flush(
        states={batch_no: bytes([state]) * LIVE_SIZE for batch_no in range(LIVE_BATCHES)},
        failures=[failure(number - 1)],
        results=[(number - 1, b"result %d" % number)],
        total=everything,
        finished=everything if state == FINISHED else 0,
        failed=everything if state == FAILED else 0,
        status=ExecutionStatus.COMPLETED if last else None,
        ended_at=time.time() if last else None,
        inputs_complete=last,
    )


def flush_while_read(spec: StoreSpec, execution_id: str, go: Any, results: Any) -> None:
    """Once told to go, record :data:`LIVE_FLUSHES` flushes as fast as possible."""
    try:
        store = spec.open()
        try:
            if not go.wait(timeout=WAIT):
                raise TimeoutError("never told to go")
            for number in range(1, LIVE_FLUSHES + 1):
                store.record_flush(execution_id, live_flush(number))
        finally:
            store.close()
        results.put("ok")
    except BaseException:
        results.put("error: " + traceback.format_exc())
