"""Process workers: what only processes do, on spawn and fork.

Crash tests crash for real (``os._exit``, SIGKILL sent by the task to its
own process, a killed parent). After every test, no worker process may be
left: not running, not a zombie.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
from contract_tasks import always_fail, calls, flaky, noop, square
from process_tasks import (
    LockedInterrupt,
    big_result,
    crash_then_fail,
    echo,
    exit_on,
    exit_with,
    fail_then_hang,
    raise_locked_interrupt,
    record_start,
    run_victim,
    sigkill_on,
    wait_for_file,
)

from pylo import ExecutionStatus, Pylo, PyloError

MakePylo = Callable[..., Pylo]


# -- fixtures: a Pylo per start method, and no worker left behind ------------------


def _worker_processes(before: set[int]) -> list[psutil.Process]:
    """Descendants of this process that are not multiprocessing's own helpers."""
    found = []
    for process in psutil.Process().children(recursive=True):
        if process.pid in before:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:  # ended, never reaped: a leftover too
                found.append(process)
                continue
            command = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue  # gone (and reaped) while we looked
        if "resource_tracker" not in command and "forkserver" not in command:
            found.append(process)
    return found


def wait_for_no_workers(before: set[int], seconds: float = 10.0) -> list[psutil.Process]:
    """Wait, up to ``seconds``, until no worker process is left; return those that are."""
    deadline = time.monotonic() + seconds
    left = _worker_processes(before)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = _worker_processes(before)
    return left


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    before = {process.pid for process in psutil.Process().children(recursive=True)}
    yield
    left = wait_for_no_workers(before)
    assert not left, f"worker processes left behind: {[(p.pid, p.status()) for p in left]}"


@pytest.fixture(params=["spawn", "fork"])
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(tmp_path: Path, start_method: str) -> Iterator[MakePylo]:
    made: list[Pylo] = []

    def build(number_of_workers: int = 2, **kwargs: Any) -> Pylo:
        kwargs.setdefault("progress", False)
        pylo = Pylo.local_multiprocess(tmp_path / "store", number_of_workers, start_method=start_method, **kwargs)
        made.append(pylo)
        return pylo

    yield build
    for pylo in made:
        pylo.close()


# -- running and resuming ----------------------------------------------------------


def test_every_input_runs_and_resume_reruns_only_failures(make: MakePylo, tmp_path: Path) -> None:
    from contract_tasks import logged

    pylo = make(2)
    first, second = str(tmp_path / "first.log"), str(tmp_path / "second.log")
    past = pylo.start_from_scratch(range(500), partial(logged, first, 9))
    assert Counter(calls(first)) == Counter(repr(x) for x in range(500))
    assert pylo.get_state(past)[1] == list(range(0, 500, 9))
    assert {f.worker for f in pylo.get_failures(past)} <= {0, 1}
    resumed = pylo.start_from_past_execution(past, partial(logged, second, 0))
    assert sorted(calls(second), key=int) == [repr(x) for x in range(0, 500, 9)]
    assert pylo.get_state(resumed) == (list(range(500)), [])


@pytest.mark.parametrize("start_method", ["spawn"])
def test_workers_encode_with_the_executions_codec(make: MakePylo) -> None:
    pylo = make(2, store_results=True, codec="json")
    execution_id = pylo.start_from_scratch(range(50), partial(fail_then_hang, 7, -1))
    assert pylo.get_results(execution_id) == [(x, x * x) for x in range(50) if x != 7]
    (failure,) = pylo.get_failures(execution_id)
    assert (failure.input, failure.exception_type) == (7, "ValueError")


def test_large_inputs_and_results_cross_full_pipes(make: MakePylo) -> None:
    # Chunks of megabytes each way: far more than a pipe holds at once.
    inputs = [bytes([n]) * 300_000 for n in range(24)]
    pylo = make(2, store_results=True)
    execution_id = pylo.start_from_scratch(inputs, echo)
    assert pylo.get_results(execution_id) == [(item, item) for item in inputs]


@pytest.mark.parametrize("start_method", ["forkserver"])
def test_forkserver_workers_run_too(make: MakePylo) -> None:
    pylo = make(2, store_results=True)
    execution_id = pylo.start_from_scratch(range(200), square)
    assert pylo.get_results(execution_id) == [(x, x * x) for x in range(200)]


@pytest.mark.parametrize("start_method", ["spawn"])
def test_lambdas_and_closures_travel_by_cloudpickle(make: MakePylo) -> None:
    offset = 1000
    pylo = make(2, store_results=True)
    from_lambda = pylo.start_from_scratch(range(100), lambda x: x * 3)
    assert pylo.get_results(from_lambda) == [(x, x * 3) for x in range(100)]

    def shifted(item: int) -> int:
        return item + offset

    from_closure = pylo.start_from_scratch(range(100), shifted)
    assert pylo.get_results(from_closure) == [(x, x + 1000) for x in range(100)]


