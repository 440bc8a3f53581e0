"""Node states and run statuses: failures, soft failures, skips, retries, timeouts, resumes."""

from __future__ import annotations

from collections.abc import Callable

import pipeline_tasks
import pytest
from pipeline_tasks import BROKEN, SCRIPT, HttpError, always_fails, count, http_call, is_server_error, step
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from pylo import PipelineFailed, PipelineStatus, Pylo, TaskState, TaskTimeout
from pylo.pipeline import Pipeline, PipelineNotCompleted, in_parallel, task

MakePylo = Callable[..., Pylo]


def states(p: Pylo, run_id: str) -> dict[str, TaskState]:
    return {n.display_name: n.state for n in p.get_pipeline(run_id).nodes}


def named(name: str, *upstream: object, **options: object) -> Pipeline:
    return step.send(name, *upstream).set(display_name=name, **options)


def test_a_failure_cascades_as_failed_dependency_and_fails_the_run(make_pylo: MakePylo) -> None:
    BROKEN.add("b")
    p = make_pylo()
    a = named("a")
    b = named("b", a)
    c = named("c", b)
    d = named("d", c)
    other = named("other")
    run_id = p.run_pipeline([d, other])
    assert states(p, run_id) == {
        "a": TaskState.DONE,
        "b": TaskState.FAILED,
        "c": TaskState.FAILED_DEPENDENCY,
        "d": TaskState.FAILED_DEPENDENCY,
        "other": TaskState.DONE,  # a disconnected part runs on
    }
    assert count("c") == 0 and count("d") == 0
    record = p.get_pipeline(run_id)
    assert record.status is PipelineStatus.FAILED and record.ended_at is not None
    with pytest.raises(PipelineFailed) as info:
        p.get_pipeline_result(run_id)
    [failed] = info.value.failures
    assert failed.display_name == "b" and failed.failure is not None
    assert isinstance(failed.failure.exception, RuntimeError)
    assert "b is broken" in str(info.value)
    assert "RuntimeError: b is broken" in failed.failure.traceback


def test_soft_failures_follow_the_asyncpipe_rules(make_pylo: MakePylo) -> None:
    BROKEN.add("a")
    p = make_pylo()
    a = named("a", fail_softly=True)
    b = named("b", a, propagate_soft_failures=True)
    c = named("c", a, propagate_soft_failures=False)
    run_id = p.run_pipeline([a, b, c])
    assert states(p, run_id) == {"a": TaskState.FAILED_SOFTLY, "b": TaskState.FAILED_SOFTLY, "c": TaskState.DONE}
    assert count("b") == 0 and count("c") == 1
    assert p.get_pipeline(run_id).status is PipelineStatus.COMPLETED
    assert p.get_pipeline_result(run_id) == [None, None, "c"]  # softly failed sinks give None


def test_a_softly_failed_upstream_passes_none_when_not_propagated(make_pylo: MakePylo) -> None:
    BROKEN.add("a")

    @task(propagate_soft_failures=False)
    def aggregate(values: list[object]) -> list[object]:
        return values

    p = make_pylo()
    flow = aggregate.send(in_parallel([named("a", fail_softly=True), named("ok")]))
    assert p.get_pipeline_result(p.run_pipeline(flow)) == [None, "ok"]


def test_a_soft_failure_never_lets_a_node_run_after_a_hard_failure(make_pylo: MakePylo) -> None:
    BROKEN.update({"soft", "hard"})
    p = make_pylo()
    soft = named("soft", fail_softly=True)
    hard = named("hard")
    after_both = named("after", soft, hard, propagate_soft_failures=False)
    propagating = named("propagating", soft, hard)
    run_id = p.run_pipeline([after_both, propagating])
    found = states(p, run_id)
    assert found["after"] is TaskState.FAILED_DEPENDENCY  # failed_dependency wins over failed_softly
    assert found["propagating"] is TaskState.FAILED_DEPENDENCY
    assert count("after") == 0 and count("propagating") == 0


