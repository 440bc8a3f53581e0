"""Thread-worker specifics: timeouts on threads that cannot be killed, rate limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pylo import ExecutionStatus, Pylo

MakePylo = Callable[..., Pylo]


def test_a_task_past_its_timeout_fails_and_the_worker_goes_on(make_pylo: MakePylo) -> None:
    release = threading.Event()
    returned = threading.Event()

    def task(item: int) -> None:
        if item == 5:
            release.wait(60)  # stuck until the test ends
            returned.set()

    pylo = make_pylo(number_of_workers=2, timeout=0.2)
    try:
        execution_id = pylo.start_from_scratch(range(200), task)
        assert not returned.is_set()  # the run ended while input 5 was stuck: not waited for
    finally:
        release.set()
    finished, unfinished = pylo.get_state(execution_id)
    assert unfinished == [5] and len(finished) == 199
    (failure,) = pylo.get_failures(execution_id)
    assert failure.exception_type == "pylo.errors.TaskTimeout"
    assert failure.message == "the task ran longer than its timeout of 0.2 s"
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


def test_an_abandoned_task_that_returns_later_changes_nothing(make_pylo: MakePylo) -> None:
    release = threading.Event()
    stuck: list[threading.Thread] = []

    def task(item: int) -> None:
        if item == 0:
            stuck.append(threading.current_thread())
            release.wait(60)  # returns only once the run has ended

    pylo = make_pylo(number_of_workers=1, timeout=0.2)
    execution_id = pylo.start_from_scratch(range(50), task)
    release.set()
    (thread,) = stuck
    thread.join(10)  # the abandoned thread runs to its end
    assert not thread.is_alive()
    assert pylo.get_state(execution_id) == (list(range(1, 50)), [0])
    assert len(pylo.get_failures(execution_id)) == 1


def test_rate_limit_caps_task_starts_across_workers(make_pylo: MakePylo) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    def task(item: int) -> None:
        with lock:
            starts.append(time.monotonic())

    pylo = make_pylo(number_of_workers=4, rate_limit="40/s")
    pylo.start_from_scratch(range(40), task)
    span = max(starts) - min(starts)
    # 40 starts at 40/s with a burst of 1: 39 gaps of 25 ms. Only lower bounds:
    # a slow machine spreads starts out, it never packs them closer.
    assert span >= 0.8, span
    ordered = sorted(starts)
    # No half-second window holds many more than its 20 starts.
    assert max(sum(1 for t in ordered if a <= t < a + 0.5) for a in ordered) <= 24
