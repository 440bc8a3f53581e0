"""Pause, unpause and cancel: requests from another thread (or process) taken up by the running coordinator."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import control_tasks
import pytest
from control_tasks import STARTED, gate, gated_item, in_background, step, until

from pylo import ExecutionStatus, PipelineStatus, Pylo, TaskState
from pylo.errors import PipelineValidationError
from pylo.pipeline import in_parallel
from pylo.pipeline._errors import PipelineCancelled, PipelineControlError, PipelineNotCompleted

MakePylo = Callable[..., Pylo]
WAIT = 30


def abc() -> Any:
    """a -> b (gated) -> c"""
    return step.send("c", step.send("b", step.send("a")))


def test_pause_then_unpause_completes_the_same_run(make_pylo: MakePylo) -> None:
    p = make_pylo()
    reached, opened = gate("b")
    flow = abc()
    thread, box = in_background(lambda: p.run_pipeline(flow, run_id="nightly"))
    assert reached.wait(WAIT)
    p.pause_pipeline("nightly")
    opened.set()  # b finishes; c must not start
    thread.join(WAIT)
    assert box == ["nightly"]
    record = p.get_pipeline("nightly")
    assert record.status is PipelineStatus.PAUSED
    assert [n.state for n in record.nodes] == [TaskState.DONE, TaskState.DONE, TaskState.PENDING]
    assert STARTED == ["a", "b"]
    with pytest.raises(PipelineNotCompleted):
        p.get_pipeline_result("nightly")

    assert p.unpause_pipeline("nightly", flow) == "nightly"
    assert STARTED == ["a", "b", "c"]
    assert p.get_pipeline("nightly").status is PipelineStatus.COMPLETED
    assert p.get_pipeline_result("nightly") == "c"
    assert [r.id for r in p.list_pipelines()] == ["nightly"]


def test_cancel_while_running_ends_what_did_not_start_cancelled(make_pylo: MakePylo) -> None:
    p = make_pylo()
    reached, opened = gate("b")
    thread, box = in_background(lambda: p.run_pipeline(abc(), run_id="r"))
    assert reached.wait(WAIT)
    p.cancel_pipeline("r")
    runs = p.store.runs()
    # Taken up while b, alone, still runs (on the coordinator's own thread: its keeper looks).
    assert until(lambda: runs.get_run("r").options.get("halt") == "cancel")
    opened.set()
    thread.join(WAIT)
    assert box == ["r"]
    record = p.get_pipeline("r")
    assert record.status is PipelineStatus.CANCELLED
    assert [n.state for n in record.nodes] == [TaskState.DONE, TaskState.DONE, TaskState.CANCELLED]
    assert STARTED == ["a", "b"]
    with pytest.raises(PipelineCancelled, match="'r'"):
        p.get_pipeline_result("r")


def test_cancel_while_paused(make_pylo: MakePylo) -> None:
    p = make_pylo()
    reached, opened = gate("b")
    thread, _ = in_background(lambda: p.run_pipeline(abc(), run_id="r"))
    assert reached.wait(WAIT)
    p.pause_pipeline("r")
    opened.set()
    thread.join(WAIT)
    assert p.get_pipeline("r").status is PipelineStatus.PAUSED
    p.cancel_pipeline("r")
    record = p.get_pipeline("r")
    assert record.status is PipelineStatus.CANCELLED
    assert record.node(record.nodes[2].key).state is TaskState.CANCELLED
    assert STARTED == ["a", "b"]
    with pytest.raises(PipelineControlError, match="it is cancelled"):
        p.unpause_pipeline("r", abc())


def test_control_is_refused_unless_running_or_paused(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(step.send("a"))
    for action in (p.pause_pipeline, p.cancel_pipeline):
        with pytest.raises(PipelineControlError, match="it is completed, and only a running or paused run can be"):
            action(run_id)
    with pytest.raises(PipelineControlError, match="only a paused run can be"):
        p.unpause_pipeline(run_id, step.send("a"))


def test_a_paused_batch_node_stops_taking_inputs_and_resumes_only_the_rest(make_pylo: MakePylo) -> None:
    p = make_pylo(1, task_executions_before_flush=1)
    reached, opened = gate("item")
    flow = step.send("after", gated_item.map(list(range(40))))
    thread, _ = in_background(lambda: p.run_pipeline(flow, run_id="b"))
    assert reached.wait(WAIT)
    p.pause_pipeline("b")
    opened.set()
    thread.join(WAIT)
    record = p.get_pipeline("b")
    assert record.status is PipelineStatus.PAUSED
    assert [n.state for n in record.nodes] == [TaskState.PENDING, TaskState.PENDING]
    ran_before = [name for name in STARTED if name.startswith("item")]
    assert len(ran_before) < 40
    (batch,) = p.list_executions()  # the batch node's execution says why it stopped
    assert (batch.status, batch.stop_reason) == (ExecutionStatus.STOPPED, "stop_requested")

    control_tasks.WAIT_AT.clear()
    try:
        p.unpause_pipeline("b", flow)
    finally:
        control_tasks.WAIT_AT.add(5)
    assert p.get_pipeline_result("b") == "after"
    items = [name for name in STARTED if name.startswith("item")]
    # Every input ran; those finished before the pause did not run again.
    assert sorted(set(items), key=lambda n: int(n[4:])) == [f"item{i}" for i in range(40)]
    assert len(items) <= 40 + 1  # at most the input cut short at the pause runs twice
    assert STARTED[-1] == "after"


def test_wait_on_a_node_pauses_before_what_waits_for_it(make_pylo: MakePylo) -> None:
    p = make_pylo()
    flow = step.send("c", step.send("b", step.send("a").wait()))
    run_id = p.run_pipeline(flow)
    assert p.get_pipeline(run_id).status is PipelineStatus.PAUSED
    assert STARTED == ["a"]
    p.unpause_pipeline(run_id, flow)
    assert STARTED == ["a", "b", "c"]  # the wait does not pause the run again
    assert p.get_pipeline_result(run_id) == "c"


def test_wait_on_a_node_in_a_group_lets_its_siblings_run(make_pylo: MakePylo) -> None:
    p = make_pylo(1)
    flow = step.send("after", in_parallel([step.send("a").wait(), step.send("b")]))
    run_id = p.run_pipeline(flow, max_parallel=1)
    assert p.get_pipeline(run_id).status is PipelineStatus.PAUSED
    assert STARTED == ["a", "b"]
    p.unpause_pipeline(run_id, flow)
    assert STARTED == ["a", "b", "after"]


def test_wait_on_a_group_pauses_once_all_its_members_end(make_pylo: MakePylo) -> None:
    p = make_pylo()
    flow = step.send("after", in_parallel([step.send("a"), step.send("b")]).wait())
    run_id = p.run_pipeline(flow)
    assert p.get_pipeline(run_id).status is PipelineStatus.PAUSED
    assert sorted(STARTED) == ["a", "b"]
    p.unpause_pipeline(run_id, flow)
    assert STARTED[-1] == "after" and p.get_pipeline_result(run_id) == "after"


def test_cancel_while_running_still_runs_finally_do_once_with_the_cancellation(make_pylo: MakePylo) -> None:
    p = make_pylo()
    reached, opened = gate("b")
    flow = abc().finally_do(control_tasks.cleanup)
    thread, box = in_background(lambda: p.run_pipeline(flow, run_id="r"))
    assert reached.wait(WAIT)
    p.cancel_pipeline("r")
    opened.set()
    thread.join(WAIT)
    assert box == ["r"]
    assert STARTED == ["a", "b", "cleanup"]  # c never starts; the finally_do task runs once
    [received] = control_tasks.RECEIVED
    assert isinstance(received, PipelineCancelled) and received.run_id == "r"
    record = p.get_pipeline("r")
    assert record.status is PipelineStatus.CANCELLED
    assert [n.state for n in record.nodes] == [TaskState.DONE, TaskState.DONE, TaskState.CANCELLED, TaskState.DONE]
    with pytest.raises(PipelineCancelled, match="'r'"):
        p.get_pipeline_result("r")


def test_cancel_before_a_queued_finally_do_starts_it_still_runs(make_pylo: MakePylo) -> None:
    """One worker: the finally_do of the second pipeline waits in the queue when the cancel comes."""
    p = make_pylo(1)
    reached, opened = gate("b")
    flow = [abc(), step.send("b2", step.send("a2")).finally_do(control_tasks.cleanup)]
    thread, _ = in_background(lambda: p.run_pipeline(flow, run_id="r", max_parallel=1))
    assert reached.wait(WAIT)
    p.cancel_pipeline("r")
    opened.set()
    thread.join(WAIT)
    assert p.get_pipeline("r").status is PipelineStatus.CANCELLED
    assert "c" not in STARTED
    assert STARTED.count("cleanup") == 1
    [received] = control_tasks.RECEIVED
    assert isinstance(received, PipelineCancelled)


def test_cancel_while_paused_runs_finally_do_once_given_the_pipeline(make_pylo: MakePylo) -> None:
    """A paused run has no coordinator: its finally_do runs only if the cancel is given the pipeline."""
    p = make_pylo()
    flow = step.send("b", step.send("a").wait()).finally_do(control_tasks.cleanup)
    run_id = p.run_pipeline(flow)
    assert p.get_pipeline(run_id).status is PipelineStatus.PAUSED
    with pytest.raises(PipelineControlError, match=r"finally_do \(cleanup-\w+\) must still run: give the pipeline"):
        p.cancel_pipeline(run_id)
    assert p.get_pipeline(run_id).status is PipelineStatus.PAUSED  # nothing changed
    with pytest.raises(PipelineValidationError, match="cancel it with the pipeline it was started with"):
        p.cancel_pipeline(run_id, abc())
    p.cancel_pipeline(run_id, flow)  # blocks while the finally_do runs
    record = p.get_pipeline(run_id)
    assert record.status is PipelineStatus.CANCELLED
    assert [n.state for n in record.nodes] == [TaskState.DONE, TaskState.CANCELLED, TaskState.DONE]
    assert STARTED == ["a", "cleanup"]
    [received] = control_tasks.RECEIVED
    assert isinstance(received, PipelineCancelled) and received.run_id == run_id
    with pytest.raises(PipelineCancelled):
        p.get_pipeline_result(run_id)
    with pytest.raises(PipelineControlError, match="it is cancelled"):
        p.cancel_pipeline(run_id, flow)
    assert STARTED.count("cleanup") == 1


def test_cancel_while_paused_without_finally_do_needs_no_pipeline(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(step.send("b", step.send("a").wait()))
    p.cancel_pipeline(run_id)
    record = p.get_pipeline(run_id)
    assert record.status is PipelineStatus.CANCELLED
    assert [n.state for n in record.nodes] == [TaskState.DONE, TaskState.CANCELLED]


def halt_of(p: Pylo, run_id: str) -> Any:
    return p.store.runs().get_run(run_id).options.get("halt")


def test_cancel_reaches_a_running_child_run_which_a_resume_resumes(make_pylo: MakePylo) -> None:
    p = make_pylo()
    reached, opened = gate("child-gated")
    flow = control_tasks.spawn_gated.send()
    thread, box = in_background(lambda: p.run_pipeline(flow, run_id="r"))
    assert reached.wait(WAIT)
    child = p.get_pipeline("r").nodes[0].child_run_id
    assert child is not None
    p.cancel_pipeline("r")
    deadline = time.monotonic() + WAIT
    while halt_of(p, child) != "cancel":  # the child took its parent's cancel up: child-after never starts
        assert time.monotonic() < deadline, "the child run never heard of the cancel"
        time.sleep(0.01)
    opened.set()
    thread.join(WAIT)
    assert box == ["r"] and "child-after" not in STARTED
    record = p.get_pipeline("r")
    assert record.status is PipelineStatus.CANCELLED and record.nodes[0].state is TaskState.CANCELLED
    assert p.get_pipeline(child).status is PipelineStatus.CANCELLED
    resumed = p.resume_pipeline("r", flow)  # resumes the child: the parent's task does not run again
    assert p.get_pipeline_result(resumed) == "child-after"
    assert STARTED == ["parent", "child-gated", "child-after"]
