"""Why an execution ended early is recorded with its end: each reason, as its run saw it (docs/concepts.md)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tasks import always_fail, noop

from pylo import ExecutionStatus, InitializerFailed, Pylo
from pylo._engine import STOP_REQUESTED

MakePylo = Callable[..., Pylo]


@pytest.fixture
def pylo(tmp_path: Path) -> Iterator[Pylo]:
    with Pylo.local_multithread(tmp_path / "store", 1, progress=False) as made:
        yield made


def recorded(pylo: Pylo, execution_id: str) -> tuple[str | None, str | None]:
    """The reason as the store keeps it: written by the run, not derived on read."""
    stored = pylo.store.get_execution(execution_id)
    shown = pylo.get_execution(execution_id)
    assert (shown.stop_reason, shown.stop_detail) == (stored.stop_reason, stored.stop_detail)
    return stored.stop_reason, stored.stop_detail


def fail_on_odd(item: int) -> int:
    if item % 2:
        raise ValueError(f"odd {item}")
    return item


def test_max_failures_is_recorded_in_every_store(make_pylo: MakePylo) -> None:
    pylo = make_pylo(1, max_failures=3, progress=False)
    execution_id = pylo.start_from_scratch(range(20), fail_on_odd)
    assert pylo.get_execution(execution_id).status is ExecutionStatus.STOPPED
    assert recorded(pylo, execution_id) == ("max_failures", "3 failures reached max_failures=3")
    # A resume that completes has no reason; its parent keeps its own.
    resumed = pylo.start_from_past_execution(execution_id, noop)
    assert recorded(pylo, resumed) == (None, None)
    assert recorded(pylo, execution_id)[0] == "max_failures"


def test_every_worker_spending_its_budget_is_recorded(tmp_path: Path) -> None:
    with Pylo.local_multithread(tmp_path / "store", 2, max_worker_failures=2, progress=False) as pylo:
        execution_id = pylo.start_from_scratch(range(40), always_fail)
        record = pylo.get_execution(execution_id)
        assert (record.status, record.failed) == (ExecutionStatus.STOPPED, 4)
        assert recorded(pylo, execution_id) == (
            "max_worker_failures",
            "every worker reached max_worker_failures=2, with 4 failures in all",
        )


def test_a_requested_stop_is_recorded(pylo: Pylo) -> None:
    stop = threading.Event()
    stop.set()  # as a pipeline run that pauses before its batch node gets going
    token = STOP_REQUESTED.set(stop)
    try:
        execution_id = pylo.start_from_scratch(range(10), noop)
    finally:
        STOP_REQUESTED.reset(token)
    assert pylo.get_execution(execution_id).status is ExecutionStatus.STOPPED
    assert recorded(pylo, execution_id) == (
        "stop_requested",
        "a stop was requested (its pipeline run was pausing or cancelling)",
    )


class Interrupting:
    """A task that raises ``error`` at input 3 (a BaseException interrupts the run)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, item: int) -> int:
        if item == 3:
            raise self.error
        return item


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (KeyboardInterrupt(), "the task raised KeyboardInterrupt"),
        (SystemExit(3), "the task raised SystemExit: 3"),
        (GeneratorExit("closed"), "the task raised GeneratorExit: closed"),
    ],
    ids=["keyboard-interrupt", "exit", "other"],
)
def test_an_interrupt_a_task_raises_is_recorded_as_the_tasks(pylo: Pylo, error: BaseException, detail: str) -> None:
    # A real Ctrl-C or SIGTERM is recorded as such: tests/test_signals.py sends them.
    with pytest.raises(type(error)):
        pylo.start_from_scratch(range(10), Interrupting(error), execution_id="cut")
    assert pylo.get_execution("cut").status is ExecutionStatus.INTERRUPTED
    assert recorded(pylo, "cut") == ("interrupted", detail)


def refuse(host: str) -> None:
    raise ConnectionError(f"cannot reach {host}")


def test_a_failed_initializer_is_recorded_with_its_error(tmp_path: Path) -> None:
    with Pylo.local_multithread(
        tmp_path / "store", 1, initializer=refuse, initargs=("db.example",), progress=False
    ) as pylo:
        with pytest.raises(InitializerFailed):
            pylo.start_from_scratch(range(5), noop, execution_id="unready")
        assert pylo.get_execution("unready").status is ExecutionStatus.ABORTED
        reason, detail = recorded(pylo, "unready")
        assert reason == "aborted"
        assert detail == (
            "the initializer test_stops:refuse failed in worker 0 (a thread): ConnectionError: cannot reach db.example"
        )


def broken_inputs() -> Iterator[Any]:
    yield 1
    raise OSError("the input file went away")


def test_inputs_that_cannot_be_read_are_recorded_as_the_reason(pylo: Pylo) -> None:
    with pytest.raises(OSError, match="went away"):
        pylo.start_from_scratch(broken_inputs(), noop, execution_id="unread")
    record = pylo.get_execution("unread")
    assert (record.status, record.inputs_complete) == (ExecutionStatus.ABORTED, False)
    assert recorded(pylo, "unread") == ("aborted", "before any input ran: OSError: the input file went away")


def test_a_completed_execution_has_no_stop_reason(pylo: Pylo) -> None:
    execution_id = pylo.start_from_scratch(range(3), fail_on_odd)
    record = pylo.get_execution(execution_id)
    assert (record.status, record.failed) == (ExecutionStatus.COMPLETED, 1)
    assert (record.stop_reason, record.stop_detail) == (None, None)


def test_a_long_detail_is_cut_short(pylo: Pylo) -> None:
    long = "x" * 2000
    with pytest.raises(GeneratorExit):
        pylo.start_from_scratch(range(5), Interrupting(GeneratorExit(long)), execution_id="long")
    detail = recorded(pylo, "long")[1]
    assert detail is not None and len(detail) == 500 and detail.endswith("…")