def test_a_function_that_cannot_be_sent_is_refused_before_anything_is_recorded(tmp_path: Path) -> None:
    pylo = Pylo.local_multiprocess(tmp_path / "store", 2, progress=False, start_method="spawn")
    lock = threading.Lock()
    numbers = (n for n in range(3))

    def holds_a_lock(item: int) -> None:
        with lock:
            pass

    def holds_a_generator(item: int) -> int:
        return item + next(numbers)

    for task in (holds_a_lock, holds_a_generator):
        with pytest.raises(TypeError, match="cannot be sent to worker processes") as caught:
            pylo.start_from_scratch(range(10), task)
        assert task.__qualname__ in str(caught.value)
        assert "cannot pickle" in str(caught.value)
    assert pylo.list_executions() == []
    pylo.close()


@pytest.mark.parametrize("start_method", ["spawn"])
def test_a_function_the_workers_cannot_load_aborts_the_execution(make: MakePylo) -> None:
    # Pickled by reference to a module that exists only in this process.
    module = types.ModuleType("pylo_test_only_here")
    exec("def task(item):\n    return item\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        pylo = make(2)
        with pytest.raises(PyloError, match="could not load the task function"):
            pylo.start_from_scratch(range(10), module.task, execution_id="unloadable")
    finally:
        del sys.modules[module.__name__]
    assert pylo.get_execution("unloadable").status is ExecutionStatus.ABORTED


def test_start_method_is_checked() -> None:
    from pylo.workers.processes import ProcessBackend

    assert ProcessBackend.check_start_method(None) is None
    assert ProcessBackend.check_start_method("spawn") == "spawn"
    with pytest.raises(ValueError, match="'spawn', 'fork', 'forkserver'"):
        ProcessBackend.check_start_method("threads")
    with pytest.raises(TypeError, match="start_method must be"):
        ProcessBackend.check_start_method(1)


# -- crashes -------------------------------------------------------------------------


def test_a_worker_that_exits_fails_only_its_input_and_is_replaced(make: MakePylo) -> None:
    pylo = make(2)
    execution_id = pylo.start_from_scratch(range(300), partial(exit_on, frozenset({37, 211}), 3))
    finished, unfinished = pylo.get_state(execution_id)
    assert unfinished == [37, 211] and len(finished) == 298
    failures = pylo.get_failures(execution_id)
    assert {f.exception_type for f in failures} == {"pylo.errors.WorkerCrashed"}
    assert all("exited with code 3" in str(f.message) for f in failures)
    assert all(isinstance(f.exception, PyloError) and f.attempts == 1 for f in failures)
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


def test_a_worker_killed_by_sigkill_fails_only_its_input(make: MakePylo) -> None:
    pylo = make(2, store_results=True)
    execution_id = pylo.start_from_scratch(range(200), partial(sigkill_on, frozenset({5, 150})))
    assert pylo.get_state(execution_id)[1] == [5, 150]
    assert all("killed by signal SIGKILL" in str(f.message) for f in pylo.get_failures(execution_id))
    # Results of the inputs around the crash (same chunk) are kept.
    assert [x for x, _ in pylo.get_results(execution_id)] == [x for x in range(200) if x not in (5, 150)]
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


def test_a_crash_counts_against_the_workers_budget(make: MakePylo) -> None:
    # One worker, two failures allowed. Its first two chunks (inputs 0-7 and
    # 8-15) are queued at once; input 0 kills the process. The replacement
    # must start with one failure left, so the queued chunk stops after 8.
    pylo = make(1, max_worker_failures=2)
    execution_id = pylo.start_from_scratch(range(100), crash_then_fail)
    failures = pylo.get_failures(execution_id)
    assert [(f.input, f.exception_type) for f in failures] == [(0, "pylo.errors.WorkerCrashed"), (8, "ValueError")]
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED and record.failed == 2


@pytest.mark.parametrize("start_method", ["fork"])
def test_crashes_count_towards_max_failures(make: MakePylo) -> None:
    pylo = make(2, max_failures=2)
    execution_id = pylo.start_from_scratch(range(200), partial(exit_on, frozenset(range(200)), 1))
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED
    assert 2 <= record.failed <= 3  # the other worker may be in its own crash at that moment


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path, start_method: str) -> None:
    log = str(tmp_path / "ran.log")
    victim = multiprocessing.get_context("spawn").Process(
        target=run_victim, args=(str(tmp_path / "store"), log, start_method)
    )
    victim.start()
    try:
        deadline = time.monotonic() + 60
        while len(calls(log)) < 50:
            assert victim.is_alive(), "the parent ended before it could be killed"
            assert time.monotonic() < deadline, "the workers never got going"
            time.sleep(0.01)
        workers = psutil.Process(victim.pid).children(recursive=True)
        workers = [w for w in workers if "resource_tracker" not in " ".join(w.cmdline())]
        assert len(workers) >= 2
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        victim.join(30)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers outlived their parent: {alive}"


