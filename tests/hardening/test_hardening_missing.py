"""Rows and files deleted from a store are reported, never answered around (issue 9 items 7 and 8).

Every read checks what it got against the counts it knows: a missing batch
row, deleted failure records, a deleted parent or a deleted execution
directory is a StoreError naming what is missing, never a shorter answer,
an ``IndexError`` or a resume that half starts.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from contract_tasks import fail_multiples_of_seven, noop

from pylo import Pylo, StoreError
from pylo.errors import DamagedExecutions

INPUTS = list(range(3000))


def sqlite_pylo(store_dir: Path, **options: object) -> Pylo:
    return Pylo.local_multithread(store_dir, 2, progress=False, **options)  # type: ignore[arg-type]


def run_sql(store_dir: Path, *statements: str) -> None:
    with sqlite3.connect(store_dir / "pylo.sqlite") as connection:
        for statement in statements:
            assert connection.execute(statement).rowcount > 0, statement


def pylo_command(store_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pylo", *args, "--store", str(store_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_error(completed: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert completed.returncode == 2, completed
    assert completed.stdout == ""
    assert len(completed.stderr.splitlines()) == 1, completed.stderr
    for text in expected:
        assert text in completed.stderr, completed.stderr


@pytest.mark.parametrize("batch", ["first", "middle", "last"])
def test_a_missing_batch_row_is_a_store_error_for_every_read_and_resume(tmp_path: Path, batch: str) -> None:
    store_dir = tmp_path / "store"
    with sqlite_pylo(store_dir) as pylo:
        pylo.start_from_scratch(iter(INPUTS), fail_multiples_of_seven, execution_id="holed")
    with sqlite3.connect(store_dir / "pylo.sqlite") as connection:
        (batches,) = connection.execute("SELECT count(*) FROM pylo_batches").fetchone()
    assert batches >= 3
    number = {"first": 0, "middle": 1, "last": batches - 1}[batch]
    run_sql(store_dir, f"DELETE FROM pylo_batches WHERE execution_id = 'holed' AND batch_no = {number}")
    with sqlite_pylo(store_dir) as pylo:
        for read in (pylo.get_state, pylo.get_failures):
            with pytest.raises(StoreError, match=r"execution 'holed' in the store at .* is damaged: .*batch"):
                read("holed")
        with pytest.raises(StoreError, match=r"'holed'.* is damaged"):
            pylo.start_from_past_execution("holed", noop, execution_id="resumed")
        assert [record.id for record in pylo.list_executions()] == ["holed"], "the refused resume left an execution"
    assert_one_line_error(pylo_command(store_dir, "inputs", "holed"), "execution 'holed'", "is damaged")


def test_deleted_failure_records_are_a_store_error(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    with sqlite_pylo(store_dir) as pylo:
        pylo.start_from_scratch(INPUTS, fail_multiples_of_seven, execution_id="lost")
    run_sql(store_dir, "DELETE FROM pylo_failures WHERE execution_id = 'lost'")
    with sqlite_pylo(store_dir) as pylo:
        assert pylo.get_execution("lost").failed == 429
        for read in (pylo.get_failures, pylo.get_exceptions):
            with pytest.raises(StoreError, match="it has 0 failure records for its 429 failed inputs"):
                read("lost")
    assert_one_line_error(pylo_command(store_dir, "failures", "lost"), "0 failure records for its 429 failed inputs")


def test_one_deleted_failure_record_is_named(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    with sqlite_pylo(store_dir) as pylo:
        pylo.start_from_scratch(INPUTS, fail_multiples_of_seven, execution_id="lost")
        pylo.start_from_past_execution("lost", noop, execution_id="later")
    # Another execution's extra row must not make up for the missing one.
    run_sql(
        store_dir,
        "DELETE FROM pylo_failures WHERE execution_id = 'lost' AND position = 14",
        "INSERT INTO pylo_failures SELECT 'lost', 3000, exc_type, message, traceback, exception, attempts, worker,"
        " failed_at FROM pylo_failures WHERE execution_id = 'lost' AND position = 7",
    )
    with sqlite_pylo(store_dir) as pylo, pytest.raises(StoreError, match="3000, which is none of its inputs"):
        pylo.get_failures("lost")
    run_sql(store_dir, "DELETE FROM pylo_failures WHERE execution_id = 'lost' AND position = 3000")
    run_sql(
        store_dir,
        "INSERT INTO pylo_failures SELECT 'lost', 15, exc_type, message, traceback, exception, attempts, worker,"
        " failed_at FROM pylo_failures WHERE execution_id = 'lost' AND position = 7",
    )
    with sqlite_pylo(store_dir) as pylo, pytest.raises(StoreError, match="input #14 failed but has no failure record"):
        pylo.get_failures("lost")


def test_a_deleted_parent_is_a_store_error_for_the_results_of_its_resumes(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    with sqlite_pylo(store_dir, store_results=True) as pylo:
        pylo.start_from_scratch(INPUTS, fail_multiples_of_seven, execution_id="root")
        pylo.start_from_past_execution("root", fail_multiples_of_seven, execution_id="middle")
        pylo.start_from_past_execution("middle", noop, execution_id="child")
        assert len(pylo.get_results("child")) == 3000
    run_sql(
        store_dir,
        "DELETE FROM pylo_batches WHERE execution_id = 'middle'",
        "DELETE FROM pylo_executions WHERE id = 'middle'",
    )
    with sqlite_pylo(store_dir) as pylo:
        with pytest.raises(StoreError, match="resumed execution 'middle', which is missing from the store"):
            pylo.get_results("child")
        assert pylo.get_state("child") == (INPUTS, [])  # its inputs are the root's, which is there
    assert_one_line_error(pylo_command(store_dir, "inputs", "child", "--results"), "'middle', which is missing")


def test_a_deleted_execution_directory_reports_its_resumes_damaged_everywhere(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    with Pylo.local_multithread(store_dir, 2, store="files", progress=False) as pylo:
        pylo.start_from_scratch(INPUTS, fail_multiples_of_seven, execution_id="root")
        pylo.start_from_past_execution("root", fail_multiples_of_seven, execution_id="child")
        pylo.start_from_scratch(range(5), noop, execution_id="other")
    shutil.rmtree(store_dir / "executions" / "root")
    expected = "its inputs are kept by execution 'root', which is missing from the store"
    with Pylo.local_multithread(store_dir, 2, store="files", progress=False) as pylo:
        with pytest.raises(DamagedExecutions, match=expected) as caught:
            pylo.list_executions()
        assert [record.id for record in caught.value.executions] == ["other"]
        assert list(caught.value.damaged) == ["child"]
        for read in (pylo.get_execution, pylo.get_state, pylo.get_failures):
            with pytest.raises(StoreError, match=expected):
                read("child")
        with pytest.raises(StoreError, match=expected):
            pylo.start_from_past_execution("child", noop, execution_id="again")
        assert not (store_dir / "executions" / "again").exists()
        assert pylo.get_state("other") == (list(range(5)), [])
    assert_one_line_error(pylo_command(store_dir, "show", "child"), expected)
    listed = pylo_command(store_dir, "list")
    assert listed.returncode == 2 and expected in listed.stderr, listed
