"""A run's node threads end with it: once ``run_pipeline`` returns, no pylo node (or keeper) thread is alive.

(A process that forks after a run must not be multi-threaded: Python 3.12
warns about ``os.fork()`` there, and a child forked while a thread held a
lock can hang.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from compose_tasks import spawn

from pylo import PipelineStatus, Pylo
from pylo.pipeline import in_parallel, task

#: Nodes of one run that wait for each other, so the run needs that many threads at once.
TOGETHER = 3
_meet = threading.Barrier(TOGETHER, timeout=30)
_release_slow = threading.Event()
_slow_started = threading.Event()


@task
def meet(name: str) -> str:
    _meet.wait()
    return name


@task
def echo(value: object) -> object:
    return value


@task
def slow(name: str) -> str:
    _slow_started.set()
    assert _release_slow.wait(30), "the test never released the slow node"
    return name


#: Node threads still in a node of an earlier test's run when this test began: not this test's.
_earlier: set[threading.Thread] = set()


def node_threads() -> list[threading.Thread]:
    """pylo's node threads (and keeper) alive now, but for those of earlier tests' runs."""
    mine = ("pylo-node-", "pylo-keeper")
    return [t for t in threading.enumerate() if t.name.startswith(mine) and t not in _earlier]


@pytest.fixture
def pylo(tmp_path: Path) -> Iterator[Pylo]:
    # A thread an earlier test left in a node (an abandoned task) ends once
    # that node ends and no other comes within 2 s: joined, not slept on.
    _earlier.clear()
    for thread in node_threads():
        thread.join(10)
    _earlier.update(node_threads())
    _meet.reset()
    _release_slow.clear()
    _slow_started.clear()
    with Pylo.local_multithread(tmp_path / "store", number_of_workers=2, progress=False) as made:
        yield made


def test_no_node_thread_outlives_the_run(pylo: Pylo) -> None:
    flow = in_parallel([meet.send(f"n{i}") for i in range(TOGETHER)])
    run_id = pylo.run_pipeline(flow, max_parallel=TOGETHER)
    assert pylo.get_pipeline_result(run_id) == ["n0", "n1", "n2"]  # three threads at once
    assert node_threads() == []


def test_a_child_run_leaves_the_threads_to_its_parent_and_the_parent_releases_them(pylo: Pylo) -> None:
    # spawn returns a pipeline: it runs as a child run, in the parent's node thread.
    run_id = pylo.run_pipeline(spawn.send(7, False).with_initial(state={"parent": 1}).continue_with(echo))
    assert pylo.get_pipeline(run_id).status is PipelineStatus.COMPLETED
    assert node_threads() == []


def test_a_run_that_ends_while_another_runs_leaves_it_its_threads(pylo: Pylo) -> None:
    other: dict[str, str] = {}

    def run_slow() -> None:
        # Two nodes at once, so they run on node threads (a lone node runs on the run's own thread).
        other["run_id"] = pylo.run_pipeline(in_parallel([slow.send("slow"), echo.send("beside")]))

    runner = threading.Thread(target=run_slow)
    runner.start()
    try:
        assert _slow_started.wait(30)
        quick = pylo.run_pipeline(echo.send("quick"))  # ends while the slow run has a node running
        assert pylo.get_pipeline_result(quick) == "quick"
        assert len(node_threads()) >= 1  # the slow run's node thread is left running
    finally:
        _release_slow.set()
        runner.join(30)
    assert pylo.get_pipeline_result(other["run_id"]) == ["slow", "beside"]
    assert node_threads() == []
