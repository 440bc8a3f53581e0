"""A batch node is an execution on the Pylo's workers: the Pylo's initializer sets them up."""

from __future__ import annotations

import threading
from pathlib import Path

from pylo import PipelineStatus, Pylo, TaskState
from pylo.pipeline import task

_LOCAL = threading.local()
SET_UP: list[str] = []
REACHABLE = threading.Event()


def open_connection(name: str) -> None:
    if not REACHABLE.is_set():
        raise ConnectionRefusedError(f"cannot reach {name}")
    _LOCAL.connection = f"{name} for {threading.current_thread().name}"
    SET_UP.append(_LOCAL.connection)


@task
def look_up(item: int) -> tuple[int, str]:
    return item, _LOCAL.connection


def test_a_batch_node_runs_on_workers_set_up_by_the_pylos_initializer(tmp_path: Path) -> None:
    flow = look_up.map(range(40))
    with Pylo.local_multithread(
        tmp_path / "store", 2, initializer=open_connection, initargs=("db",), progress=False
    ) as pylo:
        REACHABLE.clear()
        first = pylo.run_pipeline(flow)
        (node,) = pylo.get_pipeline(first).nodes
        assert node.state is TaskState.FAILED and node.failure is not None
        assert "open_connection failed" in node.failure.message
        assert node.execution_id is not None and pylo.get_execution(node.execution_id).pending == 40

        REACHABLE.set()
        SET_UP.clear()
        second = pylo.resume_pipeline(first, flow)
        assert pylo.get_pipeline(second).status is PipelineStatus.COMPLETED
        result = pylo.get_pipeline_result(second)
    assert [item for item, _ in result] == list(range(40))
    assert 1 <= len(SET_UP) <= 2 and {connection for _, connection in result} <= set(SET_UP)
