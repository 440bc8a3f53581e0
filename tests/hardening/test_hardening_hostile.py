"""Hostile tasks and inputs on every backend: none may corrupt the snapshot or hang the run.

Exceptions that cannot be pickled or rebuilt, huge messages and inputs,
RecursionError and MemoryError, a task's own BaseException, and tasks that
flood stdout and stderr. Each test checks the snapshot exactly afterwards.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from backends import Workers
from contract_tasks import calls, logged
from hardening_tasks import (
    StopTheRun,
    length_of,
    noisy,
    raise_huge_message,
    raise_memory_error,
    recurse_forever,
    stop_at,
)
from tasks import NeedsArguments, Unpicklable, raise_needs_arguments, raise_unpicklable

from pylo import ExecutionStatus, Pylo, StoredTaskError
from pylo.stores.files import FileStore

MB = 1 << 20


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("task", "kind", "message"),
    [
        (raise_unpicklable, Unpicklable, "cannot pickle me (3)"),
        (raise_needs_arguments, NeedsArguments, "code 7: input 3"),
    ],
    ids=["cannot-be-pickled", "constructor-needs-arguments"],
)
def test_exceptions_that_cannot_be_kept_come_back_as_stored_task_errors(
    workers: Workers, task: Any, kind: type, message: str
) -> None:
    pylo = workers.make(2)
    execution_id = pylo.start_from_scratch(range(10), workers.task(task))
    assert pylo.get_state(execution_id) == ([], list(range(10)))
    failures = pylo.get_failures(execution_id)
    assert [failure.input for failure in failures] == list(range(10))
    failure = failures[3]
    assert failure.exception_type == f"{kind.__module__}.{kind.__qualname__}"
    assert failure.message == message
    assert isinstance(failure.exception, StoredTaskError)
    assert failure.exception.type_name == failure.exception_type
    assert kind.__name__ in (failure.traceback or "")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_20_mb_exception_message_is_kept_and_the_rest_runs(workers: Workers) -> None:
    size = 20 * MB
    pylo = workers.make(2)
    execution_id = pylo.start_from_scratch(range(200), workers.task(raise_huge_message, 7, size))
    assert pylo.get_state(execution_id) == ([item for item in range(200) if item != 7], [7])
    (failure,) = pylo.get_failures(execution_id)
    assert failure.exception_type == "ValueError"
    assert failure.message is not None and len(failure.message) == size
    assert isinstance(failure.exception, ValueError) and len(str(failure.exception)) == size
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_10_mb_inputs_are_recorded_run_and_read_back_whole(workers: Workers) -> None:
    inputs = [bytes([n]) * (10 * MB) for n in range(3)] + [b"small"]
    pylo = workers.make(2, store_results=True)
    execution_id = pylo.start_from_scratch(inputs, workers.task(length_of))
    finished, unfinished = pylo.get_state(execution_id)
    assert unfinished == [] and finished == inputs
    assert [result for _, result in pylo.get_results(execution_id)] == [10 * MB] * 3 + [5]


@pytest.mark.timeout(120)
def test_recursion_error_fails_only_its_input(workers: Workers) -> None:
    pylo = workers.make(2)
    execution_id = pylo.start_from_scratch(range(20), workers.task(recurse_forever))
    odd = list(range(1, 20, 2))
    assert pylo.get_state(execution_id) == (list(range(0, 20, 2)), odd)
    failures = pylo.get_failures(execution_id)
    assert {failure.exception_type for failure in failures} == {"RecursionError"}
    # The traceback is kept, however deep the recursion went.
    assert all("RecursionError" in (failure.traceback or "") for failure in failures)
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


@pytest.mark.timeout(120)
def test_memory_error_fails_only_its_input(workers: Workers) -> None:
    pylo = workers.make(2)
    execution_id = pylo.start_from_scratch(range(20), workers.task(raise_memory_error))
    assert pylo.get_state(execution_id) == (list(range(0, 20, 2)), list(range(1, 20, 2)))
    assert [f.exception_type for f in pylo.get_failures(execution_id)] == ["MemoryError"] * 10
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


@pytest.mark.timeout(120)
def test_a_base_exception_of_the_task_interrupts_saves_and_resumes(workers: Workers, tmp_path: Path) -> None:
    """docs/guarantees.md, Interrupts: a BaseException that is not an Exception interrupts like Ctrl-C."""
    total, target = 2000, 700
    pylo = workers.make(3, task_executions_before_flush=50)
    ran = str(tmp_path / "ran.log")
    with pytest.raises(StopTheRun, match=f"stopped at input {target}"):
        pylo.start_from_scratch(range(total), workers.task(stop_at, ran, target), execution_id="stopped")
    record = pylo.get_execution("stopped")
    assert record.status is ExecutionStatus.INTERRUPTED
    finished, unfinished = pylo.get_state("stopped")
    assert sorted(finished + unfinished) == list(range(total))
    assert target in unfinished and record.failed == 0
    completed = Counter(int(line) for line in calls(ran))
    assert set(finished) <= set(completed), "an input is marked finished that never completed"
    assert finished, "nothing was saved before the interrupt"

    rerun_log = str(tmp_path / "rerun.log")
    resumed = pylo.start_from_past_execution("stopped", workers.task(logged, rerun_log, 0))
    rerun = Counter(int(line) for line in calls(rerun_log))
    assert sorted(rerun) == unfinished and max(rerun.values()) == 1
    assert pylo.get_state(resumed) == (list(range(total)), [])
    assert pylo.get_state("stopped") == (finished, unfinished), "the resume changed its parent"


@pytest.mark.timeout(120)
def test_tasks_that_flood_stdout_and_stderr_do_not_disturb_the_run(
    workers: Workers, capfd: pytest.CaptureFixture[str]
) -> None:
    pylo = workers.make(2)
    execution_id = pylo.start_from_scratch(range(16), workers.task(noisy, MB // 2))
    captured = capfd.readouterr()
    assert pylo.get_state(execution_id) == (list(range(16)), [])
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED
    if workers.name != "dask":
        # Dask's worker processes were started before capfd took over the
        # file descriptors, so what they print goes past it, to the real ones.
        assert len(captured.out) >= 16 * MB // 2 and len(captured.err) >= 16 * MB // 2


# -- an interrupt while other lanes' results wait ------------------------------------------


class _SlowFlushStore(FileStore):
    """A file store whose flushes take long, so lane results pile up meanwhile."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.flushing = threading.Event()

    def record_flush(self, execution_id: str, flush: Any) -> None:
        if flush.states:  # a flush of outcomes, not the one that ends recording the inputs
            self.flushing.set()
            # Long enough for the other lane to end a chunk after the interrupt.
            threading.Event().wait(0.6)
        super().record_flush(execution_id, flush)


@pytest.mark.timeout(60)
def test_an_interrupt_saves_what_the_other_workers_reported_with_it(tmp_path: Path) -> None:
    """Results that reach the coordinator in the same poll as an interrupt are saved too.

    Lane 0 raises at input 3 while the coordinator is busy in a flush; lane 1
    ends a chunk meanwhile, so both results wait in one poll. Every input
    whose task completed must be finished in the snapshot.
    """
    store = _SlowFlushStore(tmp_path / "store")
    ran = str(tmp_path / "ran.log")

    def task(item: int) -> None:
        if item == 3:
            assert store.flushing.wait(10), "no flush started"
            raise StopTheRun("stop")
        threading.Event().wait(0.05)
        logged(ran, 0, item)

    pylo = Pylo.local_multithread(tmp_path / "unused", 2, store=store, flush_seconds=0.2, progress=False)
    with pytest.raises(StopTheRun):
        pylo.start_from_scratch(range(64), task, execution_id="e")
    finished, _ = pylo.get_state("e")
    assert finished == sorted(int(line) for line in calls(ran))
    pylo.close()
