"""Composition, as seed 001 (flink-statefun-tasks) documents it: continuations, groups,
exceptionally/finally_do, state and dynamic pipelines, on a durable run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import compose_tasks as t
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipeline_tasks import BROKEN, CALLS, count

from pylo import PipelineFailed, PipelineStatus, PipelineValidationError, Pylo, TaskState
from pylo.pipeline import in_parallel

MakePylo = Callable[..., Pylo]


def result(p: Pylo, pipeline: object) -> object:
    return p.get_pipeline_result(p.run_pipeline(pipeline))


def states(p: Pylo, run_id: str) -> list[tuple[str, TaskState]]:
    return [(n.display_name, n.state) for n in p.get_pipeline(run_id).nodes]


# -- continuations and arguments ------------------------------------------------------


def test_continuations_pass_results_tuples_keywords_and_defaults(make_pylo: MakePylo) -> None:
    p = make_pylo()
    assert result(p, t.multiply.send(3, 2).continue_with(t.divide, 2)) == 3.0
    assert result(p, t.pair.send(4).continue_with(t.multiply)) == 20  # a tuple is spread
    assert result(p, t.multiply.send(1, 2).continue_with(t.add)) == 2  # a default fills y
    assert result(p, t.multiply.send(1, 2).continue_with(t.add, 3, z=4)) == 9  # keywords
    assert result(p, t.pair.send(1).continue_with(t.to_list, "x")) == [1, 2, "x"]


def test_continue_with_a_pipeline_prepends_the_result_to_its_first_task(make_pylo: MakePylo) -> None:
    p = make_pylo()
    then = t.divide.send(2).continue_with(t.multiply, 10)
    assert result(p, t.multiply.send(3, 2).continue_with(then)) == 30.0


def test_every_member_of_a_following_group_receives_the_result(make_pylo: MakePylo) -> None:
    p = make_pylo()
    group = in_parallel([t.divide.send(2), t.multiply.send(5), in_parallel([t.add.send()])])
    assert result(p, t.multiply.send(3, 2).continue_with(group)) == [3.0, 30, [6]]


def test_a_signature_mismatch_fails_the_node_before_it_runs(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(t.multiply.send(3, 2).continue_with(t.divide))
    node = p.get_pipeline(run_id).nodes[1]
    assert node.state is TaskState.FAILED and node.attempts == 0
    assert node.failure is not None
    assert node.failure.message == "not enough arguments for `divide`: expected 2, got 1"
    assert count("divide") == 0
    run_id = p.run_pipeline(t.multiply.send(3, 2).continue_with(t.divide, 1, 2))
    assert "too many arguments for `divide`: expected 2, got 3" in str(p.get_pipeline(run_id).nodes[1].failure)


def test_continue_if_runs_the_task_only_when_the_condition_holds(make_pylo: MakePylo) -> None:
    p = make_pylo()
    assert result(p, t.multiply.send(3, 2).continue_if(lambda v: v > 5, t.add, 1)) == 7
    run_id = p.run_pipeline(t.multiply.send(3, 2).continue_if(lambda v: v > 10, t.add, 1).continue_with(t.add, 1))
    assert p.get_pipeline_result(run_id) == 7  # the skipped node passed 6 on
    assert [s for _, s in states(p, run_id)] == [TaskState.DONE, TaskState.SKIPPED, TaskState.DONE]


def test_is_fruitful_display_name_and_task_id(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(
        t.multiply.send(3, 2).set(task_id="first", display_name="times").continue_with(t.add).set(is_fruitful=False)
    )
    assert p.get_pipeline_result(run_id) is None
    first = p.get_pipeline(run_id).nodes[0]
    assert (first.key, first.display_name) == ("first", "times")


# -- groups -----------------------------------------------------------------------


def test_groups_keep_order_nest_and_may_be_empty(make_pylo: MakePylo) -> None:
    p = make_pylo()
    nested = in_parallel([t.multiply.send(1, 2), in_parallel([t.multiply.send(3, 4), in_parallel([])])])
    assert result(p, nested) == [2, [12, []]]
    assert result(p, in_parallel([]).continue_with(t.total)) == 0


def test_one_or_two_continuations_after_a_group_and_composed_groups(make_pylo: MakePylo) -> None:
    p = make_pylo()
    group = in_parallel([t.multiply.send(1, 2), t.multiply.send(3, 4)])
    assert result(p, group.continue_with(t.total)) == 14
    assert result(p, group.continue_with(t.total).continue_with(t.divide, 7)) == 2.0
    composed = in_parallel([group, in_parallel([t.add.send(1, 1)])]).continue_with(t.to_list)
    assert result(p, composed) == [[[2, 12], [2]]]  # a list is one argument; only tuples spread


@pytest.mark.parametrize("store_name", ["sqlite"])
def test_max_parallelism_1_is_serial_and_num_stages_keeps_order(make_pylo: MakePylo) -> None:
    p = make_pylo(4)
    t.RUNNING[:] = [0, 0]
    members = [t.tracked.send(f"m{i}") for i in range(12)]
    assert result(p, in_parallel(members, max_parallelism=1, num_stages=5)) == [f"m{i}" for i in range(12)]
    assert t.RUNNING[1] == 1


def test_with_initial_gives_the_first_tasks_args_kwargs_and_state(make_pylo: MakePylo) -> None:
    p = make_pylo()
    assert result(p, t.add.send().with_initial(args=(1,), kwargs={"z": 10})) == 11
    group = in_parallel([t.add.send(1), t.multiply.send(3)]).with_initial(args=(2,))
    assert result(p, group) == [3, 6]
    assert result(p, t.read_state.send().with_initial(state={"a": 1})) == {"a": 1}
    with pytest.raises(PipelineValidationError, match="both carry"):
        t.add.send(1).with_initial(args=(1,)).continue_with(t.add.send().with_initial(state=2))


def test_a_failed_member_lets_its_siblings_finish_then_fails_the_group(make_pylo: MakePylo) -> None:
    p = make_pylo()
    BROKEN.update({"b", "d"})
    group = in_parallel([t.maybe_fail.send(name) for name in "abcd"])
    run_id = p.run_pipeline(group.continue_with(t.to_list))
    assert states(p, run_id)[:4] == [
        ("maybe_fail", TaskState.DONE),
        ("maybe_fail", TaskState.FAILED),
        ("maybe_fail", TaskState.DONE),
        ("maybe_fail", TaskState.FAILED),
    ]
    continuation = p.get_pipeline(run_id).nodes[4]
    assert continuation.state is TaskState.FAILED_DEPENDENCY
    assert continuation.failure is not None
    assert continuation.failure.message.startswith("2 members failed: maybe_fail (ValueError: b is broken)")
    assert "d is broken" in continuation.failure.message
    with pytest.raises(PipelineFailed) as failed:
        p.get_pipeline_result(run_id)
    assert len(failed.value.failures) == 2


def test_return_exceptions_puts_the_exceptions_in_the_list(make_pylo: MakePylo) -> None:
    p = make_pylo()
    BROKEN.add("b")
    group = in_parallel([t.maybe_fail.send(name) for name in "abc"], return_exceptions=True)
    run_id = p.run_pipeline(group.continue_with(t.to_list))
    a, b, c = p.get_pipeline_result(run_id)[0]
    assert (a, c) == ("a", "c") and isinstance(b, ValueError) and str(b) == "b is broken"
    assert p.get_pipeline(run_id).status is PipelineStatus.COMPLETED


# -- exceptionally and finally_do --------------------------------------------------------


def test_exceptionally_passes_a_result_through_when_nothing_failed(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(t.multiply.send(3, 2).exceptionally(t.recover).continue_with(t.add, 1))
    assert p.get_pipeline_result(run_id) == 7
    assert states(p, run_id)[1] == ("recover", TaskState.SKIPPED) and count("recover") == 0


def test_exceptionally_recovers_and_skips_the_tasks_between(make_pylo: MakePylo) -> None:
    p = make_pylo()
    flow = t.fail.send("boom").continue_with(t.add, 1).exceptionally(t.recover).continue_with(t.to_list)
    run_id = p.run_pipeline(flow)
    assert p.get_pipeline_result(run_id) == ["recovered from ValueError: boom"]
    assert p.get_pipeline(run_id).status is PipelineStatus.COMPLETED
    assert [s for _, s in states(p, run_id)] == [
        TaskState.FAILED,
        TaskState.FAILED_DEPENDENCY,
        TaskState.DONE,
        TaskState.DONE,
    ]
    assert count("add") == 0


def test_several_exceptionally_in_a_row_and_a_reraise(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(t.fail.send("boom").exceptionally(t.recover).exceptionally(t.recover))
    assert p.get_pipeline_result(run_id) == "recovered from ValueError: boom"
    assert count("recover") == 1  # after one recovers, the next is skipped
    run_id = p.run_pipeline(t.fail.send("boom").exceptionally(t.reraise).exceptionally(t.recover))
    assert p.get_pipeline_result(run_id) == "recovered from RuntimeError: still broken (boom)"
    run_id = p.run_pipeline(t.fail.send("boom").exceptionally(t.reraise))
    with pytest.raises(PipelineFailed):
        p.get_pipeline_result(run_id)


def test_exceptionally_after_a_group_and_inside_one(make_pylo: MakePylo) -> None:
    p = make_pylo()
    group = in_parallel([t.multiply.send(1, 2), t.fail.send("one"), t.fail.send("two")])
    recovered = p.get_pipeline_result(p.run_pipeline(group.exceptionally(t.recover)))
    assert recovered.startswith("recovered from GroupFailed: 2 members failed: fail (ValueError: one)")
    chains = in_parallel([t.fail.send("x").exceptionally(t.recover), t.multiply.send(2, 3).exceptionally(t.recover)])
    assert result(p, chains.continue_with(t.to_list)) == [["recovered from ValueError: x", 6]]


def test_finally_do_always_runs_and_keeps_the_result_or_error(make_pylo: MakePylo) -> None:
    p = make_pylo()
    assert result(p, t.multiply.send(3, 2).finally_do(t.cleanup, "extra", named=1)) == 6
    assert CALLS["cleanup saw 6"] == 1
    run_id = p.run_pipeline(t.fail.send("boom").finally_do(t.cleanup))
    with pytest.raises(PipelineFailed) as failed:
        p.get_pipeline_result(run_id)
    assert failed.value.failures[0].display_name == "fail"
    assert states(p, run_id)[1] == ("cleanup", TaskState.DONE)
    assert CALLS["cleanup saw ValueError('boom')"] == 1


def test_finally_do_with_state(make_pylo: MakePylo) -> None:
    p = make_pylo()
    flow = t.remember.send("k", 1).finally_do(t.cleanup_with_state, tag="end")
    assert result(p, flow) == 1
    assert CALLS["cleanup end {'k': 1} 1"] == 1


def test_a_misplaced_finally_do_is_invalid_before_anything_runs(make_pylo: MakePylo) -> None:
    p = make_pylo()
    with pytest.raises(PipelineValidationError, match="finally_do must be the last task"):
        t.multiply.send(1, 2).finally_do(t.cleanup).continue_with(t.add)
    with pytest.raises(PipelineValidationError, match="finally_do must be the last task"):
        t.multiply.send(1, 2).finally_do(t.cleanup).finally_do(t.cleanup)
    used = t.multiply.send(1, 2).finally_do(t.cleanup)
    with pytest.raises(PipelineValidationError, match="finally_do must be the last task"):
        p.run_pipeline(t.add.send(used))
    assert p.list_pipelines() == [] and count("multiply") == 0


# -- state -----------------------------------------------------------------------------


def test_state_flows_through_chains_and_tasks_without_state(make_pylo: MakePylo) -> None:
    p = make_pylo()
    flow = t.remember.send("a", 1).continue_with(t.add, 1).continue_with(t.read_state).with_initial(state={"x": 0})
    assert result(p, flow) == {"x": 0, "a": 1}


def test_group_states_merge_and_a_conflict_is_an_error(make_pylo: MakePylo) -> None:
    p = make_pylo()
    merged = in_parallel([t.remember.send("a", 1), t.remember.send("b", 2)]).continue_with(t.read_state)
    assert result(p, merged) == {"a": 1, "b": 2}
    clash = in_parallel([t.remember.send("a", 1), t.remember.send("a", 2)]).continue_with(t.read_state)
    run_id = p.run_pipeline(clash)
    last = p.get_pipeline(run_id).nodes[-1]
    assert last.state is TaskState.FAILED and last.failure is not None
    assert "state conflict on key 'a'" in last.failure.message


def test_exceptions_carry_the_state(make_pylo: MakePylo) -> None:
    p = make_pylo()
    flow = t.remember.send("a", 1).continue_with(t.fail, "boom").exceptionally(t.recover_with_state)
    assert result(p, flow) == "recovered with {'a': 1}"


# -- dynamic pipelines -----------------------------------------------------------------


def test_composition_conditionals_and_recursion(make_pylo: MakePylo) -> None:
    p = make_pylo()
    assert result(p, t.choose.send(5)) == 10
    assert result(p, t.choose.send(-5)) == -105
    run_id = p.run_pipeline(t.count_to.send(0, 25))
    assert p.get_pipeline_result(run_id) == 25
    child = p.get_pipeline(p.get_pipeline(run_id).nodes[0].child_run_id)  # type: ignore[arg-type]
    assert child.status is PipelineStatus.COMPLETED


def test_recursion_stops_at_the_depth_limit_with_a_clear_error(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pylo.pipeline import _dynamic

    monkeypatch.setattr(_dynamic, "MAX_DEPTH", 5)
    p = make_pylo()
    run_id = p.run_pipeline(t.count_to.send(0, 100))
    with pytest.raises(PipelineFailed) as failed:
        p.get_pipeline_result(run_id)
    assert "nested more than 5 runs deep" in str(failed.value.failures[0].failure)


def test_child_state_is_isolated_unless_inline(make_pylo: MakePylo) -> None:
    p = make_pylo()
    isolated = t.spawn.send(7, False).continue_with(t.read_state).with_initial(state={"parent": 1})
    assert result(p, isolated) == {"parent": 1}
    inline = t.spawn.send(7, True).continue_with(t.read_state).with_initial(state={"parent": 1})
    assert result(p, inline) == {"parent": 1, "child": 7}


def test_a_non_fruitful_child_gives_none(make_pylo: MakePylo) -> None:
    p = make_pylo()
    assert result(p, t.spawn_quietly.send()) is None


# -- other workers and invariants ------------------------------------------------------


def test_composition_on_process_workers(store_dir: object) -> None:
    with Pylo.local_multiprocess(store_dir, 2) as p:  # type: ignore[arg-type]
        assert result(p, t.count_to.send(0, 3)) == 3  # the child pipeline travels back pickled
        assert result(p, t.fail.send("x").exceptionally(t.recover)) == "recovered from ValueError: x"
        inline = t.spawn.send(7, True).continue_with(t.read_state).with_initial(state={"p": 1})
        assert result(p, inline) == {"p": 1, "child": 7}


@given(st.lists(st.dictionaries(st.text(max_size=3), st.integers(), max_size=4), max_size=5), st.randoms())
def test_merged_states_are_the_union_in_any_order_or_a_conflict(states: list[dict[str, int]], rnd: Any) -> None:
    from pylo.pipeline._outcomes import merge_states

    union: dict[str, int] = {}
    conflict = False
    for state in states:
        for key, value in state.items():
            conflict = conflict or (key in union and union[key] != value)
            union.setdefault(key, value)
    named = [(f"m{i}", s) for i, s in enumerate(states)]
    rnd.shuffle(named)
    if conflict:
        with pytest.raises(PipelineValidationError, match="state conflict on key"):
            merge_states(named)
    else:
        assert (merge_states(named) or {}) == union


def test_a_stateful_task_cannot_be_mapped() -> None:
    with pytest.raises(PipelineValidationError, match="with_state=True and cannot be mapped"):
        t.remember.map([1, 2], "k")


def test_a_task_with_context_and_state_gets_the_context_then_the_state(make_pylo: MakePylo) -> None:
    from pylo.pipeline import TaskContext, task

    @task(with_context=True, with_state=True)
    def both(context: TaskContext, state: Any, x: int) -> tuple[Any, Any]:
        return state, (type(context).__name__, state, x)

    p = make_pylo()
    assert result(p, t.multiply.send(1, 2).continue_with(both).with_initial(state={"s": 1})) == (
        "TaskContext",
        {"s": 1},
        2,
    )
