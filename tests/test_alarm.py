"""The engine's one-shot alarm (``pylo._engine.ALARM``): rung once by the execution's loop when due, never early.

A pipeline's batch node that runs on its coordinator's thread uses it to
start the thread that keeps the run's clocks only if the node lasts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pylo import ExecutionStatus, Pylo
from pylo._engine import ALARM


@pytest.fixture
def pylo(tmp_path: Path) -> Iterator[Pylo]:
    # Flushes by time far apart: only the alarm can wake the loop while an input waits.
    with Pylo.local_multithread(tmp_path / "store", 2, progress=False, flush_seconds=300) as made:
        yield made


def with_alarm(at: float, ring: Callable[[], None], run: Callable[[], str]) -> str:
    token = ALARM.set((at, ring))
    try:
        return run()
    finally:
        ALARM.reset(token)


def test_an_alarm_due_while_an_input_runs_rings_once_during_the_execution(pylo: Pylo) -> None:
    rung = threading.Event()
    rings: list[float] = []

    def ring() -> None:
        rings.append(time.monotonic())
        rung.set()

    def waits_for_the_ring(item: int) -> int:
        if item == 3:
            assert rung.wait(60), "the alarm did not ring while the input ran"
        return item

    execution_id = with_alarm(
        time.monotonic() + 0.05, ring, lambda: pylo.start_from_scratch(range(6), waits_for_the_ring)
    )
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED
    assert len(rings) == 1


def test_an_alarm_not_due_before_the_execution_ends_never_rings(pylo: Pylo) -> None:
    rings: list[float] = []
    execution_id = with_alarm(
        time.monotonic() + 3600, lambda: rings.append(0.0), lambda: pylo.start_from_scratch(range(50), abs)
    )
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED
    assert rings == []
