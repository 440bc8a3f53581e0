"""Running pipelines on every store: values flow along edges, runs and nodes are recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from pipeline_tasks import add, average, collect, count, divide, multiply, pair, sleepy

from pylo import PipelineExists, PipelineNotFound, PipelineStatus, Pylo, TaskState
from pylo.pipeline import in_parallel, task

MakePylo = Callable[..., Pylo]


def test_continue_with_passes_the_result_first(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(multiply.send(3, 2).continue_with(divide, 2))
    assert p.get_pipeline_result(run_id) == 3.0
    record = p.get_pipeline(run_id)
    assert record.status is PipelineStatus.COMPLETED
    assert [n.display_name for n in record.nodes] == ["multiply", "divide"]
    assert all(n.state is TaskState.DONE and n.attempts == 1 for n in record.nodes)
    assert record.nodes[1].upstream == (record.nodes[0].key,)


def test_a_tuple_result_is_spread_over_the_continuation(make_pylo: MakePylo) -> None:
    p = make_pylo()
    assert p.get_pipeline_result(p.run_pipeline(pair.send(4).continue_with(multiply))) == 20


def test_pipelines_in_lists_and_dicts_are_replaced_by_their_results(make_pylo: MakePylo) -> None:
    p = make_pylo()
    flow = collect.send([multiply.send(1, 2), 3], {"k": add.send(1, 1)}, named=(multiply.send(2, 2),))
    assert p.get_pipeline_result(p.run_pipeline(flow)) == [[[2, 3], {"k": 2}], {"named": (4,)}]


def test_nested_and_empty_groups_give_nested_lists(make_pylo: MakePylo) -> None:
    p = make_pylo()
    flow = in_parallel(
        [
            multiply.send(3, 2).continue_with(divide, 2),
            in_parallel([multiply.send(4, 5), multiply.send(3, 4)]).continue_with(average),
            in_parallel([]),
        ]
    )
    assert p.get_pipeline_result(p.run_pipeline(flow)) == [3.0, 16.0, []]
    empty = p.run_pipeline(in_parallel([]))
    assert p.get_pipeline_result(empty) == []
    assert p.get_pipeline(empty).nodes == []


def test_several_sinks_give_a_list_of_results(make_pylo: MakePylo) -> None:
    p = make_pylo()
    shared = multiply.send(2, 3)
    run_id = p.run_pipeline([add.send(shared, 1), add.send(shared, 2)])
    assert p.get_pipeline_result(run_id) == [7, 8]
    assert count("multiply") == 1  # one node, however many use it


def test_after_orders_without_passing_a_value(make_pylo: MakePylo) -> None:
    order: list[str] = []

    @task
    def note(name: str) -> str:
        order.append(name)
        return name

    p = make_pylo(4)
    first = note.send("first")
    second = note.send("second").after(first)
    run_id = p.run_pipeline(second)
    assert p.get_pipeline_result(run_id) == "second"
    assert order == ["first", "second"]
    nodes = p.get_pipeline(run_id).nodes
    assert nodes[1].upstream == (nodes[0].key,)


def test_at_most_max_parallel_nodes_run_at_once(make_pylo: MakePylo) -> None:
    live = [0]
    peak = [0]
    lock = threading.Lock()

    @task
    def busy(i: int) -> int:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.02)
        with lock:
            live[0] -= 1
        return i

    p = make_pylo(8)
    assert p.get_pipeline_result(p.run_pipeline([busy.send(i) for i in range(12)], max_parallel=3)) == list(range(12))
    assert 1 < peak[0] <= 3
    peak[0] = 0
    p.run_pipeline(in_parallel([busy.send(i) for i in range(8)], max_parallelism=2))
    assert peak[0] <= 2


def test_default_parallelism_is_the_number_of_workers(make_pylo: MakePylo) -> None:
    p = make_pylo(2)
    start = time.monotonic()
    p.run_pipeline([sleepy.send(0.2) for _ in range(4)])
    assert time.monotonic() - start >= 0.38  # two at a time, not four


def test_runs_are_listed_oldest_first_and_ids_are_checked(make_pylo: MakePylo) -> None:
    p = make_pylo()
    first = p.run_pipeline(multiply.send(1, 1), run_id="first")
    second = p.run_pipeline(multiply.send(1, 1))
    assert [r.id for r in p.list_pipelines()] == [first, second]
    assert p.list_pipelines()[0].name == "multiply"
    with pytest.raises(PipelineExists):
        p.run_pipeline(multiply.send(1, 1), run_id="first")
    with pytest.raises(PipelineNotFound):
        p.get_pipeline("nope")
    with pytest.raises(ValueError, match="not a valid execution id"):
        p.run_pipeline(multiply.send(1, 1), run_id="bad id")
    with pytest.raises(ValueError, match="max_parallel must be >= 1, got 0"):
        p.run_pipeline(multiply.send(1, 1), max_parallel=0)


def test_a_result_that_cannot_be_encoded_fails_its_node(make_pylo: MakePylo) -> None:
    @task
    def lock_maker() -> Any:
        return threading.Lock()

    p = make_pylo()
    run_id = p.run_pipeline(lock_maker.send())
    node = p.get_pipeline(run_id).nodes[0]
    assert node.state is TaskState.FAILED
    assert node.failure is not None and "cannot be stored" in node.failure.message


def test_json_codec_runs_keep_json_results(store_dir: Any, tmp_path: Any) -> None:
    with Pylo.local_multithread(tmp_path / "json", 2, codec="json") as p:
        run_id = p.run_pipeline(collect.send(multiply.send(2, 2), {"a": 1}))
        assert p.get_pipeline_result(run_id) == [4, {"a": 1}]


def test_async_tasks_run_on_an_event_loop(make_pylo: MakePylo) -> None:
    from pipeline_tasks import async_double

    p = make_pylo()
    assert p.get_pipeline_result(p.run_pipeline(async_double.send(add.send(1, 2)))) == 6


def test_a_task_that_returns_a_pipeline_runs_it_as_a_child_run(make_pylo: MakePylo) -> None:
    @task
    def dynamic() -> object:
        return multiply.send(1, 2)

    p = make_pylo()
    run_id = p.run_pipeline(dynamic.send())
    node = p.get_pipeline(run_id).nodes[0]
    assert node.state is TaskState.DONE and node.child_run_id is not None
    assert p.get_pipeline_result(run_id) == 2
    assert p.get_pipeline_result(node.child_run_id) == 2


def test_one_pylo_runs_pipelines_from_several_threads_at_once(make_pylo: MakePylo) -> None:
    p = make_pylo(2)
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        results[i] = p.get_pipeline_result(p.run_pipeline(add.send(multiply.send(i, 2), 1)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {i: 2 * i + 1 for i in range(4)}
    assert len(p.list_pipelines()) == 4


def test_nested_limited_groups_respect_every_limit_and_finish(make_pylo: MakePylo) -> None:
    live: dict[str, int] = {"a": 0, "b": 0, "c": 0, "all": 0}
    peak: dict[str, int] = {"a": 0, "b": 0, "c": 0, "all": 0}
    order: list[str] = []
    lock = threading.Lock()

    @task
    def busy(group: str, i: int) -> int:
        with lock:
            order.append(f"start {group}")
            for name in (group, "all"):
                live[name] += 1
                peak[name] = max(peak[name], live[name])
        time.sleep(0.01)
        with lock:
            order.append(f"end {group}")
            for name in (group, "all"):
                live[name] -= 1
        return i

    p = make_pylo(8)
    a = in_parallel([busy.send("a", i) for i in range(6)], max_parallelism=1)
    b = in_parallel([busy.send("b", i) for i in range(6)], max_parallelism=2)
    flow = in_parallel([a, b, busy.send("c", 0)], max_parallelism=2)
    assert p.get_pipeline_result(p.run_pipeline(flow)) == [list(range(6)), list(range(6)), 0]
    # The outer group runs two members at once: the groups a and b, then c once one of them ended.
    assert peak["a"] == 1 and peak["b"] <= 2 and peak["all"] <= 3
    started_c = order.index("start c")
    assert order[:started_c].count("end a") == 6 or order[:started_c].count("end b") == 6