def test_retry_handler_retries_a_500_but_not_a_401_and_skippable_lets_downstream_run(make_pylo: MakePylo) -> None:
    # task-engine's example: BaseTask -> Task1 -> AlwaysFailsTask (skippable) -> Task2.
    retry_5xx = Retrying(stop=stop_after_attempt(3), retry=retry_if_exception(is_server_error), reraise=True)
    task1 = task(http_call, retry=retry_5xx, display_name="Task1")
    always = task(always_fails, retry=Retrying(stop=stop_after_attempt(3), reraise=True), skippable=True)

    def dag() -> Pipeline:
        base = named("BaseTask")
        one = task1.send().after(base)
        fails = always.send().after(one)
        return named("Task2").after(fails)

    p = make_pylo()
    SCRIPT[:] = [500]
    run1 = p.run_pipeline(dag())
    nodes = {n.display_name: n for n in p.get_pipeline(run1).nodes}
    assert nodes["Task1"].state is TaskState.DONE and nodes["Task1"].attempts == 2
    assert nodes["always_fails"].state is TaskState.SKIPPED and nodes["always_fails"].attempts == 3
    assert nodes["Task2"].state is TaskState.DONE
    assert p.get_pipeline(run1).status is PipelineStatus.COMPLETED

    SCRIPT[:] = [500, 401]
    run2 = p.run_pipeline(dag())
    nodes = {n.display_name: n for n in p.get_pipeline(run2).nodes}
    assert nodes["Task1"].state is TaskState.FAILED and nodes["Task1"].attempts == 2
    assert nodes["always_fails"].state is TaskState.FAILED_DEPENDENCY
    with pytest.raises(PipelineFailed) as info:
        p.get_pipeline_result(run2)
    failure = info.value.failures[0].failure
    assert failure is not None and isinstance(failure.exception, HttpError) and failure.message == "Error 401"


def test_a_node_past_its_timeout_fails_with_task_timeout(make_pylo: MakePylo) -> None:
    from pipeline_tasks import sleepy

    p = make_pylo()
    run_id = p.run_pipeline(sleepy.send(5).set(timeout=0.2))
    node = p.get_pipeline(run_id).nodes[0]
    assert node.state is TaskState.FAILED
    assert node.failure is not None and node.failure.exception_type == "pylo.errors.TaskTimeout"
    assert isinstance(node.failure.exception, TaskTimeout)


def test_resume_reruns_every_node_not_done_and_keeps_lineage(make_pylo: MakePylo) -> None:
    BROKEN.update({"soft", "skip", "hard"})
    p = make_pylo()

    def flow() -> Pipeline:
        root = named("root")
        soft = named("soft", root, fail_softly=True)
        skip = named("skip", root, skippable=True)
        hard = named("hard", root)
        return named("sink", soft, skip, hard, propagate_soft_failures=False)

    first = p.run_pipeline(flow())
    assert p.get_pipeline(first).status is PipelineStatus.FAILED
    BROKEN.discard("hard")
    second = p.resume_pipeline(first, flow())
    assert p.get_pipeline(second).parent_id == first
    assert count("root") == 1  # done: kept, not rerun
    assert count("soft") == 2 and count("skip") == 2 and count("hard") == 2
    assert p.get_pipeline_result(second) == "sink"
    BROKEN.clear()
    third = p.resume_pipeline(second, flow())
    assert count("soft") == 3 and count("skip") == 3 and count("sink") == 2
    assert states(p, third) == dict.fromkeys(["root", "soft", "skip", "hard", "sink"], TaskState.DONE)
    fourth = p.resume_pipeline(third, flow())  # a chain of resumes: nothing left to run
    assert count("root") == 1 and count("sink") == 2
    assert p.get_pipeline_result(fourth) == "sink"
    assert p.get_pipeline(first).status is PipelineStatus.FAILED  # the old runs are left as they were


def test_a_resume_runs_nodes_whose_key_is_new(make_pylo: MakePylo) -> None:
    p = make_pylo()
    first = p.run_pipeline(named("a", task_id="a"))
    grown = named("b", named("a", task_id="a"))
    second = p.resume_pipeline(first, grown)
    assert count("a") == 1 and count("b") == 1
    assert p.get_pipeline_result(second) == "b"


def test_get_pipeline_result_of_a_run_without_result(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(named("a"))
    runs = p.store.runs()
    from pylo.stores.runs import RunUpdate

    runs.record_run(run_id, RunUpdate(status="interrupted"))
    with pytest.raises(PipelineNotCompleted, match="interrupted"):
        p.get_pipeline_result(run_id)


def test_every_state_name_is_the_designs(make_pylo: MakePylo) -> None:
    assert [s.value for s in TaskState] == [
        "pending", "running", "done", "failed", "failed_softly", "failed_dependency", "skipped", "cancelled",
    ]  # fmt: skip
    assert pipeline_tasks.count("nothing") == 0
