"""A store written by the previous release (no labels, no claims) opens, reads and resumes unchanged."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from pylo import ExecutionStatus, Pylo
from pylo.stores import open_store

PREVIOUS = Path(__file__).resolve().parent / "previous_release"
EVERYTHING = list(range(100))
FAILED = [x for x in EVERYTHING if x % 7 == 0]


def double(item: int) -> int:
    return item * 2


@pytest.fixture(params=["sqlite", "files"])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    kind = str(request.param)
    shutil.copytree(PREVIOUS / kind, tmp_path / kind)
    return kind, tmp_path / kind


def test_an_old_store_reads_as_before_and_readers_change_nothing(old_store: tuple[str, Path]) -> None:
    kind, directory = old_store
    before = sorted((path.relative_to(directory), path.read_bytes()) for path in directory.rglob("*") if path.is_file())
    with Pylo.local_multithread(None, 1, store=open_store(kind, directory, create=False), progress=False) as pylo:
        assert [record.id for record in pylo.list_executions()] == ["first", "second"]
        assert pylo.get_execution("first").labels == {}
        assert pylo.list_executions(labels={"job": "any"}) == []
        assert pylo.get_state("first") == ([x for x in EVERYTHING if x % 7], FAILED)
        assert [f.position for f in pylo.get_failures("first")] == FAILED
        assert pylo.get_state("second") == (EVERYTHING, [])
        assert pylo.get_results("second") == [(x, x * 2) for x in EVERYTHING]
        assert [record.id for record in pylo.lineage("first")] == ["first", "second"]
    assert open_store(kind, directory, create=False).read_chunks("first") == []  # kept since: none recorded
    after = sorted((path.relative_to(directory), path.read_bytes()) for path in directory.rglob("*") if path.is_file())
    if kind == "files":  # SQLite may add its -wal/-shm files beside the database
        assert after == before


def test_an_old_store_takes_labelled_executions_and_claims(old_store: tuple[str, Path]) -> None:
    kind, directory = old_store
    with Pylo.local_multithread(directory, 2, store=kind, progress=False) as pylo:
        resumed = pylo.start_from_past_execution("first", double, labels={"job": "catch-up"})
        assert pylo.get_execution(resumed).status is ExecutionStatus.COMPLETED
        assert [record.id for record in pylo.list_executions(labels={"job": "catch-up"})] == [resumed]
        assert pylo.get_state("first") == ([x for x in EVERYTHING if x % 7], FAILED)
    # Its first flush added what the old store lacked: the worker of each run of positions.
    assert {row.worker for row in open_store(kind, directory, create=False).read_chunks(resumed)} <= {0, 1}
    assert open_store(kind, directory, create=False).read_chunks(resumed) != []
    if kind == "sqlite":
        with sqlite3.connect(directory / "pylo.sqlite") as connection:
            (version,) = connection.execute("SELECT value FROM pylo_meta WHERE key = 'version'").fetchone()
        assert version == "1"
