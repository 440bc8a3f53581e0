"""The peer systems' own scenarios, as behaviour tests (seeds 000 Asyncpipe, 002 ProcessFlow)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pipeline_tasks import BROKEN, CALLS, count, step

from pylo import PipelineCycleError, PipelineFailed, PipelineStatus, Pylo, TaskState
from pylo.pipeline import Pipeline, task

MakePylo = Callable[..., Pylo]


def named(name: str, *upstream: object, **options: object) -> Pipeline:
    return step.send(name, *upstream).set(display_name=name, **options)


def asyncpipe_22() -> Pipeline:
    """B -> 10 x C -> 10 x trouble maker -> D: Asyncpipe's example pipeline, 22 tasks."""
    b = named("B")
    troubles = [named(f"T{i}", named(f"C{i}", b)) for i in range(10)]
    return named("D", *troubles)


@pytest.mark.parametrize("workers", [1, 3, 10])
def test_the_22_task_pipeline_succeeds_with_any_number_of_workers(make_pylo: MakePylo, workers: int) -> None:
    p = make_pylo(workers)
    run_id = p.run_pipeline(asyncpipe_22())
    record = p.get_pipeline(run_id)
    assert record.status is PipelineStatus.COMPLETED
    assert len(record.nodes) == 22 and all(n.state is TaskState.DONE for n in record.nodes)
    assert sum(CALLS.values()) == 22
    assert p.get_pipeline_result(run_id) == "D"


def test_the_22_task_pipeline_fails_then_resumes_only_unfinished_tasks(make_pylo: MakePylo) -> None:
    BROKEN.update({"T2", "T5", "T7"})
    p = make_pylo(4)
    first = p.run_pipeline(asyncpipe_22())
    found = {n.display_name: n.state for n in p.get_pipeline(first).nodes}
    assert [name for name, state in found.items() if state is TaskState.FAILED] == ["T2", "T5", "T7"]
    assert found["D"] is TaskState.FAILED_DEPENDENCY
    with pytest.raises(PipelineFailed) as info:
        p.get_pipeline_result(first)
    assert [n.display_name for n in info.value.failures] == ["T2", "T5", "T7"]

    BROKEN.clear()
    CALLS.clear()
    second = p.resume_pipeline(first, asyncpipe_22())
    assert dict(CALLS) == {"T2": 1, "T5": 1, "T7": 1, "D": 1}
    assert p.get_pipeline_result(second) == "D"


def test_soft_failures_without_propagation_let_the_aggregation_run(make_pylo: MakePylo) -> None:
    # Asyncpipe's use case: many branches merge into one aggregation, which
    # still gives partial results when some branches fail softly.
    BROKEN.update({"T1", "T4"})

    @task(propagate_soft_failures=False)
    def aggregate(*parts: str | None) -> list[str]:
        return [part for part in parts if part is not None]

    def flow() -> Pipeline:
        b = named("B")
        return aggregate.send(*[named(f"T{i}", named(f"C{i}", b), fail_softly=True) for i in range(6)])

    p = make_pylo(3)
    first = p.run_pipeline(flow())
    assert p.get_pipeline(first).status is PipelineStatus.COMPLETED
    assert p.get_pipeline_result(first) == ["T0", "T2", "T3", "T5"]
    BROKEN.clear()
    CALLS.clear()
    second = p.resume_pipeline(first, flow())  # soft failures run again on resume
    assert dict(CALLS) == {"T1": 1, "T4": 1}
    assert p.get_pipeline_result(second) == [f"T{i}" for i in range(6)]


def test_soft_failures_with_propagation_fail_the_aggregation_softly(make_pylo: MakePylo) -> None:
    BROKEN.add("T1")
    p = make_pylo(3)
    b = named("B")
    run_id = p.run_pipeline(named("agg", *[named(f"T{i}", b, fail_softly=True) for i in range(3)]))
    found = {n.display_name: n.state for n in p.get_pipeline(run_id).nodes}
    assert found["agg"] is TaskState.FAILED_SOFTLY and count("agg") == 0
    assert p.get_pipeline(run_id).status is PipelineStatus.COMPLETED
    assert p.get_pipeline_result(run_id) is None


def test_a_branching_pipeline_runs_each_branch_once_in_order(make_pylo: MakePylo) -> None:
    ends: list[str] = []

    @task
    def mark(name: str, *upstream: str) -> str:
        ends.append(name)
        return name + "(" + ",".join(upstream) + ")"

    p = make_pylo(4)
    root = mark.send("root")
    left = mark.send("left", root)
    right = mark.send("right", root)
    left_leaf = mark.send("left-leaf", left)
    join = mark.send("join", left_leaf, right)
    assert p.get_pipeline_result(p.run_pipeline(join)) == "join(left-leaf(left(root())),right(root()))"
    assert ends[0] == "root" and ends[-1] == "join" and len(ends) == 5
    assert ends.index("left") < ends.index("left-leaf")


def test_simple_and_complex_cycles_are_refused_before_anything_runs(make_pylo: MakePylo) -> None:
    p = make_pylo()
    a, b = named("a"), named("b")
    b.after(a)
    a.after(b)
    with pytest.raises(PipelineCycleError) as info:
        p.run_pipeline(b)
    assert info.value.cycle == ["a", "b", "a"]

    # Asyncpipe-style complex cycle: a diamond whose join feeds back into a branch.
    top = named("top")
    left, right = named("left", top), named("right", top)
    join = named("join", left, right)
    left.after(join)
    with pytest.raises(PipelineCycleError, match="left -> join -> left"):
        p.run_pipeline([join, named("elsewhere")])
    assert count("top") == 0 and count("elsewhere") == 0
    assert p.list_pipelines() == []  # nothing was recorded


def test_two_tasks_sharing_a_name_are_not_a_cycle(make_pylo: MakePylo) -> None:
    # Asyncpipe reports a cycle here; nodes are told apart by identity.
    def make(offset: int) -> object:
        @task
        def transform(x: int) -> int:
            return x + offset

        return transform

    first, second = make(1), make(10)
    p = make_pylo()
    run_id = p.run_pipeline(second.send(first.send(0)))  # type: ignore[attr-defined]
    assert p.get_pipeline_result(run_id) == 11


def test_processflow_self_cycle_is_refused(make_pylo: MakePylo) -> None:
    p = make_pylo()
    task_1 = named("task_1")
    task_1.after(task_1)
    with pytest.raises(PipelineCycleError, match="task_1 -> task_1"):
        p.run_pipeline(task_1)


def test_processflow_multi_part_graphs_run_every_part(make_pylo: MakePylo) -> None:
    p = make_pylo(2)
    task_1 = named("task_1")
    task_2 = named("task_2").after(task_1)
    lone = named("lone")
    other_1 = named("other_1")
    other_2 = named("other_2", other_1)
    run_id = p.run_pipeline([task_2, lone, other_2])
    assert p.get_pipeline_result(run_id) == ["task_2", "lone", "other_2"]
    assert sorted(CALLS) == ["lone", "other_1", "other_2", "task_1", "task_2"]
