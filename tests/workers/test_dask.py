"""The Dask backend on a real local cluster: two worker processes, one thread each.

Everything goes through ``Pylo.dask``. Crash tests kill real worker
processes with SIGKILL; the cluster's nannies start new ones, and each test
waits (with a timeout) for two workers before it begins.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("distributed") is None:
    pytest.skip('needs dask and distributed: pip install ".[dask]" from the checkout', allow_module_level=True)

from contract_tasks import (
    always_fail,
    calls,
    fail_multiples_of_seven,
    flaky,
    interrupt_at,
    logged,
    noop,
    square,
)
from dask_tasks import (
    hold_or_interrupt,
    hold_until,
    kill_worker_always,
    kill_worker_once,
    slow_but_zero_fails,
    started_at,
    timed_nap,
)

from pylo import ExecutionStatus, Pylo, PyloError
from pylo.workers._dask_watchdog import NO_WORKERS_TIMEOUT
from pylo.workers.base import ChunkResult, RunnerSettings
from pylo.workers.dask import DaskBackend

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def make(client: Any, tmp_path: Path) -> Iterator[Callable[..., Pylo]]:
    """Build Pylo objects on the module's cluster, once both workers are up."""
    client.wait_for_workers(2, timeout=60)
    made: list[Pylo] = []

    def build(number_of_workers: int | None = 2, **kwargs: Any) -> Pylo:
        kwargs.setdefault("progress", False)
        pylo = Pylo.dask(client, tmp_path / "store", number_of_workers, **kwargs)
        made.append(pylo)
        return pylo

    yield build
    for pylo in made:
        pylo.close()


# -- the basics ------------------------------------------------------------------


def test_runs_every_input_and_resume_reruns_only_failures(make: Callable[..., Pylo], tmp_path: Path) -> None:
    pylo = make()
    first_log, second_log = str(tmp_path / "first.log"), str(tmp_path / "second.log")
    past_id = pylo.start_from_scratch(range(600), partial(logged, first_log, 9))
    assert Counter(calls(first_log)) == Counter(repr(x) for x in range(600))
    assert pylo.get_state(past_id)[1] == list(range(0, 600, 9))
    assert {f.worker for f in pylo.get_failures(past_id)} == {0, 1}

    new_id = pylo.start_from_past_execution(past_id, partial(logged, second_log, 0))
    assert sorted(calls(second_log), key=int) == [repr(x) for x in range(0, 600, 9)]
    assert pylo.get_state(new_id) == (list(range(600)), [])
    assert pylo.get_execution(new_id).status is ExecutionStatus.COMPLETED


def test_one_lane_per_worker_thread_by_default(make: Callable[..., Pylo]) -> None:
    pylo = make(None)
    assert "workers=2" in repr(pylo)
    execution_id = pylo.start_from_scratch(range(100), noop)
    assert pylo.get_state(execution_id) == (list(range(100)), [])


def test_each_chunk_reports_the_cpu_time_of_the_thread_that_ran_it(client: Any) -> None:
    # The coordinator sizes Dask chunks by it (pylo._sizing): a busy machine
    # stretches each input's wall time, not its CPU time.
    client.wait_for_workers(2, timeout=60)
    lanes = DaskBackend(client).start(square, 1, RunnerSettings())
    try:
        lanes.submit(0, 0, [1, 2, 3], 3)
        results: list[ChunkResult] = []
        while not results:
            results = lanes.poll(60)
    finally:
        lanes.shutdown(wait=True)
    [result] = results
    assert result.attempted == 3
    assert result.cpu is not None and result.cpu >= 0


def test_each_lane_stops_after_its_own_budget(make: Callable[..., Pylo]) -> None:
    pylo = make(2, max_worker_failures=3)
    execution_id = pylo.start_from_scratch(range(100), always_fail)
    assert Counter(f.worker for f in pylo.get_failures(execution_id)) == {0: 3, 1: 3}
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED and record.failed == 6 and record.pending == 94


