"""The worker contract: the rules of docs/guarantees.md hold on every backend.

Each backend only runs chunks; scheduling, budgets and flushing live in the
coordinator. These tests prove that split: the same rules, the same answers,
on threads, processes (spawn and fork) and asyncio.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from backends import Workers
from contract_tasks import (
    always_fail,
    calls,
    fail_multiples_of_seven,
    flaky,
    interrupt_at,
    lanes_seen,
    logged,
    noop,
    rendezvous,
    square,
    stuck_at,
)

from pylo import ExecutionStatus


def test_every_input_finishes_and_comes_back_in_order(workers: Workers) -> None:
    pylo = workers.make(3)
    execution_id = pylo.start_from_scratch(range(3000), workers.task(noop))
    assert pylo.get_state(execution_id) == (list(range(3000)), [])
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


def test_failures_are_unfinished_and_described_by_position(workers: Workers) -> None:
    pylo = workers.make(2)
    execution_id = pylo.start_from_scratch(range(500), workers.task(fail_multiples_of_seven))
    expected = list(range(0, 500, 7))
    assert pylo.get_state(execution_id)[1] == expected
    failures = pylo.get_failures(execution_id)
    assert [f.input for f in failures] == expected
    assert {f.exception_type for f in failures} == {"ValueError"}
    assert all(f.worker in (0, 1) and f.attempts == 1 for f in failures)
    assert [str(e) for e in pylo.get_exceptions(execution_id)] == [f"bad input {x}" for x in expected]


def test_each_input_runs_once_and_resume_reruns_only_unfinished(workers: Workers, tmp_path: Path) -> None:
    pylo = workers.make(2)
    first_log, second_log = str(tmp_path / "first.log"), str(tmp_path / "second.log")
    past_id = pylo.start_from_scratch(range(400), workers.task(logged, first_log, 9))
    assert Counter(calls(first_log)) == Counter(repr(x) for x in range(400))
    new_id = pylo.start_from_past_execution(past_id, workers.task(logged, second_log, 0))
    assert sorted(calls(second_log), key=int) == [repr(x) for x in range(0, 400, 9)]
    assert pylo.get_state(new_id) == (list(range(400)), [])
    assert pylo.get_execution(new_id).parent_id == past_id


def test_a_worker_stops_after_its_budget_and_others_go_on(workers: Workers) -> None:
    pylo = workers.make(2, max_worker_failures=3)
    execution_id = pylo.start_from_scratch(range(100), workers.task(always_fail))
    failures = pylo.get_failures(execution_id)
    assert Counter(f.worker for f in failures) == {0: 3, 1: 3}
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED and record.pending == 94


def test_max_failures_stops_every_worker(workers: Workers) -> None:
    pylo = workers.make(2, max_failures=4)
    execution_id = pylo.start_from_scratch(range(2000), workers.task(always_fail))
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED
    # A worker busy at that moment may finish its input; on Dask each chunk
    # gets a share of what is left and may spend it before the stop arrives.
    assert 4 <= record.failed <= (4 + 2 if workers.name == "dask" else 5)


def test_store_exceptions_false_keeps_no_exception(workers: Workers) -> None:
    pylo = workers.make(2, store_exceptions=False)
    execution_id = pylo.start_from_scratch(range(30), workers.task(fail_multiples_of_seven))
    assert pylo.get_exceptions(execution_id) == []
    assert [f.input for f in pylo.get_failures(execution_id)] == [0, 7, 14, 21, 28]


def test_results_are_kept_when_asked(workers: Workers) -> None:
    pylo = workers.make(2, store_results=True)
    execution_id = pylo.start_from_scratch(range(50), workers.task(square))
    assert pylo.get_results(execution_id) == [(x, x * x) for x in range(50)]


def test_generators_sets_and_empty_inputs(workers: Workers) -> None:
    pylo = workers.make(2)
    task = workers.task(noop)
    generated = pylo.start_from_scratch((x for x in range(1500)), task)
    assert pylo.get_state(generated) == (list(range(1500)), [])
    from_set = pylo.start_from_scratch({"a", "b", "c"}, task)
    assert sorted(pylo.get_state(from_set)[0]) == ["a", "b", "c"]
    empty = pylo.start_from_scratch([], task)
    assert pylo.get_state(empty) == ([], [])


def test_retries_finish_an_input_that_succeeds_later(workers: Workers, tmp_path: Path) -> None:
    from tenacity import stop_after_attempt

    log = str(tmp_path / "attempts.log")
    pylo = workers.make(2, retry=workers.retrying(stop=stop_after_attempt(3), reraise=True))
    execution_id = pylo.start_from_scratch([1, 2], workers.task(flaky, log, 3))
    assert pylo.get_state(execution_id) == ([1, 2], [])
    gives_up = pylo.start_from_scratch([3], workers.task(flaky, str(tmp_path / "other.log"), 5))
    (failure,) = pylo.get_failures(gives_up)
    assert failure.attempts == 3 and failure.exception_type == "ConnectionError"


def test_a_task_past_its_timeout_fails_and_the_rest_completes(workers: Workers) -> None:
    pylo = workers.make(2, timeout=0.5)
    execution_id = pylo.start_from_scratch(range(60), workers.task(stuck_at, 13, 3.0))
    assert pylo.get_state(execution_id)[1] == [13]
    (failure,) = pylo.get_failures(execution_id)
    assert failure.exception_type == "pylo.errors.TaskTimeout"
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


def test_an_interrupt_from_a_task_is_saved_and_resumable(workers: Workers) -> None:
    pylo = workers.make(2)
    with pytest.raises(KeyboardInterrupt):
        pylo.start_from_scratch(range(2000), workers.task(interrupt_at, 1000), execution_id="cut")
    record = pylo.get_execution("cut")
    assert record.status is ExecutionStatus.INTERRUPTED
    finished, unfinished = pylo.get_state("cut")
    assert 1000 in unfinished and sorted(finished + unfinished) == list(range(2000))
    resumed = pylo.start_from_past_execution("cut", workers.task(noop))
    assert pylo.get_state(resumed) == (list(range(2000)), [])


def test_no_more_lanes_start_than_there_are_inputs(workers: Workers, tmp_path: Path) -> None:
    # Many workers for two inputs: two lanes, however many workers were asked for.
    log = str(tmp_path / "lanes.log")
    pylo = workers.make(12)
    before = frozenset(process.pid for process in psutil.Process().children()) | frozenset(
        thread.ident for thread in threading.enumerate() if thread.ident is not None
    )
    execution_id = pylo.start_from_scratch([0, 1], workers.task(lanes_seen, log, before))
    assert pylo.get_state(execution_id) == ([0, 1], [])
    assert len(calls(log)) == 2
    assert all(int(seen) <= 2 for seen in calls(log))


def test_a_resume_with_nothing_left_to_run_starts_no_workers(workers: Workers, tmp_path: Path) -> None:
    pylo = workers.make(2)
    past = pylo.start_from_scratch(range(5), workers.task(noop))
    log = str(tmp_path / "lanes.log")
    resumed = pylo.start_from_past_execution(past, workers.task(lanes_seen, log, frozenset()))
    assert calls(log) == []
    assert pylo.get_state(resumed) == (list(range(5)), [])
    assert pylo.get_execution(resumed).status is ExecutionStatus.COMPLETED


def test_two_executions_run_at_once_in_one_pylo_each_with_its_own_budgets(workers: Workers, tmp_path: Path) -> None:
    # Started from two threads; input 0 of each waits for input 0 of the other.
    # The first, through with_options, stops each worker at its first failure;
    # the second's workers keep their own budgets and finish everything.
    pylo = workers.make(2)
    strict = pylo.with_options(max_worker_failures=1)
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    errors: list[BaseException] = []

    def run(runner: Any, name: str, mine: str, other: str, fail_from: int) -> None:
        try:
            runner.start_from_scratch(range(60), workers.task(rendezvous, mine, other, fail_from), execution_id=name)
        except BaseException as exc:  # shown by the assertion below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(strict, "first", first, second, 30)),
        threading.Thread(target=run, args=(pylo, "second", second, first, 50)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert pylo.get_failures("first")[0].exception_type == "ValueError"
    record = pylo.get_execution("first")
    assert record.status is ExecutionStatus.STOPPED and 1 <= record.failed <= 2
    assert {f.input for f in pylo.get_failures("second")} == set(range(50, 60))
    assert pylo.get_state("second") == (list(range(50)), list(range(50, 60)))
    assert pylo.get_execution("second").status is ExecutionStatus.COMPLETED
    assert strict.options.max_worker_failures == 1 and pylo.options.max_worker_failures == 1000
