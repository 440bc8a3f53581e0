"""Batch nodes: a task mapped over inputs is one pylo execution, resumed input by input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pipeline_tasks import BROKEN, checksum, count, numbers, scaled, square_or_fail

from pylo import PipelineFailed, PipelineStatus, Pylo, TaskState
from pylo.pipeline import BatchFailed, Pipeline, in_parallel

MakePylo = Callable[..., Pylo]


def flow() -> Pipeline:
    return checksum.send(square_or_fail.map(numbers.send(1000)))


def test_a_batch_node_of_1000_inputs_resumes_only_its_10_failed_inputs(make_pylo: MakePylo) -> None:
    broken = {str(i) for i in range(5, 1000, 100)}
    BROKEN.update(broken)
    p = make_pylo(4)
    first = p.run_pipeline(flow())
    record = p.get_pipeline(first)
    assert record.status is PipelineStatus.FAILED
    batch = next(n for n in record.nodes if n.kind == "batch")
    assert batch.state is TaskState.FAILED and batch.execution_id is not None
    assert batch.failure is not None and isinstance(batch.failure.exception, BatchFailed)
    assert batch.failure.exception.failed == 10 and batch.execution_id in batch.failure.message
    assert sorted(str(f.input) for f in p.get_failures(batch.execution_id)) == sorted(broken)
    assert record.nodes[-1].state is TaskState.FAILED_DEPENDENCY
    with pytest.raises(PipelineFailed, match="10 failed"):
        p.get_pipeline_result(first)
    assert count("square") == 1000

    BROKEN.clear()
    second = p.resume_pipeline(first, flow())
    assert count("square") == 1010  # exactly the 10 failed inputs ran again
    assert count("numbers") == 1  # the upstream node was done: kept
    assert p.get_pipeline_result(second) == (1000, sum(i * i for i in range(1000)), True)
    resumed = next(n for n in p.get_pipeline(second).nodes if n.kind == "batch")
    assert resumed.execution_id is not None
    assert p.get_execution(resumed.execution_id).parent_id == batch.execution_id


def test_map_binds_extra_arguments_and_takes_execution_options(make_pylo: MakePylo) -> None:
    p = make_pylo(2)
    both = in_parallel(
        [
            scaled.map([1, 2, 3], 10, offset=1),
            scaled.map(numbers.send(3), numbers.send(2).continue_with(len), max_worker_failures=1),
        ]
    )
    assert p.get_pipeline_result(p.run_pipeline(both)) == [[11, 21, 31], [0, 2, 4]]
    executions = p.list_executions()
    assert len(executions) == 2
    assert {e.options["max_worker_failures"] for e in executions} == {1000, 1}
    assert all(e.options["store_results"] for e in executions)
    assert all(e.task_name.endswith(":scaled") for e in executions)


def test_a_batch_node_with_no_inputs_gives_an_empty_list(make_pylo: MakePylo) -> None:
    p = make_pylo()
    assert p.get_pipeline_result(p.run_pipeline(scaled.map([], 2))) == []


def test_a_batch_node_whose_inputs_are_not_iterable_fails(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(scaled.map(scaled.send(1, 1), 2))
    node = p.get_pipeline(run_id).nodes[-1]
    assert node.state is TaskState.FAILED and node.failure is not None
    assert "iterable" in node.failure.message


def test_a_done_batch_node_feeds_its_results_to_a_resumed_downstream_node(make_pylo: MakePylo) -> None:
    from pipeline_tasks import step

    BROKEN.add("after")
    p = make_pylo(2)

    def flow() -> Pipeline:
        return step.send("after", square_or_fail.map(range(50)))

    first = p.run_pipeline(flow())
    batch = p.get_pipeline(first).nodes[0]
    assert batch.state is TaskState.DONE and count("square") == 50
    BROKEN.clear()
    second = p.resume_pipeline(first, flow())
    assert p.get_pipeline_result(second) == "after"
    assert count("square") == 50  # the batch node was done: its results were read, not recomputed


def test_a_batch_sink_result_is_read_from_its_execution(make_pylo: MakePylo) -> None:
    p = make_pylo(2)
    run_id = p.run_pipeline(square_or_fail.map(range(30)))
    assert p.get_pipeline_result(run_id) == [i * i for i in range(30)]