def test_two_chunks_out_per_lane_never_exceed_its_budget(make: Callable[..., Pylo]) -> None:
    # Failures spread thinly, so chunks end on their half of the lane's budget
    # and the rest is re-queued: each lane still stops at exactly 20.
    pylo = make(2, max_worker_failures=20)
    execution_id = pylo.start_from_scratch(range(3000), partial(logged, os.devnull, 13))
    assert Counter(f.worker for f in pylo.get_failures(execution_id)) == {0: 20, 1: 20}
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED and record.finished + record.failed + record.pending == 3000


def test_fewer_lanes_than_threads_run_one_task_at_a_time(make: Callable[..., Pylo], tmp_path: Path) -> None:
    log = str(tmp_path / "naps.log")
    pylo = make(1)
    execution_id = pylo.start_from_scratch(range(40), partial(timed_nap, log, 0.01))
    assert pylo.get_state(execution_id) == (list(range(40)), [])
    spans = sorted(tuple(map(float, line.strip("'").split())) for line in calls(log))
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


def test_max_failures_holds_across_the_cluster(make: Callable[..., Pylo]) -> None:
    pylo = make(2, max_failures=4)
    execution_id = pylo.start_from_scratch(range(2000), always_fail)
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED
    assert 4 <= record.failed <= 4 + 2  # documented bound: max_failures + lanes


def test_reaching_max_failures_stops_running_chunks_at_their_next_input(make: Callable[..., Pylo]) -> None:
    # Worker 0 fails input 0 at once; worker 1's first chunk (inputs 8-15)
    # would take 4 s, but the stop pushed to the workers ends it after its current input.
    pylo = make(2, max_failures=1)
    execution_id = pylo.start_from_scratch(range(40), partial(slow_but_zero_fails, 0.5))
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED and record.failed == 1 and record.finished < 7


def test_exceptions_and_results_come_back_from_the_workers(make: Callable[..., Pylo]) -> None:
    pylo = make(2, store_results=True)
    execution_id = pylo.start_from_scratch(range(200), square)
    assert pylo.get_results(execution_id) == [(x, x * x) for x in range(200)]
    failing = pylo.start_from_scratch(range(30), fail_multiples_of_seven)
    assert [str(e) for e in pylo.get_exceptions(failing)] == [f"bad input {x}" for x in range(0, 30, 7)]
    assert {f.exception_type for f in pylo.get_failures(failing)} == {"ValueError"}


def test_inputs_reach_the_task_as_they_are(make: Callable[..., Pylo]) -> None:
    # Dask would run a tuple with a callable first as a task of its own, or
    # look a string up as a key, if inputs were plain arguments of a task.
    inputs: list[Any] = [(abs, -1), {"a": (len, "xy")}, "pylo-chunk-0", [("x", 1)]]
    pylo = make(2, store_results=True)
    execution_id = pylo.start_from_scratch(inputs, repr)
    assert pylo.get_results(execution_id) == [(item, repr(item)) for item in inputs]


def test_retries_run_on_the_workers(make: Callable[..., Pylo], tmp_path: Path) -> None:
    from tenacity import Retrying, stop_after_attempt

    pylo = make(2, retry=Retrying(stop=stop_after_attempt(3), reraise=True))
    execution_id = pylo.start_from_scratch([1, 2, 3], partial(flaky, str(tmp_path / "ok.log"), 3))
    assert pylo.get_state(execution_id) == ([1, 2, 3], [])
    gives_up = pylo.start_from_scratch([4], partial(flaky, str(tmp_path / "no.log"), 5))
    (failure,) = pylo.get_failures(gives_up)
    assert failure.attempts == 3 and failure.exception_type == "ConnectionError"


