"""Crash tests: a child process running an execution is killed for real."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
from tasks import calls, log_call

from pylo import ExecutionStatus, Pylo

N_INPUTS = 4000


def slow_logged(log_path: str, item: int) -> None:
    log_call(log_path, item)
    time.sleep(0.0005)


def run_victim(store_dir: str, store_name: str, log_path: str) -> None:
    pylo = Pylo.local_multithread(store_dir, 2, store=store_name, task_executions_before_flush=25, flush_seconds=0.05)
    pylo.start_from_scratch(range(N_INPUTS), partial(slow_logged, log_path), execution_id="victim")


def wait_for_lines(path: str, count: int, process: multiprocessing.process.BaseProcess) -> None:
    deadline = time.monotonic() + 60
    while len(calls(path)) < count:
        assert process.is_alive(), "the child ended before it could be killed"
        assert time.monotonic() < deadline, "the child never got going"
        time.sleep(0.01)


@pytest.mark.parametrize("store_name", ["sqlite", "files"])
def test_sigkill_mid_run_loses_nothing_and_resume_finishes_the_rest(tmp_path: Path, store_name: str) -> None:
    store_dir = str(tmp_path / "store")
    ran_before = str(tmp_path / "ran-before.log")
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=run_victim, args=(store_dir, store_name, ran_before))
    child.start()
    try:
        wait_for_lines(ran_before, 600, child)
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL

    pylo = Pylo.local_multithread(store_dir, 2, store=store_name)
    (record,) = pylo.list_executions()
    assert record.status is ExecutionStatus.CRASHED
    assert record.stop_reason == "crashed"  # derived on read, as the status is: the process said nothing
    assert pylo.store.get_execution("victim").stop_reason is None
    finished, unfinished = pylo.get_state("victim")
    # Every input exactly once, in input order.
    assert sorted(finished + unfinished) == list(range(N_INPUTS))
    assert finished == sorted(finished) and unfinished == sorted(unfinished)
    # Finished means it really ran; the kill came part way.
    ran = {int(line) for line in calls(ran_before)}
    assert set(finished) <= ran
    assert 0 < len(finished) < N_INPUTS
    assert record.finished == len(finished)

    ran_after = str(tmp_path / "ran-after.log")
    resumed = pylo.start_from_past_execution("victim", partial(slow_logged, ran_after))
    rerun = Counter(int(line) for line in calls(ran_after))
    assert not set(rerun) & set(finished), "an input the snapshot marked finished ran again"
    assert sorted(rerun) == unfinished and max(rerun.values()) == 1
    assert pylo.get_state(resumed) == (list(range(N_INPUTS)), [])
    assert pylo.get_execution(resumed).status is ExecutionStatus.COMPLETED
    pylo.close()