@pytest.mark.parametrize("start_method", ["spawn"])
def test_an_interrupt_while_workers_start_leaves_no_process(start_method: str) -> None:
    # A real Ctrl-C as soon as the first worker process exists: it lands while
    # the others start, or while a started one is not yet given to its lane.
    from pylo.workers.base import RunnerSettings
    from pylo.workers.processes import ProcessBackend

    backend = ProcessBackend(start_method)
    before = {process.pid for process in psutil.Process().children(recursive=True)}
    sent = threading.Event()

    def interrupt_when_a_worker_appears() -> None:
        deadline = time.monotonic() + 60
        while not _worker_processes(before) and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGINT)
        sent.set()

    threading.Thread(target=interrupt_when_a_worker_appears, daemon=True).start()
    started = None
    with pytest.raises(KeyboardInterrupt):
        started = backend.start(noop, 6, RunnerSettings())
        sent.wait(60)  # should all six start first, the interrupt lands in this wait
    if started is not None:
        started.shutdown(wait=False)
    # The fixture checks that no worker process is left, running or zombie.


# -- timeouts ------------------------------------------------------------------------


def test_a_task_past_its_timeout_is_killed_and_the_rest_completes(make: MakePylo) -> None:
    pylo = make(2, timeout=0.5, store_results=True)
    # Input 3 fails and input 5 hangs (for 120 s), in the same first chunk of a worker.
    execution_id = pylo.start_from_scratch(range(60), partial(fail_then_hang, 3, 5))
    assert pylo.get_state(execution_id)[1] == [3, 5]
    failed = [(f.input, f.exception_type, f.message) for f in pylo.get_failures(execution_id)]
    assert failed == [
        (3, "ValueError", "bad input 3"),
        (5, "pylo.errors.TaskTimeout", "the task ran longer than its timeout of 0.5 s"),
    ]
    assert pylo.get_results(execution_id) == [(x, x * x) for x in range(60) if x not in (3, 5)]
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


# -- the same options as threads ---------------------------------------------------


def test_retries_finish_late_successes_and_record_attempts_of_give_ups(make: MakePylo, tmp_path: Path) -> None:
    from tenacity import Retrying, stop_after_attempt

    log = str(tmp_path / "attempts.log")
    pylo = make(2, retry=Retrying(stop=stop_after_attempt(3)))
    late = pylo.start_from_scratch([1, 2], partial(flaky, log, 3))
    assert pylo.get_state(late) == ([1, 2], [])
    assert Counter(calls(log)) == {"1": 3, "2": 3}
    gives_up = pylo.start_from_scratch([7], partial(flaky, str(tmp_path / "other.log"), 5))
    (failure,) = pylo.get_failures(gives_up)
    assert (failure.attempts, failure.exception_type, failure.message) == (3, "ConnectionError", "attempt 3 of 7")


@pytest.mark.parametrize("start_method", ["spawn"])
def test_rate_limit_caps_task_starts_across_processes(make: MakePylo, tmp_path: Path) -> None:
    log = str(tmp_path / "starts.log")
    pylo = make(4, rate_limit="40/s")
    pylo.start_from_scratch(range(40), partial(record_start, log))
    starts = sorted(float(line) for line in calls(log))
    assert len(starts) == 40
    # 40 starts at 40/s with a burst of 1: 39 gaps of 25 ms; loose bounds for a busy machine.
    assert 0.8 <= starts[-1] - starts[0] <= 4.0, starts[-1] - starts[0]
    assert max(sum(1 for t in starts if a <= t < a + 0.5) for a in starts) <= 24


@pytest.mark.parametrize("start_method", ["fork"])
def test_waiting_for_the_rate_limit_does_not_count_towards_the_timeout(make: MakePylo) -> None:
    # 4 starts per second over 2 workers: each waits about 0.5 s for its
    # tokens, far past the 0.2 s timeout, yet no input takes that long.
    pylo = make(2, rate_limit=4, timeout=0.2)
    execution_id = pylo.start_from_scratch(range(8), noop)
    assert pylo.get_state(execution_id) == (list(range(8)), [])