def test_a_task_past_its_timeout_fails_and_the_rest_completes(make: Callable[..., Pylo], tmp_path: Path) -> None:
    release = tmp_path / "release"
    pylo = make(2, timeout=0.5)
    try:
        execution_id = pylo.start_from_scratch(range(60), partial(hold_until, str(release), 13, 60.0))
        # The run ended while input 13 was still held: it was given up on, not waited for.
        assert not (tmp_path / "release.done").exists()
    finally:
        release.touch()
    assert pylo.get_state(execution_id)[1] == [13]
    (failure,) = pylo.get_failures(execution_id)
    assert failure.exception_type == "pylo.errors.TaskTimeout"
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED


def test_the_rate_limit_holds_across_lanes(make: Callable[..., Pylo], tmp_path: Path) -> None:
    log = str(tmp_path / "starts.log")
    pylo = make(2, rate_limit="20/s")
    execution_id = pylo.start_from_scratch(range(30), partial(started_at, log))
    assert pylo.get_state(execution_id) == (list(range(30)), [])
    starts = sorted(float(line) for line in calls(log))
    # 30 starts at 20/s, each lane at 10/s from an empty bucket. Only lower
    # bounds: a slow machine spreads starts out, it never packs them closer.
    assert starts[-1] - starts[0] >= 1.2
    window = [t for t in starts if t < starts[0] + 0.5]
    assert len(window) <= 20 * 0.5 + 2


def test_an_interrupt_from_a_task_is_saved_and_resumable(make: Callable[..., Pylo]) -> None:
    pylo = make(2)
    with pytest.raises(KeyboardInterrupt):
        pylo.start_from_scratch(range(2000), partial(interrupt_at, 1000), execution_id="cut")
    assert pylo.get_execution("cut").status is ExecutionStatus.INTERRUPTED
    finished, unfinished = pylo.get_state("cut")
    assert 1000 in unfinished and sorted(finished + unfinished) == list(range(2000))
    resumed = pylo.start_from_past_execution("cut", noop)
    assert pylo.get_state(resumed) == (list(range(2000)), [])


