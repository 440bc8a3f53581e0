"""Asyncio-worker specifics, through ``Pylo.local_asyncio``.

The rules every backend shares run in ``test_worker_contract.py``; these tests
cover what only the asyncio lanes do: bounded concurrency on one loop,
cancellation (timeouts, the task's own ``CancelledError``, shutdown), async
retries, and running from code that is itself inside an event loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tenacity import AsyncRetrying, stop_after_attempt, wait_fixed

from pylo import ExecutionStatus, Pylo

MakePylo = Callable[..., Pylo]

WAIT = 10.0  # the longest any blocking wait in these tests may take


@pytest.fixture
def make_pylo(tmp_path: Path) -> Iterator[MakePylo]:
    """Build asyncio Pylos on one store directory; all are closed at teardown."""
    made: list[Pylo] = []

    def make(concurrency: int = 2, **kwargs: Any) -> Pylo:
        kwargs.setdefault("progress", False)
        pylo = Pylo.local_asyncio(tmp_path / "store", concurrency, **kwargs)
        made.append(pylo)
        return pylo

    yield make
    for pylo in made:
        pylo.close()


def pylo_threads() -> set[threading.Thread]:
    """Threads the asyncio backend may have started, alive now."""
    return {thread for thread in threading.enumerate() if thread.name.startswith(("pylo-", "asyncio_"))}


def wait_until_gone(threads: set[threading.Thread]) -> set[threading.Thread]:
    """Threads of ``threads`` still alive after a deadline (joined, not slept on)."""
    deadline = time.monotonic() + WAIT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {thread for thread in threads if thread.is_alive()}


# -- running and resuming -----------------------------------------------------


def test_every_input_runs_and_a_resume_reruns_only_failures(make_pylo: MakePylo) -> None:
    calls: list[int] = []

    async def flaky(item: int) -> None:
        calls.append(item)
        await asyncio.sleep(0)
        if item % 7 == 0:
            raise ValueError(f"bad input {item}")

    pylo = make_pylo(4)
    past_id = pylo.start_from_scratch(range(300), flaky)
    assert sorted(calls) == list(range(300))
    failed = list(range(0, 300, 7))
    assert pylo.get_state(past_id) == ([x for x in range(300) if x % 7], failed)
    assert {f.exception_type for f in pylo.get_failures(past_id)} == {"ValueError"}

    rerun: list[int] = []

    async def fixed(item: int) -> None:
        rerun.append(item)

    new_id = pylo.start_from_past_execution(past_id, fixed)
    assert sorted(rerun) == failed
    assert pylo.get_state(new_id) == (list(range(300)), [])
    assert pylo.get_execution(new_id).status is ExecutionStatus.COMPLETED


def test_at_most_concurrency_tasks_are_in_flight_and_all_are_used(make_pylo: MakePylo) -> None:
    concurrency = 8
    in_flight = 0
    most = 0
    all_in = asyncio.Event()  # binds to pylo's loop when first awaited there

    async def task(item: int) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == concurrency:
            all_in.set()
        try:
            # Each task holds its place until every lane has one in flight.
            await asyncio.wait_for(all_in.wait(), WAIT)
            await asyncio.sleep(0)
        finally:
            in_flight -= 1

    pylo = make_pylo(concurrency)
    execution_id = pylo.start_from_scratch(range(400), task)
    assert pylo.get_state(execution_id) == (list(range(400)), [])
    assert most == concurrency


def test_a_worker_stops_after_its_budget_and_the_others_go_on(make_pylo: MakePylo) -> None:
    async def always_fail(item: int) -> None:
        await asyncio.sleep(0)
        raise RuntimeError(f"always fails: {item}")

    pylo = make_pylo(3, max_worker_failures=2)
    execution_id = pylo.start_from_scratch(range(100), always_fail)
    assert Counter(f.worker for f in pylo.get_failures(execution_id)) == {0: 2, 1: 2, 2: 2}
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED
    assert (record.finished, record.failed, record.pending) == (0, 6, 94)


def test_a_budget_stops_only_the_lane_that_used_it_up(make_pylo: MakePylo) -> None:
    async def fail_on_lane_zero(item: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)
        if task.get_name() == "pylo-lane-0":
            raise RuntimeError("lane 0 is broken")

    pylo = make_pylo(3, max_worker_failures=2)
    execution_id = pylo.start_from_scratch(range(600), fail_on_lane_zero)
    assert [f.worker for f in pylo.get_failures(execution_id)] == [0, 0]
    record = pylo.get_execution(execution_id)
    # Lanes 1 and 2 finished everything but the rest of lane 0's chunk.
    assert record.failed == 2 and record.pending < 8
    assert record.finished + record.failed + record.pending == 600


def test_max_failures_stops_every_lane_together(make_pylo: MakePylo) -> None:
    async def always_fail(item: int) -> None:
        await asyncio.sleep(0)  # lanes interleave, so several are mid-input at once
        raise RuntimeError(f"always fails: {item}")

    pylo = make_pylo(4, max_failures=5)
    execution_id = pylo.start_from_scratch(range(2000), always_fail)
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED
    # The limit stops every lane before its next input; lanes mid-input finish it.
    assert 5 <= record.failed <= 5 + 3
    assert record.pending == 2000 - record.failed


def test_a_time_based_flush_saves_inputs_finished_early_in_a_running_chunk(make_pylo: MakePylo) -> None:
    pylo = make_pylo(1, task_executions_before_flush=10**6, flush_seconds=0.05)
    reader = make_pylo()
    seen: list[int] = []

    async def task(item: int) -> None:
        if item == 60:
            # Inputs before 60 share its chunk: only progress() can make them
            # durable while this input is still running. Poll with a deadline.
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                (record,) = await asyncio.to_thread(reader.list_executions)
                seen.append(record.finished)
                if record.finished >= 50:
                    return
                await asyncio.sleep(0.01)

    execution_id = pylo.start_from_scratch(range(100), task)
    assert pylo.get_state(execution_id) == (list(range(100)), [])
    assert seen and seen[-1] >= 50, seen


# -- retries ------------------------------------------------------------------


def test_async_retries_finish_an_input_or_give_up_with_its_attempts(make_pylo: MakePylo) -> None:
    attempts: Counter[int] = Counter()

    async def flaky(item: int) -> None:
        attempts[item] += 1
        await asyncio.sleep(0)
        if attempts[item] < item:  # input n succeeds on attempt n
            raise ConnectionError(f"attempt {attempts[item]} of {item}")

    pylo = make_pylo(2, retry=AsyncRetrying(stop=stop_after_attempt(3)))
    execution_id = pylo.start_from_scratch([1, 2, 3, 5], flaky)
    assert pylo.get_state(execution_id) == ([1, 2, 3], [5])
    assert attempts == {1: 1, 2: 2, 3: 3, 5: 3}
    (failure,) = pylo.get_failures(execution_id)
    assert failure.attempts == 3
    assert failure.exception_type == "ConnectionError" and failure.message == "attempt 3 of 5"


def test_a_retry_back_off_holds_only_its_own_lane(make_pylo: MakePylo) -> None:
    finished_at: dict[int, float] = {}
    failed_at: list[float] = []

    async def task(item: int) -> None:
        await asyncio.sleep(0)
        if item == 0 and not failed_at:
            failed_at.append(time.monotonic())
            raise ConnectionError("first attempt")
        finished_at[item] = time.monotonic()

    pylo = make_pylo(2, retry=AsyncRetrying(stop=stop_after_attempt(2), wait=wait_fixed(0.3)))
    execution_id = pylo.start_from_scratch(range(40), task)
    assert pylo.get_state(execution_id) == (list(range(40)), [])
    # While input 0 waited for its retry, the other lane went on.
    during_back_off = [x for x, at in finished_at.items() if failed_at[0] < at < finished_at[0]]
    assert len(during_back_off) >= 10


# -- timeouts and cancellation ------------------------------------------------


def test_a_task_past_its_timeout_is_cancelled_and_fails_while_others_complete(make_pylo: MakePylo) -> None:
    cancelled: list[int] = []

    async def task(item: int) -> None:
        if item == 5:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(item)
                raise
        if item == 9:
            raise TimeoutError("the task's own timeout")  # not pylo's: an ordinary failure
        await asyncio.sleep(0)

    pylo = make_pylo(2, timeout=0.2)
    execution_id = pylo.start_from_scratch(range(100), task)
    assert cancelled == [5]  # cancelled at its timeout, not waited for
    assert pylo.get_state(execution_id)[1] == [5, 9]
    timed_out, own = pylo.get_failures(execution_id)
    assert timed_out.exception_type == "pylo.errors.TaskTimeout"
    assert timed_out.message == "the task ran longer than its timeout of 0.2 s"
    assert own.exception_type == "TimeoutError" and own.message == "the task's own timeout"
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


def test_the_timeout_covers_an_input_with_all_its_retries(make_pylo: MakePylo) -> None:
    async def always_fail(item: int) -> None:
        await asyncio.sleep(0)
        raise ConnectionError("down")

    retry = AsyncRetrying(stop=stop_after_attempt(1000), wait=wait_fixed(0.05))
    pylo = make_pylo(1, timeout=0.3, retry=retry)
    execution_id = pylo.start_from_scratch([0], always_fail)
    (failure,) = pylo.get_failures(execution_id)
    assert failure.exception_type == "pylo.errors.TaskTimeout"
    assert 2 <= failure.attempts < 20


def test_a_task_that_swallows_its_cancellation_fails_at_its_timeout_and_is_abandoned(
    make_pylo: MakePylo, caplog: pytest.LogCaptureFixture
) -> None:
    async def task(item: int) -> None:
        if item == 3:
            while True:  # deaf to cancellation: only abandoning it frees the lane
                try:
                    await asyncio.sleep(0.1)
                except asyncio.CancelledError:
                    pass
        await asyncio.sleep(0)

    pylo = make_pylo(2, timeout=0.5)
    errors: list[BaseException] = []
    ids: list[str] = []

    def run() -> None:
        try:
            ids.append(pylo.start_from_scratch(range(40), task))
        except BaseException as exc:  # shown by the assertion below
            errors.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(WAIT * 3)  # a guard against a hang, not a measure of time
    assert not runner.is_alive(), "the run never ended: the task held its lane forever"
    assert not errors
    (execution_id,) = ids
    assert pylo.get_state(execution_id) == ([x for x in range(40) if x != 3], [3])
    (failure,) = pylo.get_failures(execution_id)
    assert failure.exception_type == "pylo.errors.TaskTimeout"
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED
    assert "the task is abandoned" in caplog.text


@pytest.mark.parametrize("retry", [False, True], ids=["no-retry", "retry"])
@pytest.mark.parametrize("timeout", [None, 5.0], ids=["plain", "with-timeout"])
def test_a_task_raising_cancelled_error_fails_its_input_on_every_path(
    make_pylo: MakePylo, timeout: float | None, retry: bool
) -> None:
    async def task(item: int) -> None:
        await asyncio.sleep(0)
        if item % 5 == 0:
            raise asyncio.CancelledError(f"gave up on {item}")

    policy = AsyncRetrying(stop=stop_after_attempt(2)) if retry else None
    pylo = make_pylo(2, timeout=timeout, retry=policy)
    execution_id = pylo.start_from_scratch(range(30), task)
    assert pylo.get_state(execution_id)[1] == list(range(0, 30, 5))
    failures = pylo.get_failures(execution_id)
    assert [f.message for f in failures] == [f"gave up on {x}" for x in range(0, 30, 5)]
    assert {f.exception_type for f in failures} == {"asyncio.exceptions.CancelledError"}
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["plain", "with-timeout"])
def test_a_cancelled_error_from_the_task_itself_is_a_failure(make_pylo: MakePylo, timeout: float | None) -> None:
    async def task(item: int) -> None:
        if item == 3:
            raise asyncio.CancelledError("the task gave up")
        if item == 4:
            inner = asyncio.ensure_future(asyncio.sleep(60))
            inner.cancel()
            await inner  # an operation the task awaited was cancelled
        if item == 5:
            me = asyncio.current_task()
            assert me is not None
            me.cancel()  # the task cancels its own lane
            await asyncio.sleep(0)
        await asyncio.sleep(0)

    pylo = make_pylo(1, timeout=timeout)
    execution_id = pylo.start_from_scratch(range(50), task)
    assert pylo.get_state(execution_id)[1] == [3, 4, 5]
    failures = pylo.get_failures(execution_id)
    assert {f.exception_type for f in failures} == {"asyncio.exceptions.CancelledError"}
    assert failures[0].message == "the task gave up"
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


# -- rate limits and results --------------------------------------------------


def test_rate_limit_caps_task_starts_across_lanes(make_pylo: MakePylo) -> None:
    starts: list[float] = []

    async def task(item: int) -> None:
        starts.append(time.monotonic())

    pylo = make_pylo(4, rate_limit="40/s")
    pylo.start_from_scratch(range(20), task)
    span = max(starts) - min(starts)
    # 20 starts at 40/s with a burst of 1: 19 gaps of 25 ms. Only lower bounds:
    # a slow machine spreads starts out, it never packs them closer.
    assert span >= 0.35, span
    ordered = sorted(starts)
    assert max(sum(1 for t in ordered if a <= t < a + 0.25) for a in ordered) <= 12


def test_store_results_keeps_awaited_return_values(make_pylo: MakePylo) -> None:
    async def square(item: int) -> Any:
        await asyncio.sleep(0)
        return (lambda: None) if item == 7 else item * item

    pylo = make_pylo(3, store_results=True)
    execution_id = pylo.start_from_scratch(range(30), square)
    assert pylo.get_results(execution_id) == [(x, x * x) for x in range(30) if x != 7]
    (failure,) = pylo.get_failures(execution_id)
    assert failure.input == 7 and failure.exception_type == "pylo.errors.ResultSerializationError"


# -- interrupts and shutdown --------------------------------------------------


def test_a_keyboard_interrupt_from_a_task_interrupts_and_a_resume_completes(make_pylo: MakePylo) -> None:
    cancelled = threading.Event()

    async def task(item: int) -> None:
        if item == 0:
            try:
                await asyncio.sleep(60)  # in flight when the interrupt comes
            except asyncio.CancelledError:
                cancelled.set()
                raise
        if item == 150:
            raise KeyboardInterrupt()
        await asyncio.sleep(0)

    before = pylo_threads()
    pylo = make_pylo(3)
    with pytest.raises(KeyboardInterrupt):
        pylo.start_from_scratch(range(300), task, execution_id="cut")
    # The stuck input got the coordinator's grace, then was cancelled, not waited for.
    assert cancelled.is_set()
    assert not wait_until_gone(pylo_threads() - before)
    assert pylo.get_execution("cut").status is ExecutionStatus.INTERRUPTED
    finished, unfinished = pylo.get_state("cut")
    assert 0 in unfinished and 150 in unfinished
    assert sorted(finished + unfinished) == list(range(300))

    rerun: list[int] = []

    async def fixed(item: int) -> None:
        rerun.append(item)

    resumed = pylo.start_from_past_execution("cut", fixed)
    assert sorted(rerun) == unfinished
    assert pylo.get_state(resumed) == (list(range(300)), [])


def test_no_thread_task_or_warning_is_left_behind(make_pylo: MakePylo, caplog: pytest.LogCaptureFixture) -> None:
    forgotten: list[asyncio.Future[None]] = []

    async def task(item: int) -> None:
        await asyncio.to_thread(time.sleep, 0)  # starts the loop's default executor
        if item % 10 == 0:
            forgotten.append(asyncio.ensure_future(asyncio.sleep(60)))  # background tasks never awaited

    before = pylo_threads()
    caplog.set_level(logging.WARNING)
    pylo = make_pylo(4)
    execution_id = pylo.start_from_scratch(range(100), task)
    assert pylo.get_state(execution_id) == (list(range(100)), [])
    assert not wait_until_gone(pylo_threads() - before)
    assert all(future.cancelled() for future in forgotten)
    forgotten.clear()
    gc.collect()  # a task left pending on a closed loop complains when it is collected
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("asyncio", "pylo"))] == []


# -- callers inside an event loop ---------------------------------------------


async def _double(item: int) -> int:
    await asyncio.sleep(0)
    return item * 2


def test_works_from_a_coroutine_through_to_thread(make_pylo: MakePylo) -> None:
    pylo = make_pylo(3, store_results=True)

    async def main() -> str:
        return await asyncio.to_thread(pylo.start_from_scratch, range(50), _double)

    execution_id = asyncio.run(main())
    assert pylo.get_results(execution_id) == [(x, 2 * x) for x in range(50)]


def test_works_when_called_straight_from_a_running_loop_like_a_notebook(make_pylo: MakePylo) -> None:
    pylo = make_pylo(3, store_results=True)

    async def cell() -> str:
        # A notebook cell is synchronous code in the loop's own thread.
        asyncio.get_running_loop()
        return pylo.start_from_scratch(range(50), _double)

    execution_id = asyncio.run(cell())
    assert pylo.get_results(execution_id) == [(x, 2 * x) for x in range(50)]
