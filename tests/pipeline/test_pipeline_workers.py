"""Nodes run on the Pylo's kind of workers: worker processes, an event loop, a Dask cluster."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_tasks import (
    add,
    async_double,
    async_square,
    fail_with,
    interrupts_once_file_exists,
    pid_of,
    scaled,
    sleeps_after_writing_pid,
    sleepy,
    total,
)

from pylo import PipelineStatus, Pylo, TaskState
from pylo.pipeline import in_parallel


@pytest.fixture
def process_pylo(tmp_path: Path) -> Iterator[Pylo]:
    with Pylo.local_multiprocess(tmp_path / "store", 2, start_method="spawn", progress=False) as pylo:
        yield pylo


def test_plain_nodes_run_in_worker_processes(process_pylo: Pylo) -> None:
    run_id = process_pylo.run_pipeline([pid_of.send(), add.send(add.send(1, 2), 3)])
    worker_pid, value = process_pylo.get_pipeline_result(run_id)
    assert worker_pid != os.getpid() and value == 6


def test_failures_and_timeouts_in_worker_processes_are_recorded(process_pylo: Pylo) -> None:
    run_id = process_pylo.run_pipeline([fail_with.send("boom"), sleepy.send(5).set(timeout=0.3)])
    failed, timed_out = process_pylo.get_pipeline(run_id).nodes
    assert failed.state is TaskState.FAILED and failed.failure is not None
    assert isinstance(failed.failure.exception, ValueError) and failed.failure.message == "boom"
    assert timed_out.state is TaskState.FAILED and timed_out.failure is not None
    assert timed_out.failure.exception_type == "pylo.errors.TaskTimeout"


def test_an_interrupt_raised_in_a_worker_process_ends_the_run_and_the_other_node_s_process(
    process_pylo: Pylo, tmp_path: Path
) -> None:
    # A node's task raises KeyboardInterrupt in its worker process while
    # another node sleeps in the other: the caller gets the KeyboardInterrupt
    # itself, the run ends interrupted, and the process still in a node is
    # ended rather than left to finish (the interpreter would wait for it at
    # exit); a resume runs both nodes again.
    import psutil

    pid_file = str(tmp_path / "sleeper.pid")
    flow = [
        sleeps_after_writing_pid.send(pid_file, 120).set(task_id="sleeper"),
        interrupts_once_file_exists.send(pid_file).set(task_id="interrupter"),
    ]
    with pytest.raises(KeyboardInterrupt, match=r"sleeper\.pid exists"):
        process_pylo.run_pipeline(flow, run_id="stopped")
    sleeper = int(Path(pid_file).read_text())
    assert sleeper != os.getpid()

    def ended() -> bool:  # gone, or dead and not yet reaped by the pool
        try:
            return psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    pause = threading.Event()
    for _ in range(300):
        if ended():
            break
        pause.wait(0.1)
    assert ended(), "the worker process still in a node was left running"
    record = process_pylo.get_pipeline("stopped")
    assert record.status is PipelineStatus.INTERRUPTED
    assert {node.key: node.state for node in record.nodes} == {
        "sleeper": TaskState.PENDING,
        "interrupter": TaskState.PENDING,
    }


def test_batch_nodes_run_as_executions_on_worker_processes(process_pylo: Pylo) -> None:
    run_id = process_pylo.run_pipeline(total.send(scaled.map(range(20), 2, offset=1)))
    assert process_pylo.get_pipeline_result(run_id) == sum(2 * i + 1 for i in range(20))


def test_an_asyncio_pylo_runs_async_and_plain_tasks_and_batches(tmp_path: Path) -> None:
    with Pylo.local_asyncio(tmp_path / "store", 4, progress=False) as pylo:
        flow = in_parallel(
            [
                async_double.send(add.send(1, 2)),
                total.send(async_square.map(range(5))),
                total.send(scaled.map(range(5), 3)),  # a plain task's batch runs on threads
            ]
        )
        assert pylo.get_pipeline_result(pylo.run_pipeline(flow)) == [6, 30, 30]


def test_async_task_timeouts_cancel_the_task(tmp_path: Path) -> None:
    from pylo.pipeline import task

    @task(timeout=0.2)
    async def forever() -> None:
        import asyncio

        await asyncio.sleep(30)

    with Pylo.local_multithread(tmp_path / "store", 2) as pylo:
        node = pylo.get_pipeline(pylo.run_pipeline(forever.send())).nodes[0]
        assert node.state is TaskState.FAILED and node.failure is not None
        assert node.failure.exception_type == "pylo.errors.TaskTimeout"


def test_nodes_and_batches_run_on_a_dask_cluster(dask_client: Any, tmp_path: Path) -> None:
    with Pylo.dask(dask_client, tmp_path / "store", 2, progress=False) as pylo:
        run_id = pylo.run_pipeline([pid_of.send(), total.send(scaled.map(range(10), 2))])
        worker_pid, value = pylo.get_pipeline_result(run_id)
        assert worker_pid != os.getpid() and value == 90


def test_nodes_fail_on_a_dask_cluster_left_without_workers_and_a_resume_runs_them(
    dask_client: Any, tmp_path: Path
) -> None:
    from distributed import Client, LocalCluster

    flow = [pid_of.send(), total.send(scaled.map(range(10), 2))]
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty,
        Client(empty, set_as_default=False) as idle,
        Pylo.dask(idle, tmp_path / "store", 2, progress=False, no_workers_timeout=0.5) as pylo,
    ):
        run_id = pylo.run_pipeline(flow)
        call, batch, _ = pylo.get_pipeline(run_id).nodes  # the batch node's execution was aborted
    for node in (call, batch):
        assert node.state is TaskState.FAILED and node.failure is not None
        assert f"the Dask cluster at {empty.scheduler_address} has had no workers" in node.failure.message
    with Pylo.dask(dask_client, tmp_path / "store", 2, progress=False) as pylo:
        worker_pid, value = pylo.get_pipeline_result(pylo.resume_pipeline(run_id, flow))
        assert worker_pid != os.getpid() and value == 90


def test_a_worker_process_that_dies_fails_only_its_node(process_pylo: Pylo) -> None:
    from pipeline_tasks import die

    dead = die.send()
    after = add.send(1, 2).set(propagate_soft_failures=False).after(dead.set(fail_softly=True))
    run_id = process_pylo.run_pipeline([dead, after], max_parallel=1)
    died, also_died, survived = (n.state for n in process_pylo.get_pipeline(run_id).nodes)
    assert died is TaskState.FAILED and also_died is TaskState.FAILED_SOFTLY
    node = process_pylo.get_pipeline(run_id).nodes[0]
    assert node.failure is not None and node.failure.exception_type == "pylo.errors.WorkerCrashed"
    assert survived is TaskState.DONE


def test_async_tasks_retry_with_async_retrying_and_count_attempts(tmp_path: Path) -> None:
    from tenacity import AsyncRetrying, stop_after_attempt

    from pylo.pipeline import task

    tries: list[int] = []

    @task(retry=AsyncRetrying(stop=stop_after_attempt(3), reraise=True))
    async def flaky() -> int:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("try again")
        return len(tries)

    @task(retry=AsyncRetrying(stop=stop_after_attempt(2), reraise=True))
    async def hopeless() -> None:
        raise ConnectionError("never")

    with Pylo.local_multithread(tmp_path / "store", 2) as pylo:
        run_id = pylo.run_pipeline([flaky.send(), hopeless.send()])
        ok, failed = pylo.get_pipeline(run_id).nodes
        assert ok.state is TaskState.DONE and ok.attempts == 3
        assert failed.state is TaskState.FAILED and failed.attempts == 2
        assert failed.failure is not None and not hasattr(failed.failure.exception, "pylo_attempts")
