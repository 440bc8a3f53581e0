"""A store written before stop reasons were recorded opens, says why its executions stopped, and resumes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from pylo import ExecutionStatus, Pylo
from pylo.stores import open_store

BEFORE = Path(__file__).resolve().parent / "before_stop_reasons"


def fail_odd(item: int) -> int:
    if item % 2:
        raise ValueError(f"odd {item}")
    return item


@pytest.fixture(params=["sqlite", "files"])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    kind = str(request.param)
    shutil.copytree(BEFORE / kind, tmp_path / kind)
    return kind, tmp_path / kind


def test_old_executions_say_why_they_stopped_from_what_was_recorded(old_store: tuple[str, Path]) -> None:
    kind, directory = old_store
    store = open_store(kind, directory, create=False)
    assert {record.stop_reason for record in store.list_executions()} == {None}  # nothing recorded
    with Pylo.local_multithread(None, 1, store=store, progress=False) as pylo:
        reasons = {
            record.id: (record.status, record.stop_reason, record.stop_detail) for record in pylo.list_executions()
        }
    assert reasons == {
        "capped": (ExecutionStatus.STOPPED, "max_failures", "2 failures reached max_failures=2"),
        "spent": (
            ExecutionStatus.STOPPED,
            "max_worker_failures",
            "every worker reached max_worker_failures=1, with 2 failures in all",
        ),
        "cut": (
            ExecutionStatus.INTERRUPTED,
            "interrupted",
            "an interrupt (Ctrl-C, SIGTERM or an exit; which one was not recorded)",
        ),
        "unready": (
            ExecutionStatus.ABORTED,
            "aborted",
            "pylo could not go on (a worker initializer raised, the Dask cluster lost a chunk or had no workers, "
            "or the store refused a write; see the error)",
        ),
    }


def test_an_old_stopped_execution_resumes_and_the_resume_records_its_reason(old_store: tuple[str, Path]) -> None:
    kind, directory = old_store
    with Pylo.local_multithread(directory, 1, store=kind, max_failures=2, progress=False) as pylo:
        resumed = pylo.start_from_past_execution("capped", fail_odd)
        record = pylo.store.get_execution(resumed)  # as stored: recorded, not derived
        assert (record.status, record.stop_reason) == (ExecutionStatus.STOPPED, "max_failures")
        assert record.stop_detail == "2 failures reached max_failures=2"  # its own: a resume inherits none
        assert pylo.get_state("capped")[0] == [0, 2]  # the old execution is left as it was
    if kind == "sqlite":
        with sqlite3.connect(directory / "pylo.sqlite") as connection:
            rows = connection.execute("SELECT execution_id, code FROM pylo_stops").fetchall()
            (version,) = connection.execute("SELECT value FROM pylo_meta WHERE key = 'version'").fetchone()
        assert (rows, version) == ([(resumed, "max_failures")], "1")
    else:
        document = json.loads((directory / "executions" / resumed / "execution.json").read_bytes())
        assert document["stop_reason"] == "max_failures"
