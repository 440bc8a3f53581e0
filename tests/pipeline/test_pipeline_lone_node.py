"""A node with nothing beside it runs on the coordinator's thread; the run keeps its clocks meanwhile.

While such a lone node runs (each node of a chain, a pipeline's only node),
the outcomes before it and its ``running`` row still reach the store by the
flush clock, as when a node thread runs it (a request taken up meanwhile:
see test_pipeline_control.py); a task may still run an event loop of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from control_tasks import STARTED, gate, gated_item, in_background, step, until

from pylo import PipelineStatus, Pylo, TaskState
from pylo.pipeline import task

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
