"""A node with nothing beside it runs on the coordinator's thread; the run keeps its clocks meanwhile.

While such a lone node runs (each node of a chain, a pipeline's only node),
the outcomes before it and its ``running`` row still reach the store by the
flush clock, as when a node thread runs it (a request taken up meanwhile:
see test_pipeline_control.py); a task may still run an event loop of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from control_tasks import STARTED, gate, gated_item, in_background, step, until

from pylo import PipelineStatus, Pylo, TaskState
from pylo.pipeline import _lone_node, task

MakePylo = Callable[..., Pylo]
WAIT = 30


def test_a_lone_batch_node_that_lasts_has_its_running_row_flushed_while_it_runs(make_pylo: MakePylo) -> None:
    # No keeper is started for a batch node at first: its execution rings when
    # a clock could be due, and from then on the keeper flushes as for a call.
    p = make_pylo(flush_seconds=0.05)
    reached, opened = gate("item")
    thread, box = in_background(lambda: p.run_pipeline(gated_item.map(range(8)), run_id="r"))
    assert reached.wait(WAIT)

    def running() -> bool:
        (node,) = p.get_pipeline("r").nodes
        return node.state is TaskState.RUNNING and node.execution_id is not None

    assert until(running)  # input 5 still at its gate
    opened.set()
    thread.join(WAIT)
    assert box == ["r"]
    assert p.get_pipeline_result("r") == [x * 10 for x in range(8)]


#: Set once a lone batch node's execution rang its alarm (see the test below).
ALARM_RUNG = threading.Event()


@task
def waits_for_the_alarm(x: int) -> int:
    if x == 3:
        assert ALARM_RUNG.wait(WAIT), "the batch node's execution never rang its alarm"
    return x


def test_a_keeper_that_cannot_start_interrupts_the_run_with_its_error_once_the_node_ends(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The alarm starts the keeper from inside the execution's loop: a failure
    # there must not fail the execution, but end the run as the keeper's own
    # errors do, once the node is back (the execution finished its inputs).
    ALARM_RUNG.clear()

    def refuse(run: Any) -> None:
        ALARM_RUNG.set()
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(_lone_node._KEEPER, "watch", refuse)
    p = make_pylo(flush_seconds=0.05)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        p.run_pipeline(waits_for_the_alarm.map(range(8)), run_id="r")
    record = p.get_pipeline("r")
    assert record.status is PipelineStatus.INTERRUPTED
    assert [node.state for node in record.nodes] == [TaskState.PENDING]
    (execution,) = [e for e in p.list_executions() if e.id.startswith("r.")]
    assert (execution.finished, execution.failed) == (8, 0)


def test_while_a_lone_node_runs_what_ended_before_it_and_its_running_row_are_flushed(make_pylo: MakePylo) -> None:
    p = make_pylo(flush_seconds=0.05)
    reached, opened = gate("b")
    thread, box = in_background(lambda: p.run_pipeline(step.send("c", step.send("b", step.send("a"))), run_id="r"))
    assert reached.wait(WAIT)

    def a_done_b_running() -> bool:
        states = [n.state for n in p.get_pipeline("r").nodes]
        return states == [TaskState.DONE, TaskState.RUNNING, TaskState.PENDING]

    assert until(a_done_b_running)  # b still at its gate: the keeper flushed
    opened.set()
    thread.join(WAIT)
    assert box == ["r"]
    assert p.get_pipeline("r").status is PipelineStatus.COMPLETED
    assert STARTED == ["a", "b", "c"]


@task
def uses_its_own_event_loop(x: int) -> int:
    async def double() -> int:
        return 2 * x

    return asyncio.run(double())


def test_a_task_may_run_its_own_event_loop_when_the_run_is_started_inside_one(make_pylo: MakePylo) -> None:
    p = make_pylo()

    async def main() -> Any:
        run_id = p.run_pipeline(uses_its_own_event_loop.send(1).continue_with(uses_its_own_event_loop))
        return p.get_pipeline_result(run_id)

    assert asyncio.run(main()) == 4
