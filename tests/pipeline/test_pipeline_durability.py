"""Durability: the flush policy, the store's invariant after every flush, interrupts, crashed runs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from interrupts import InterruptAfter, short_busy_timeout
from pipeline_tasks import (
    AWAITED,
    AWAITING,
    BROKEN,
    SLOW_STARTED,
    SPAWNED,
    SPAWNERS,
    awaits_forever,
    count,
    interrupt,
    slow_item,
    spawns_after,
    spawns_slow,
    step,
    waits,
)

from pylo import PipelineNotFound, PipelineStatus, Pylo, TaskState
from pylo.pipeline import Pipeline, _host, task
from pylo.stores.runs import NodeRow, RunRow, RunStore, RunUpdate

MakePylo = Callable[..., Pylo]


class WatchedRuns(RunStore):
    """Delegates to a real run store; after each write, checks that no done node has an upstream not done."""

    def __init__(self, inner: RunStore) -> None:
        self.inner = inner
        self.location = inner.location
        self.updates: list[RunUpdate] = []

    def create_run(self, run: RunRow, nodes: Sequence[NodeRow]) -> None:
        self.inner.create_run(run, nodes)

    def record_run(self, run_id: str, update: RunUpdate) -> None:
        self.inner.record_run(run_id, update)
        self.updates.append(update)
        rows = {row.key: row for row in self.inner.read_nodes(run_id, results=False)}
        for row in rows.values():
            if row.state == "done":
                assert all(rows[up].state == "done" for up in row.upstream), row.key

    def get_run(self, run_id: str) -> RunRow:
        return self.inner.get_run(run_id)

    def list_runs(self) -> list[RunRow]:
        return self.inner.list_runs()

    def read_nodes(self, run_id: str, *, results: bool = True) -> list[NodeRow]:
        return self.inner.read_nodes(run_id, results=results)


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> list[WatchedRuns]:
    made: list[WatchedRuns] = []
    original = _host.Host.runs

    def runs(self: _host.Host) -> RunStore:
        if not made or made[-1].inner is not original(self):
            made.append(WatchedRuns(original(self)))
        return made[-1]

    monkeypatch.setattr(_host.Host, "runs", runs)
    return made


def chain(length: int) -> Pipeline:
    p = step.send("n0")
    for i in range(1, length):
        p = step.send(f"n{i}", p)
    return p


def test_outcomes_are_flushed_every_n_and_at_the_end(make_pylo: MakePylo, watched: list[WatchedRuns]) -> None:
    p = make_pylo(2, task_executions_before_flush=3, flush_seconds=3600)
    run_id = p.run_pipeline(chain(10))
    updates = watched[-1].updates
    assert [len([r for r in u.nodes if r.state == "done"]) for u in updates] == [3, 3, 3, 1]
    assert [u.status for u in updates] == [None, None, None, "completed"]
    assert p.get_pipeline(run_id).status is PipelineStatus.COMPLETED


def test_failures_cascades_and_soft_failures_keep_the_invariant(
    make_pylo: MakePylo, watched: list[WatchedRuns]
) -> None:
    BROKEN.update({"n3", "m2"})
    p = make_pylo(3, task_executions_before_flush=1)
    soft = step.send("m0")
    for i in range(1, 6):
        soft = step.send(f"m{i}", soft).set(fail_softly=i == 2)
    p.run_pipeline([chain(8), soft])
    # Checked at every update: n0..n3 run one after another, so each ends at a wake of
    # its own and is flushed there (every outcome is a flush), and the end is one more.
    # Outcomes of the two branches may share a wake, so no more is certain.
    assert len(watched[-1].updates) >= 5


def test_an_interrupt_is_recorded_and_the_run_resumes(make_pylo: MakePylo) -> None:
    BROKEN.add("interrupt")
    p = make_pylo(2)

    def flow() -> Pipeline:
        first = step.send("first")
        return step.send("last", interrupt.send(first).set(task_id="interrupt"))

    with pytest.raises(KeyboardInterrupt):
        p.run_pipeline(flow(), run_id="stopped")
    record = p.get_pipeline("stopped")
    assert record.status is PipelineStatus.INTERRUPTED and record.ended_at is not None
    states = {n.key: n.state for n in record.nodes}
    assert states["interrupt"] is TaskState.PENDING
    assert list(states.values()).count(TaskState.DONE) == 1
    BROKEN.clear()
    resumed = p.resume_pipeline("stopped", flow())
    assert p.get_pipeline_result(resumed) == "last"
    assert count("first") == 1 and count("interrupt") == 1


def test_a_running_run_of_a_dead_process_reads_as_crashed(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(step.send("a"))
    runs = p.store.runs()
    row = runs.get_run(run_id)
    gone = _dead_pid()
    runs.create_run(
        RunRow("ghost", None, "ghost", "running", row.created_at, row.created_at, None, "pickle", gone, row.host),
        [NodeRow("a", 0, "m:a", "a")],
    )
    assert p.get_pipeline("ghost").status is PipelineStatus.CRASHED
    assert [r.status for r in p.list_pipelines()] == [PipelineStatus.COMPLETED, PipelineStatus.CRASHED]
    resumed = p.resume_pipeline("ghost", step.send("a").set(task_id="a"))
    assert p.get_pipeline_result(resumed) == "a"


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_resume_refuses_a_run_still_running_here(make_pylo: MakePylo) -> None:
    from pylo.pipeline import PipelineNotResumable

    p = make_pylo()
    run_id = p.run_pipeline(step.send("a"))
    runs = p.store.runs()
    row = runs.get_run(run_id)
    runs.create_run(
        RunRow("live", None, "live", "running", row.created_at, row.created_at, None, "pickle", os.getppid(), row.host),
        [NodeRow("a", 0, "m:a", "a")],
    )
    with pytest.raises(PipelineNotResumable, match="still running"):
        p.resume_pipeline("live", step.send("a"))


def test_a_reader_sees_a_long_node_running_within_flush_seconds(make_pylo: MakePylo) -> None:
    import threading
    import time

    from pylo import PipelineNotFound
    from pylo.pipeline import task

    release = threading.Event()

    @task
    def long_node() -> str:
        assert release.wait(30)
        return "done"

    p = make_pylo(2, flush_seconds=0.05)
    runner = threading.Thread(target=p.run_pipeline, args=(long_node.send(),), kwargs={"run_id": "watched"})
    runner.start()
    try:
        deadline = time.monotonic() + 20
        state = None
        while state is not TaskState.RUNNING:
            assert time.monotonic() < deadline, f"the node never read as running (last: {state})"
            try:
                record = p.get_pipeline("watched")
            except PipelineNotFound:
                continue
            state = record.nodes[0].state
            assert record.status is PipelineStatus.RUNNING
            time.sleep(0.01)
        assert record.nodes[0].started_at is not None
    finally:
        release.set()
        runner.join(30)
    assert p.get_pipeline_result("watched") == "done"


def test_an_interrupt_keeps_the_outcome_of_a_node_that_ended_beside_it(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two nodes end at one wake of the coordinator: the first raised
    # KeyboardInterrupt, the second finished. The finished one is recorded
    # done, not run again by the resume.
    import threading

    from pylo.pipeline import _coordinator

    ended = threading.Event()
    real_take_all = _coordinator.take_all

    def take_all(outbox: Any, timeout: float | None) -> list[Any]:
        found = real_take_all(outbox, timeout)
        if found and not ended.is_set():
            ended.set()  # the interrupt is in: the other node may end now, into the same wake
            found = [*found, outbox.get(timeout=30)]
        return found

    monkeypatch.setattr(_coordinator, "take_all", take_all)
    BROKEN.add("interrupt")
    p = make_pylo(2)

    def flow() -> list[Pipeline]:
        return [interrupt.send().set(task_id="interrupt"), waits.send(ended).set(task_id="beside")]

    with pytest.raises(KeyboardInterrupt):
        p.run_pipeline(flow(), run_id="stopped")
    record = p.get_pipeline("stopped")
    assert record.status is PipelineStatus.INTERRUPTED
    assert {n.key: n.state for n in record.nodes} == {"interrupt": TaskState.PENDING, "beside": TaskState.DONE}
    BROKEN.clear()
    ended.set()
    resumed = p.resume_pipeline("stopped", flow())
    assert p.get_pipeline_result(resumed) == [None, "beside"]
    assert count("beside") == 1 and count("interrupt") == 1


def test_a_child_run_returned_after_an_interrupt_does_not_start_and_frees_its_thread(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One node is interrupted while another is still in its task; that task
    # then returns a pipeline. Its child run is never recorded, so it must not
    # start, and the node's thread must not wait for ever for the record: it
    # gives up and ends like any idle node thread.
    import threading

    from pylo.pipeline import _node_threads

    monkeypatch.setattr(_node_threads, "IDLE_SECONDS", 0.2)
    SPAWNERS.clear()
    SPAWNED.clear()
    gate = threading.Event()
    BROKEN.add("interrupt")
    p = make_pylo(2)

    def flow() -> list[Pipeline]:
        return [interrupt.send().set(task_id="interrupt"), spawns_after.send(gate).set(task_id="spawner")]

    try:
        with pytest.raises(KeyboardInterrupt):
            p.run_pipeline(flow(), run_id="stopped")
    finally:
        gate.set()  # the spawner returns its pipeline now, to a coordinator that has ended
    assert SPAWNED.wait(30)
    (thread,) = SPAWNERS
    thread.join(30)
    assert not thread.is_alive(), "the node thread still waits for its child run to be recorded"
    assert [run.id for run in p.list_pipelines()] == ["stopped"]  # no child run
    record = p.get_pipeline("stopped")
    assert record.status is PipelineStatus.INTERRUPTED
    assert {n.key: n.state for n in record.nodes} == {"interrupt": TaskState.PENDING, "spawner": TaskState.PENDING}
    BROKEN.clear()
    resumed = p.resume_pipeline("stopped", flow())
    assert p.get_pipeline_result(resumed) == [None, "child"]


@pytest.mark.parametrize("moment", ["recording it", "creating it"])
def test_an_interrupt_before_a_child_run_exists_ends_the_run_and_the_resume_runs_the_child(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    # A Ctrl-C in the flush that records a node's child run on the node, or
    # after that flush and before the child run is created: the run ends
    # interrupted, no child run exists, the node's thread is let go, and the
    # resume runs the pipeline the task returned as a new child (the task's
    # body is not called again once its pipeline was recorded).
    import sys
    import threading

    from pylo.pipeline import _api, _coordinator, _node_threads

    monkeypatch.setattr(_node_threads, "IDLE_SECONDS", 0.2)
    SPAWNERS.clear()
    SPAWNED.clear()
    real_flush, real_run = _coordinator.RunCoordinator._flush, _api._run
    if moment == "recording it":

        def flush(self: Any, *args: Any, **kwargs: Any) -> None:
            if sys._getframe(1).f_code.co_name == "_record_child":
                raise KeyboardInterrupt
            real_flush(self, *args, **kwargs)

        monkeypatch.setattr(_coordinator.RunCoordinator, "_flush", flush)
    else:

        def run(*args: Any, **kwargs: Any) -> str:
            if kwargs.get("child_of"):
                raise KeyboardInterrupt
            return real_run(*args, **kwargs)

        monkeypatch.setattr(_api, "_run", run)
    gate = threading.Event()
    gate.set()
    p = make_pylo(2)

    def flow() -> list[Pipeline]:  # two nodes: the spawner runs on a node thread, not on the coordinator's
        return [spawns_after.send(gate).set(task_id="spawner"), step.send("beside")]

    with pytest.raises(KeyboardInterrupt):
        p.run_pipeline(flow(), run_id="stopped")
    assert SPAWNED.wait(30)
    (thread,) = SPAWNERS
    thread.join(30)
    assert not thread.is_alive(), "the node thread still waits for its child run to be recorded"
    assert [run.id for run in p.list_pipelines()] == ["stopped"]
    assert p.get_pipeline("stopped").status is PipelineStatus.INTERRUPTED
    monkeypatch.setattr(_coordinator.RunCoordinator, "_flush", real_flush)
    monkeypatch.setattr(_api, "_run", real_run)
    # The node's row kept the pipeline its task returned, and a child id never
    # created: the resume runs that pipeline as a new child, without the task.
    assert p.get_pipeline_result(p.resume_pipeline("stopped", flow())) == ["child", "beside"]
    assert len(SPAWNERS) == 1


def test_an_interrupt_cancels_a_running_async_task_and_frees_its_node_thread(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An async def node is awaiting when another node raises KeyboardInterrupt:
    # its coroutine is cancelled (its own clean-up runs), and the node thread
    # waiting for it is let go, instead of waiting for ever on a stopped loop.
    import threading

    from pylo.pipeline import _executors, _node_threads

    monkeypatch.setattr(_node_threads, "IDLE_SECONDS", 0.2)
    waiting: list[threading.Thread] = []  # the node thread that waits for the async task
    call_on_loop = _executors.CallRunner._call_on_loop

    def recording(self: Any, *args: Any) -> Any:
        waiting.append(threading.current_thread())
        return call_on_loop(self, *args)

    monkeypatch.setattr(_executors.CallRunner, "_call_on_loop", recording)
    AWAITING.clear()
    AWAITED.clear()
    p = make_pylo(2)

    @task
    def interrupt_once_awaiting() -> None:
        assert AWAITING.wait(30)
        raise KeyboardInterrupt

    flow = [awaits_forever.send().set(task_id="awaits"), interrupt_once_awaiting.send().set(task_id="interrupt")]
    with pytest.raises(KeyboardInterrupt):
        p.run_pipeline(flow, run_id="stopped")
    assert AWAITED == ["cancelled"]
    (thread,) = waiting
    thread.join(30)  # it ends IDLE_SECONDS after its last node
    assert not thread.is_alive(), "the node thread still waits for the async task"
    record = p.get_pipeline("stopped")
    assert record.status is PipelineStatus.INTERRUPTED
    assert {n.key: n.state for n in record.nodes} == {"awaits": TaskState.PENDING, "interrupt": TaskState.PENDING}


def ctrl_c_in_the_caller_s_coordinator_once_slow_items_run(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """From now on, KeyboardInterrupt in the calling thread's coordinator at its first wait after a
    ``slow_item`` input ran, once, as a Ctrl-C would land there (coordinators of child runs, on node
    threads, are left alone). Returns what takes the patch off.
    """
    import threading

    from pylo.pipeline import _coordinator

    real_take_all = _coordinator.take_all
    raised: list[bool] = []
    caller = threading.current_thread()

    def take_all(outbox: Any, timeout: float | None) -> list[Any]:
        if SLOW_STARTED.is_set() and not raised and threading.current_thread() is caller:
            raised.append(True)
            raise KeyboardInterrupt
        return real_take_all(outbox, timeout)

    monkeypatch.setattr(_coordinator, "take_all", take_all)
    SLOW_STARTED.clear()
    return lambda: monkeypatch.setattr(_coordinator, "take_all", real_take_all)


def test_an_interrupt_stops_a_batch_node_running_beside_the_coordinator(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C lands in the coordinator's thread while a batch node runs its
    # execution on a node thread: the execution stops taking inputs and ends
    # with the run (resumable), instead of running on unseen, and a resume
    # at once finishes it, running each input that did not finish once.
    from pylo import ExecutionStatus

    undo = ctrl_c_in_the_caller_s_coordinator_once_slow_items_run(monkeypatch)
    p = make_pylo(2)
    total_inputs = 1000

    def flow() -> list[Pipeline]:  # two nodes: the batch node runs on a node thread
        return [slow_item.map(range(total_inputs)).set(task_id="batch"), step.send("beside")]

    with pytest.raises(KeyboardInterrupt):
        p.run_pipeline(flow(), run_id="stopped")
    undo()
    record = p.get_pipeline("stopped")
    assert record.status is PipelineStatus.INTERRUPTED
    batch = next(node for node in record.nodes if node.key == "batch")
    assert batch.state is TaskState.PENDING and batch.execution_id is not None
    execution = p.get_execution(batch.execution_id)
    assert execution.status is ExecutionStatus.STOPPED, execution.status  # ended, not running on
    assert 0 < execution.finished < total_inputs
    ran_first = count("slow")
    resumed = p.resume_pipeline("stopped", flow())
    assert p.get_pipeline_result(resumed) == [list(range(total_inputs)), "beside"]
    assert count("slow") - ran_first == total_inputs - execution.finished


def test_an_interrupt_ends_a_child_run_in_progress_and_the_resume_resumes_it(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C lands in the parent run's coordinator while a child run (a
    # task returned a pipeline) runs its batch node: the child run ends
    # interrupted with it, its execution stopped, instead of running on
    # unseen; a resume of the parent at once resumes the child, which runs
    # each input that did not finish once.
    from pylo import ExecutionStatus

    undo = ctrl_c_in_the_caller_s_coordinator_once_slow_items_run(monkeypatch)  # the parent's, not the child's
    p = make_pylo(2)
    total_inputs = 1000

    def flow() -> list[Pipeline]:  # two nodes: the spawner runs on a node thread
        return [spawns_slow.send(total_inputs).set(task_id="spawner"), step.send("beside")]

    with pytest.raises(KeyboardInterrupt):
        p.run_pipeline(flow(), run_id="stopped")
    undo()
    assert p.get_pipeline("stopped").status is PipelineStatus.INTERRUPTED
    spawner = next(node for node in p.get_pipeline("stopped").nodes if node.key == "spawner")
    assert spawner.child_run_id is not None
    child = p.get_pipeline(spawner.child_run_id)
    assert child.status is PipelineStatus.INTERRUPTED, child.status  # ended with its parent
    (slow,) = child.nodes
    assert slow.state is TaskState.PENDING and slow.execution_id is not None
    execution = p.get_execution(slow.execution_id)
    assert execution.status is ExecutionStatus.STOPPED and 0 < execution.finished < total_inputs
    ran_first = count("slow")
    resumed = p.resume_pipeline("stopped", flow())
    assert p.get_pipeline_result(resumed) == [list(range(total_inputs)), "beside"]
    assert count("slow") - ran_first == total_inputs - execution.finished


def test_an_interrupt_of_a_lone_batch_node_on_the_coordinator_s_thread_is_not_waited_for(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lone batch node runs on the coordinator's own thread; an interrupt
    # that ends it there, with no outcome sent, means nothing is left
    # running: the interrupted run does not wait for it (only batch nodes on
    # node threads are waited for), so it ends at once.
    from pylo.pipeline import _coordinator, _lone_node

    def interrupted_keeper(self: Any) -> None:  # the alarm of the node's execution: as a Ctrl-C there
        self._keeper_error = KeyboardInterrupt()

    monkeypatch.setattr(_lone_node.LoneNode, "_watch_from_node", interrupted_keeper)
    real_take_all = _coordinator.take_all
    waits: list[float | None] = []

    def take_all(outbox: Any, timeout: float | None) -> list[Any]:
        waits.append(timeout)
        return real_take_all(outbox, timeout)

    monkeypatch.setattr(_coordinator, "take_all", take_all)
    p = make_pylo(2, flush_seconds=0.05)
    with pytest.raises(KeyboardInterrupt):
        p.run_pipeline(slow_item.map(range(100)).set(task_id="batch"), run_id="stopped")
    assert waits == [0.0], waits  # _stop_early's one look at the outbox, and no wait for the node
    assert p.get_pipeline("stopped").status is PipelineStatus.INTERRUPTED
    monkeypatch.undo()
    resumed = p.resume_pipeline("stopped", slow_item.map(range(100)).set(task_id="batch"))
    assert p.get_pipeline_result(resumed) == list(range(100))


@pytest.mark.parametrize("nth", range(1, 25))
def test_an_interrupt_at_any_statement_of_a_run_ends_it_interrupted_and_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    # A Ctrl-C raised right after the nth statement SQLAlchemy sends for a
    # pipeline run (its tables made, the executions of its batch node...): the
    # run ends interrupted, or completed if it got there first, or never
    # existed, and never reads as crashed; a resume completes it.
    short_busy_timeout(monkeypatch)
    p = Pylo.local_multithread(tmp_path / "store", 2, flush_seconds=0.01, progress=False)
    interrupt = InterruptAfter(p.store._engine, nth)  # type: ignore[attr-defined]

    def flow() -> list[Pipeline]:
        first = step.send("a")
        return [step.send("b", first), step.send("c", first), step.map(["x", "y", "z"])]

    try:
        p.run_pipeline(flow(), run_id="r")
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    interrupt.armed = False
    try:
        status = p.get_pipeline("r").status
    except PipelineNotFound:  # interrupted before the run was recorded
        assert interrupted
        p.close()
        return
    assert status is (PipelineStatus.INTERRUPTED if interrupted else PipelineStatus.COMPLETED), interrupt.sent[-1:]
    last = p.resume_pipeline("r", flow()) if interrupted else "r"
    assert p.get_pipeline_result(last) == ["b", "c", ["x", "y", "z"]]
    p.close()
