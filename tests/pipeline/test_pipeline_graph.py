"""Building pipelines and flattening them into graphs: keys, order, cycles, validation."""

from __future__ import annotations

import pytest

from pylo.pipeline import PipelineCycleError, PipelineValidationError, in_parallel, task
from pylo.pipeline._graph import build_graph


@task
def multiply(x: int, y: int) -> int:
    return x * y


@task
def add(x: int, y: int = 0) -> int:
    return x + y


@task(task_id="fixed")
def fixed() -> str:
    return "fixed"


def test_a_task_stays_callable() -> None:
    assert multiply(3, 2) == 6
    assert multiply.display_name == "multiply"


def test_task_options_are_validated_where_they_enter() -> None:
    with pytest.raises(TypeError, match="unknown task option"):
        task(retries=3)
    with pytest.raises(ValueError, match="timeout must be"):
        task(timeout=0)
    with pytest.raises(ValueError, match="cannot both be True"):
        task(fail_softly=True, skippable=True)
    with pytest.raises(ValueError, match="task_id"):
        task(task_id="no spaces")
    with pytest.raises(TypeError, match="retry must be"):
        task(retry=3)


@pytest.mark.parametrize(
    ("timeout", "error", "message"),
    [
        (0, ValueError, "timeout must be a finite number of seconds > 0, got 0"),
        (float("nan"), ValueError, "timeout must be a finite number of seconds > 0, got nan"),
        (float("inf"), ValueError, "timeout must be a finite number of seconds > 0, got inf"),
        (1e10, ValueError, r"timeout must be at most 604800 seconds \(one week\), got 1e\+10"),
        ("30", TypeError, "timeout must be a number of seconds > 0, got str '30'"),
        (True, TypeError, "timeout must be a number of seconds > 0, got bool True"),
    ],
)
def test_a_task_timeout_is_checked_like_the_run_options(timeout: object, error: type, message: str) -> None:
    # The run options' rule, week cap included, on @task and on .set alike.
    with pytest.raises(error, match=message):
        task(timeout=timeout)
    with pytest.raises(error, match=message):
        multiply.send(1, 2).set(timeout=timeout)
    assert task(timeout=7 * 24 * 3600)(lambda: None).options.timeout == 7 * 24 * 3600


def test_set_returns_a_new_pipeline_and_leaves_the_old_one() -> None:
    p = multiply.send(1, 2)
    q = p.set(fail_softly=True)
    assert q is not p
    assert q._node.task.options.fail_softly  # type: ignore[union-attr]
    assert not p._node.task.options.fail_softly  # type: ignore[union-attr]


def test_pipelines_in_arguments_lists_and_dicts_are_dependencies() -> None:
    a, b, c = multiply.send(1, 2), multiply.send(3, 4), multiply.send(5, 6)
    sink = add.send([a, {"x": b}], y=(c,))
    graph = build_graph(sink)
    assert [n.node.task.display_name for n in graph.nodes] == ["multiply"] * 3 + ["add"]
    assert graph.nodes[-1].upstream == (0, 1, 2)
    assert graph.shape == {"node": graph.nodes[-1].key}


def test_keys_are_stable_and_readable() -> None:
    def build() -> list[str]:
        b = multiply.send(1, 2)
        cs = [add.send(b, i) for i in range(3)]
        return [n.key for n in build_graph(add.send(in_parallel(cs))).nodes]

    first, second = build(), build()
    assert first == second
    assert len(set(first)) == len(first)
    assert all(k.startswith(("multiply-", "add-")) for k in first)
    assert build_graph(fixed.send()).nodes[0].key == "fixed"


def test_duplicate_task_ids_are_refused() -> None:
    with pytest.raises(PipelineValidationError, match="share the key 'fixed'"):
        build_graph([fixed.send(), fixed.send()])


def test_two_tasks_sharing_a_name_are_two_nodes_not_a_cycle() -> None:
    def make(scale: int) -> object:
        @task
        def step(x: int) -> int:
            return x * scale

        return step

    first, second = make(1), make(2)
    sink = second.send(first.send(1))  # type: ignore[attr-defined]
    graph = build_graph(sink)
    assert len(graph.nodes) == 2