def test_an_interrupt_does_not_wait_for_a_stuck_remote_task(make: Callable[..., Pylo], tmp_path: Path) -> None:
    release = tmp_path / "release"
    pylo = make(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            pylo.start_from_scratch(range(1000), partial(hold_or_interrupt, str(release), 0, 500), execution_id="stuck")
        # The coordinator gives lanes 2 s to hand back their chunks, then abandons the stuck one:
        # the run ended while input 0 was still held.
        assert not (tmp_path / "release.done").exists()
    finally:
        release.touch()  # let the held worker thread go
    finished, unfinished = pylo.get_state("stuck")
    assert 0 in unfinished and 500 in unfinished and sorted(finished + unfinished) == list(range(1000))
    assert pylo.get_execution("stuck").status is ExecutionStatus.INTERRUPTED


# -- lost workers ----------------------------------------------------------------


def test_a_worker_killed_mid_chunk_reruns_that_chunk(make: Callable[..., Pylo], tmp_path: Path) -> None:
    marker, log = str(tmp_path / "killed"), str(tmp_path / "calls.log")
    pylo = make(2)
    execution_id = pylo.start_from_scratch(range(200), partial(kill_worker_once, marker, log, 30))
    assert os.path.exists(marker)  # a worker process really died
    # Dask ran the chunk again on another worker: every input finished, once
    # recorded, and the inputs the dead worker had run before 30 ran twice.
    assert pylo.get_state(execution_id) == (list(range(200)), [])
    assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED
    counts = Counter(int(line) for line in calls(log))
    assert counts[30] == 2 and set(counts) == set(range(200)) and max(counts.values()) == 2


@pytest.mark.slow
def test_an_input_that_kills_every_worker_fails_alone_with_worker_crashed(
    make: Callable[..., Pylo], tmp_path: Path
) -> None:
    # The poison runs on a cluster of its own: a worker that dies while its
    # nanny is still starting it is not started again (Dask's rule), so after
    # four deaths under load that cluster may be left with no workers at all.
    # The resume runs on the module's cluster, which the poison never touched.
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        poisoned = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    try:
        with Client(poisoned, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            with Pylo.dask(client, tmp_path / "store", 2, progress=False) as pylo:
                # The poison input comes last, so no other lane has work on the
                # workers it kills: only its own chunk is run one input per task.
                execution_id = pylo.start_from_scratch(range(120), partial(kill_worker_always, 119))
    finally:
        poisoned.close()
    pylo = make(2)
    assert pylo.get_state(execution_id) == (list(range(119)), [119])
    (failure,) = pylo.get_failures(execution_id)
    assert failure.exception_type == "pylo.errors.WorkerCrashed"
    assert "KilledWorker" in (failure.message or "")
    assert failure.attempts == 2  # allowed-failures + 1 deaths of its own task
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.COMPLETED and record.finished == 119 and record.failed == 1
    resumed = pylo.start_from_past_execution(execution_id, noop)
    assert pylo.get_state(resumed) == (list(range(120)), [])


def test_a_function_the_workers_cannot_import_aborts_with_a_clear_error(
    make: Callable[..., Pylo], tmp_path: Path
) -> None:
    # A module only this process can import: the workers' sys.path was fixed when they started.
    (tmp_path / "only_here_task.py").write_text("def task(item):\n    return item\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        from only_here_task import task  # type: ignore[import-not-found]

        pylo = make(2)
        with pytest.raises(PyloError, match="could not run chunk") as raised:
            pylo.start_from_scratch(range(50), task, execution_id="unimportable")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_here_task", None)
    assert "installed on every Dask worker" in str(raised.value)
    record = pylo.get_execution("unimportable")
    assert record.status is ExecutionStatus.ABORTED and record.pending == 50


# -- a cluster with no workers ---------------------------------------------------


@pytest.fixture
def empty_cluster(cluster: Any) -> Iterator[Any]:
    """A scheduler with no workers (in this process), beside the module's cluster (which restores copyreg)."""
    from distributed import LocalCluster

    local = LocalCluster(n_workers=0, processes=False, dashboard_address=":0")
    yield local
    local.close()


class _Said(logging.Handler):
    """Sets an event when a log record's message contains ``words``."""

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words
        self.said = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.said.set()


def test_a_cluster_left_without_workers_stops_the_execution_resumable(
    make: Callable[..., Pylo], empty_cluster: Any, tmp_path: Path
) -> None:
    from distributed import Client

    said = r"has had no workers for \d+ s \(no_workers_timeout=0\.5\)"
    with (
        Client(empty_cluster, set_as_default=False) as idle,
        Pylo.dask(idle, tmp_path / "store", 2, progress=False, no_workers_timeout=0.5) as pylo,
        pytest.raises(PyloError, match=said) as raised,
    ):
        pylo.start_from_scratch(range(20), square, execution_id="no-workers")
    assert f"the Dask cluster at {empty_cluster.scheduler_address} " in str(raised.value)
    assert "Pylo.dask(..., no_workers_timeout=None)" in str(raised.value)
    pylo = make(2)  # the same store, on a cluster with workers
    record = pylo.get_execution("no-workers")
    assert record.status is ExecutionStatus.ABORTED and (record.pending, record.total) == (20, 20)
    shown = subprocess.run(
        [sys.executable, "-m", "pylo", "show", "no-workers", "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    status = next(line for line in shown.stdout.splitlines() if line.startswith("status"))
    assert "aborted (pylo.errors.PyloError: the Dask cluster at" in status and "had no workers" in status, shown
    resumed = pylo.start_from_past_execution("no-workers", square)
    assert pylo.get_state(resumed) == (list(range(20)), [])


def test_workers_that_join_before_the_timeout_run_the_execution(empty_cluster: Any, tmp_path: Path) -> None:
    from distributed import Client

    waiting = _Said("has no workers")
    logging.getLogger("pylo.workers._dask_watchdog").addHandler(waiting)
    try:
        with (
            Client(empty_cluster, set_as_default=False) as idle,
            Pylo.dask(idle, tmp_path / "store", 1, progress=False, no_workers_timeout=120) as pylo,
        ):
            ran: dict[str, str] = {}
            runner = threading.Thread(target=lambda: ran.update(id=pylo.start_from_scratch(range(10), square)))
            runner.start()
            assert waiting.said.wait(60)  # the watchdog saw no workers
            empty_cluster.scale(1)
            runner.join(120)
            assert pylo.get_state(ran["id"]) == (list(range(10)), [])
    finally:
        logging.getLogger("pylo.workers._dask_watchdog").removeHandler(waiting)


def test_no_workers_timeout_is_checked_where_it_is_given(client: Any, tmp_path: Path) -> None:
    for value, error, message in [
        (0, ValueError, "no_workers_timeout must be a finite number of seconds > 0, got 0"),
        (1e10, ValueError, r"no_workers_timeout must be at most 604800 seconds \(one week\), got 1e\+10"),
        ("5m", TypeError, "no_workers_timeout must be a number of seconds > 0, got str '5m'"),
    ]:
        with pytest.raises(error, match=message):
            Pylo.dask(client, tmp_path / "store", no_workers_timeout=value)
    assert not (tmp_path / "store").exists()  # refused before the store was opened
    with Pylo.dask(client, tmp_path / "store", no_workers_timeout=None) as waits_for_ever:
        assert waits_for_ever.backend.no_workers_timeout is None  # type: ignore[attr-defined]
    default = inspect.signature(Pylo.dask).parameters["no_workers_timeout"].default
    assert default == NO_WORKERS_TIMEOUT == 300.0


# -- the client and the function -------------------------------------------------


def test_a_scheduler_address_works_like_a_client(cluster: Any, client: Any, tmp_path: Path) -> None:
    client.wait_for_workers(2, timeout=60)
    pylo = Pylo.dask(cluster.scheduler_address, tmp_path / "store", progress=False)
    try:
        execution_id = pylo.start_from_scratch(range(100), square)
        assert pylo.get_state(execution_id) == (list(range(100)), [])
        assert "workers=2" in repr(pylo)
    finally:
        pylo.close()  # closes the client pylo made from the address
    assert pylo.backend.client.status == "closed"


def test_closing_pylo_leaves_a_client_passed_in_alone(client: Any, tmp_path: Path) -> None:
    Pylo.dask(client, tmp_path / "store", progress=False).close()
    assert client.status == "running"


def test_only_clients_made_from_an_address_are_released(cluster: Any, client: Any) -> None:
    assert DaskBackend.resolve_client(client) is client
    DaskBackend.release_client(client)
    assert client.status == "running"
    made = DaskBackend.resolve_client(cluster.scheduler_address)
    assert made is not client and made.status == "running"
    DaskBackend.release_client(made)
    assert made.status == "closed"


def test_anything_but_a_client_or_an_address_is_a_type_error(cluster: Any, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"client must be a distributed\.Client or a scheduler address"):
        Pylo.dask(42, tmp_path / "store")
    with pytest.raises(TypeError, match=r"pass distributed\.Client\(cluster\)"):
        Pylo.dask(cluster, tmp_path / "store")


def test_a_function_cloudpickle_cannot_send_is_refused_before_anything_is_recorded(make: Callable[..., Pylo]) -> None:
    lock = threading.Lock()

    def holds_a_lock(item: int) -> None:
        with lock:
            pass

    pylo = make(2)
    with pytest.raises(TypeError, match="cannot be sent to Dask workers"):
        pylo.start_from_scratch(range(10), holds_a_lock)
    assert pylo.list_executions() == []


def test_without_dask_the_import_error_says_what_to_install(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["distributed"] = None  # as if it were not installed
        import pylo.workers.dask  # importing the module needs nothing
        from pylo import Pylo
        try:
            Pylo.dask("tcp://127.0.0.1:1", {str(tmp_path / "store")!r})
        except ImportError as exc:
            print("ImportError:", exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert 'pip install ".[dask]" from a checkout of pylo' in done.stdout
    assert "pylo[dask]" not in done.stdout