def test_max_failures_stops_every_worker(make: MakePylo) -> None:
    pylo = make(2, max_failures=4)
    execution_id = pylo.start_from_scratch(range(2000), always_fail)
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED
    assert 4 <= record.failed <= 5


def test_results_are_kept_and_failures_have_none(make: MakePylo) -> None:
    pylo = make(2, store_results=True, max_worker_failures=100)
    execution_id = pylo.start_from_scratch(range(300), partial(fail_then_hang, 7, -1))
    assert pylo.get_results(execution_id) == [(x, x * x) for x in range(300) if x != 7]
    assert pylo.get_state(execution_id)[1] == [7]


@pytest.mark.parametrize("start_method", ["spawn"])
def test_every_finished_input_has_its_result_however_often_it_flushes(make: MakePylo) -> None:
    # Flushes every 5 ms land while workers are still sending a chunk's last
    # result; the chunk must not read as done until that result is in.
    pylo = make(3, store_results=True, flush_seconds=0.005)
    execution_id = pylo.start_from_scratch(range(300), partial(big_result, 300_000))
    finished, unfinished = pylo.get_state(execution_id)
    assert (len(finished), unfinished) == (300, [])
    results = pylo.get_results(execution_id)
    assert [item for item, _ in results] == list(range(300))
    assert all(value == bytes([item % 256]) * 300_000 for item, value in results)


@pytest.mark.parametrize("start_method", ["spawn"])
@pytest.mark.parametrize("store_results", [False, True])
def test_a_long_chunk_is_flushed_while_it_runs(make: MakePylo, tmp_path: Path, store_results: bool) -> None:
    # One worker; input 30 waits for the marker. Chunks are 0-7, 8-15, then
    # 16-39: inputs 16-29 become durable only through progress() reports.
    marker = tmp_path / "go"
    pylo = make(1, flush_seconds=0.1, store_results=store_results)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pylo.start_from_scratch(range(40), partial(wait_for_file, str(marker), 30), execution_id="long")
        except BaseException as exc:  # shown by the assertion below
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    reader = Pylo.local_multiprocess(tmp_path / "store", 1, progress=False)
    try:
        deadline = time.monotonic() + 30
        finished = 0
        while finished < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                finished = reader.get_execution("long").finished
            except PyloError:
                continue  # not created yet
        assert finished == 30
        assert reader.get_execution("long").status is ExecutionStatus.RUNNING
        if store_results:
            assert reader.get_results("long") == [(x, x) for x in range(30)]
    finally:
        marker.touch()
        runner.join(30)
        reader.close()
    assert not errors and not runner.is_alive()
    assert pylo.get_state("long") == (list(range(40)), [])


# -- interrupts from tasks -----------------------------------------------------------


@pytest.mark.parametrize("start_method", ["spawn"])
def test_interrupts_raised_by_tasks_are_raised_here(make: MakePylo) -> None:
    from contract_tasks import interrupt_at

    pylo = make(2)
    with pytest.raises(KeyboardInterrupt):
        pylo.start_from_scratch(range(300), partial(interrupt_at, 100), execution_id="ctrl-c")
    with pytest.raises(SystemExit) as exited:
        pylo.start_from_scratch(range(300), partial(exit_with, 100, 3), execution_id="exit")
    assert exited.value.code == 3
    # One that cannot be pickled comes back as a stand-in naming it.
    with pytest.raises(BaseException, match="LockedInterrupt: stop at 100") as caught:
        pylo.start_from_scratch(range(300), partial(raise_locked_interrupt, 100), execution_id="locked")
    assert not isinstance(caught.value, LockedInterrupt)
    for execution_id in ("ctrl-c", "exit", "locked"):
        assert pylo.get_execution(execution_id).status is ExecutionStatus.INTERRUPTED
        assert 100 in pylo.get_state(execution_id)[1]
    resumed = pylo.start_from_past_execution("locked", noop)
    assert pylo.get_state(resumed) == (list(range(300)), [])


def test_a_retry_policy_that_cannot_be_sent_is_refused_before_anything_is_recorded(tmp_path: Path) -> None:
    import threading

    from tenacity import Retrying, stop_after_attempt

    lock = threading.Lock()

    def never_while_locked(retry_state: Any) -> bool:  # closes over a lock: cannot be pickled
        return not lock.locked()

    with pytest.raises(TypeError, match=r"retry .* cannot be sent to worker processes"):
        Pylo.local_multiprocess(
            tmp_path / "store", 2, retry=Retrying(stop=stop_after_attempt(2), retry=never_while_locked)
        )
    assert not (tmp_path / "store").exists()