def test_cycles_are_named_before_anything_runs() -> None:
    a = multiply.send(1, 2).set(display_name="a")
    b = add.send(1).set(display_name="b")
    b.after(a)
    a.after(b)
    with pytest.raises(PipelineCycleError) as info:
        build_graph(b)
    assert info.value.cycle == ["a", "b", "a"]
    assert "a -> b -> a" in str(info.value)


def test_a_self_cycle_is_a_cycle() -> None:
    a = multiply.send(1, 2).set(display_name="a")
    a.after(a)
    with pytest.raises(PipelineCycleError, match="a -> a"):
        build_graph(a)


def test_a_complex_cycle_names_only_its_own_nodes() -> None:
    names = "abcde"
    p = {n: add.send(0).set(display_name=n) for n in names}
    p["b"].after(p["a"])
    p["c"].after(p["b"])
    p["d"].after(p["c"])
    p["b"].after(p["d"])  # b -> c -> d -> b; e waits for the loop
    p["e"].after(p["d"])
    with pytest.raises(PipelineCycleError) as info:
        build_graph(p["e"])
    assert info.value.cycle == ["b", "c", "d", "b"]


def test_disconnected_parts_and_groups_shape_the_result() -> None:
    g = in_parallel([multiply.send(1, 1), in_parallel([]), in_parallel([add.send(1)])], max_parallelism=1)
    graph = build_graph([g, multiply.send(2, 2)])
    keys = [n.key for n in graph.nodes]
    assert graph.shape == {
        "group": [
            {"group": [{"node": keys[0]}, {"group": []}, {"group": [{"node": keys[1]}]}]},
            {"node": keys[2]},
        ]
    }
    assert graph.limits == [1]
    # Each member is a chain of the group (the empty one has no node); the other sink is in none.
    assert graph.chain_sizes == [1, 0, 1]
    assert graph.nodes[0].chains == ((0, 0),) and graph.nodes[1].chains == ((0, 2),) and graph.nodes[2].chains == ()


def test_a_node_several_members_need_belongs_to_no_chain_of_their_group() -> None:
    shared = multiply.send(1, 2)
    inner = in_parallel([add.send(shared, 1), add.send(shared, 2).continue_with(add, 3)], max_parallelism=1)
    outer = in_parallel([inner, multiply.send(3, 3)], max_parallelism=1)
    graph = build_graph(outer)
    by_name = [(n.node.task.display_name, n.chains) for n in graph.nodes]
    # shared is needed by both members of inner (no chain there) but only by inner in outer.
    assert by_name == [
        ("multiply", ((0, 0),)),
        ("add", ((0, 0), (1, 2))),
        ("add", ((0, 0), (1, 3))),
        ("add", ((0, 0), (1, 3))),
        ("multiply", ((0, 1),)),
    ]
    assert graph.limits == [1, 1] and graph.chain_sizes == [4, 1, 1, 2]


def test_bad_run_targets_are_validation_errors() -> None:
    with pytest.raises(PipelineValidationError, match="takes a pipeline"):
        build_graph([multiply])
    with pytest.raises(PipelineValidationError, match="iterable"):
        multiply.map(5)  # type: ignore[arg-type]
    with pytest.raises(PipelineValidationError, match="max_parallelism"):
        in_parallel([], max_parallelism=0)


def test_a_long_chain_builds_without_recursion() -> None:
    p = add.send(0)
    for i in range(5000):
        p = p.continue_with(add, i)
    graph = build_graph(p)
    assert len(graph.nodes) == 5001


def test_map_always_stores_results() -> None:
    assert add.map([1], store_results=True)._node.map_options == {}  # type: ignore[union-attr]
    with pytest.raises(PipelineValidationError, match="always stores its results"):
        add.map([1], store_results=False)
    with pytest.raises(PipelineValidationError, match="max_worker_failures must be >= 1"):
        add.map([1], max_worker_failures=0)


def test_with_state_and_is_fruitful_are_options_checked_where_they_enter() -> None:
    assert task(with_state=True, is_fruitful=False)(len).options.with_state is True
    with pytest.raises(TypeError, match="with_state must be True or False"):
        task(with_state="yes")
    with pytest.raises(TypeError, match="is_fruitful must be True or False"):
        task(is_fruitful=None)
