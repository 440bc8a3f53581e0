"""Hooks: every event, in order, with the right records; a raising hook cancels the run."""

from __future__ import annotations

import threading
from collections.abc import Callable

import control_tasks
import pytest
from control_tasks import STARTED, flaky, step
from tenacity import Retrying, stop_after_attempt

from pylo import PipelineStatus, Pylo, TaskState
from pylo.pipeline.hooks import HOOK_METHODS, PipelineEvent

MakePylo = Callable[..., Pylo]


class Recorder:
    """Records every event it gets, from whatever thread."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []
        self.threads: set[str] = set()

    def __getattr__(self, name: str) -> Callable[[PipelineEvent], None]:
        if name not in HOOK_METHODS:
            raise AttributeError(name)

        def record(event: PipelineEvent) -> None:
            assert event.kind == name
            self.threads.add(threading.current_thread().name)
            self.events.append(event)

        return record

    def summary(self) -> list[tuple[str, str | None, str | None]]:
        return [(e.kind, e.display_name, e.state) for e in self.events]


def test_a_successful_run(make_pylo: MakePylo) -> None:
    p = make_pylo()
    hook = Recorder()
    run_id = p.run_pipeline(step.send("b", step.send("a")).set(display_name="b"), hooks=[hook])
    assert hook.summary() == [
        ("pipeline_started", None, None),
        ("node_started", "step", "running"),
        ("node_finished", "step", "done"),
        ("node_started", "b", "running"),
        ("node_finished", "b", "done"),
        ("pipeline_status_changed", None, None),
        ("pipeline_finished", None, None),
    ]
    assert {e.run_id for e in hook.events} == {run_id}
    assert hook.events[-1].status == "completed"
    finished = [e for e in hook.events if e.kind == "node_finished"]
    assert [e.attempt for e in finished] == [1, 1]
    assert all(e.duration is not None and e.duration >= 0 for e in finished)
    record = p.get_pipeline(run_id)
    assert [e.node_key for e in finished] == [n.key for n in record.nodes]
    assert hook.threads == {"pylo-hooks"}  # never the coordinator's thread


def test_a_child_run_tells_the_same_hooks_in_order(make_pylo: MakePylo) -> None:
    """A task that returns a pipeline: the child run's events come between its node's start and end."""
    from compose_tasks import choose

    p = make_pylo()
    hook = Recorder()
    run_id = p.run_pipeline(choose.send(3), hooks=[hook])
    assert p.get_pipeline_result(run_id) == 6
    child_id = next(e.child_run_id for e in hook.events if e.child_run_id is not None)
    assert child_id != run_id
    # Each run's events come from its own dispatcher: in order per run, and the
    # child's all come before the node that started it ends.
    per_run = {
        rid: [(e.kind, e.display_name, e.state) for e in hook.events if e.run_id == rid] for rid in (run_id, child_id)
    }
    assert per_run[child_id] == [
        ("pipeline_started", None, None),
        ("node_started", "multiply", "running"),
        ("node_finished", "multiply", "done"),
        ("pipeline_status_changed", None, None),
        ("pipeline_finished", None, None),
    ]
    assert per_run[run_id] == [
        ("pipeline_started", None, None),
        ("node_started", "choose", "running"),
        ("node_finished", "choose", "done"),
        ("pipeline_status_changed", None, None),
        ("pipeline_finished", None, None),
    ]
    kinds = [(e.run_id, e.kind) for e in hook.events]
    assert kinds.index((child_id, "pipeline_finished")) < kinds.index((run_id, "node_finished"))
    assert len(hook.events) == 10
    assert p.get_pipeline(child_id).status is PipelineStatus.COMPLETED


def test_retry_failure_and_skip(make_pylo: MakePylo) -> None:
    p = make_pylo(1)
    control_tasks.BROKEN.update({"bad", "optional"})
    hook = Recorder()
    flow = [
        flaky.send("retried").set(retry=Retrying(stop=stop_after_attempt(3))),
        step.send("after-bad", step.send("bad")),
        step.send("optional").set(skippable=True),
    ]
    run_id = p.run_pipeline(flow, hooks=[hook], max_parallel=1)
    node_events = [(e.kind, e.state, e.attempt) for e in hook.events if e.node_key is not None]
    assert ("node_retried", "running", 1) in node_events
    retried = node_events.index(("node_retried", "running", 1))
    assert node_events[retried + 1] == ("node_finished", "done", 2)
    failed = [e for e in hook.events if e.state == "failed"]
    assert len(failed) == 1 and failed[0].error == "ValueError: bad is broken"
    assert ("node_skipped", "failed_dependency", 0) in node_events  # never ran
    assert ("node_skipped", "skipped", 1) in node_events
    assert hook.events[-1].status == "failed"
    assert p.get_pipeline(run_id).status is PipelineStatus.FAILED


def test_a_hook_that_raises_cancels_the_run_and_its_error_is_recorded(make_pylo: MakePylo) -> None:
    p = make_pylo(1)

    class Broken:
        def node_finished(self, event: PipelineEvent) -> None:
            raise RuntimeError("the dashboard is down")

    gate_reached, gate_open = control_tasks.gate("b")
    others = Recorder()

    finished = threading.Event()

    def open_gate_after_cancel() -> None:
        # b runs while the hook's error cancels the run: let it end once the cancel is recorded.
        # The cancel may also come before b starts; then the run ends without this thread,
        # which must not outlive the test (its store, a PostgreSQL schema, is dropped after it).
        runs = p.store.runs()
        while not finished.is_set():
            if gate_reached.is_set() and runs.read_control("h") == "cancel":
                break
            finished.wait(0.01)
        gate_open.set()

    helper = threading.Thread(target=open_gate_after_cancel, daemon=True)
    helper.start()
    flow = step.send("c", step.send("b", step.send("a")))
    try:
        run_id = p.run_pipeline(flow, hooks=[Broken(), others], max_parallel=1, run_id="h")
    finally:
        finished.set()
        helper.join(30)
    record = p.get_pipeline(run_id)
    assert record.status is PipelineStatus.CANCELLED
    assert record.nodes[-1].state is TaskState.CANCELLED
    assert "c" not in STARTED
    run = p.store.runs().get_run(run_id)
    assert run.options["hook_error"] == "RuntimeError: the dashboard is down"
    assert others.events[-1].kind == "pipeline_finished"  # the other hooks still hear the end


def test_a_hook_needs_a_hook_method(make_pylo: MakePylo) -> None:
    p = make_pylo()
    with pytest.raises(TypeError, match="a hook must implement at least one of"):
        p.run_pipeline(step.send("a"), hooks=[object()])
    assert p.list_pipelines() == []  # refused before anything is recorded
