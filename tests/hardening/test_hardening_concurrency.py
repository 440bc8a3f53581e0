"""Several processes run their own executions in one store while another reads it.

docs/guarantees.md, "Several processes, one store": no "database is locked", no lost or mixed-up rows. Each
child flushes every 20 outcomes (and every 50 ms), so the writers contend
for the store hundreds of times while the reader polls it.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hardening_tasks import JOB_FAIL_EVERY, job_inputs, run_job

from pylo import ExecutionStatus, Pylo

JOBS = 3
INPUTS_PER_JOB = 30_000


def _poll_while_running(pylo: Pylo, children: Sequence[multiprocessing.process.BaseProcess]) -> int:
    """Read the store until every child ends; check each answer; return how many polls saw a run."""
    expected = {f"job-{index}": list(job_inputs(index, INPUTS_PER_JOB)) for index in range(JOBS)}
    seen_finished = dict.fromkeys(expected, 0)
    busy_polls = 0
    deadline = time.monotonic() + 240
    while any(child.is_alive() for child in children):
        assert time.monotonic() < deadline, "the jobs did not end in 240 s"
        records = pylo.list_executions()
        assert {record.id for record in records} <= set(expected)
        for record in records:
            assert 0 <= record.finished + record.failed <= record.total <= INPUTS_PER_JOB
            if not record.inputs_complete:
                continue
            finished, unfinished = pylo.get_state(record.id)
            # Every input exactly once, in input order, whatever the moment.
            assert sorted(finished + unfinished) == expected[record.id]
            assert finished == sorted(finished) and unfinished == sorted(unfinished)
            # A flush is never undone: what a reader saw finished stays finished.
            assert len(finished) >= seen_finished[record.id]
            seen_finished[record.id] = len(finished)
            if record.status is ExecutionStatus.RUNNING:
                busy_polls += 1
    return busy_polls


@pytest.mark.slow
@pytest.mark.timeout(280)
@pytest.mark.parametrize("store_name", ["sqlite", "files"])
def test_processes_sharing_a_store_lose_and_mix_up_nothing(tmp_path: Path, store_name: str) -> None:
    store_dir = str(tmp_path / "store")
    reader = Pylo.local_multithread(store_dir, 1, store=store_name, progress=False)
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=run_job, args=(store_dir, store_name, index, INPUTS_PER_JOB)) for index in range(JOBS)
    ]
    for child in children:
        child.start()
    try:
        busy_polls = _poll_while_running(reader, children)
    finally:
        for child in children:
            child.join(60)
            if child.is_alive():
                child.kill()
    assert [child.exitcode for child in children] == [0] * JOBS, "a job failed (see its traceback above)"
    assert busy_polls > 0, "the reader never saw a job running: the test proved nothing"

    records = {record.id: record for record in reader.list_executions()}
    assert sorted(records) == [f"job-{index}" for index in range(JOBS)]
    for index in range(JOBS):
        execution_id = f"job-{index}"
        inputs = list(job_inputs(index, INPUTS_PER_JOB))
        failed = [item for item in inputs if item % JOB_FAIL_EVERY == 0]
        failed_set = set(failed)
        record = records[execution_id]
        assert record.status is ExecutionStatus.COMPLETED
        assert (record.total, record.finished, record.failed) == (
            INPUTS_PER_JOB,
            INPUTS_PER_JOB - len(failed),
            len(failed),
        )
        assert reader.get_state(execution_id) == ([item for item in inputs if item not in failed_set], failed)
        failures = reader.get_failures(execution_id)
        assert [failure.input for failure in failures] == failed
        assert [failure.position for failure in failures] == [item - inputs[0] for item in failed]
        assert all(
            failure.message == f"input {failure.input} is a multiple of {JOB_FAIL_EVERY}" for failure in failures
        )
    reader.close()
