"""Priority from runtime statistics: with one worker, the longest expected remaining path starts first."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from control_tasks import STARTED, step
from hypothesis import given
from hypothesis import strategies as st

from pylo import Pylo
from pylo.pipeline._api import _fresh_rows
from pylo.pipeline._graph import build_graph
from pylo.pipeline._priority import ReadyByPriority, remaining_paths
from pylo.stores.runs import RunRow

MakePylo = Callable[..., Pylo]


def flow() -> list[Any]:
    """Declared first: a short job. Then a chain of three. Then a medium job."""
    short = step.send("short").set(task_id="short")
    chain = step.send("l3", step.send("l2", step.send("l1").set(task_id="l1")).set(task_id="l2")).set(task_id="l3")
    medium = step.send("medium").set(task_id="medium")
    return [short, chain, medium]


def record_past_run(p: Pylo, run_id: str, seconds: dict[str, float]) -> None:
    """A finished earlier run of the same keys whose nodes took ``seconds``."""
    rows = _fresh_rows(build_graph(flow()))
    start = time.time() - 1000
    done = [
        dataclasses.replace(row, state="done", attempts=1, started_at=start, ended_at=start + seconds[row.key])
        for row in rows
        if row.key in seconds
    ]
    now = time.time()
    run = RunRow(run_id, None, "past", "completed", now, now, now, "pickle")
    p.store.runs().create_run(run, done)


def test_without_statistics_nodes_start_in_declaration_order(make_pylo: MakePylo) -> None:
    p = make_pylo(1)
    p.run_pipeline(flow(), max_parallel=1)
    assert STARTED == ["short", "l1", "medium", "l2", "l3"]  # in the order they became ready


def test_the_longest_expected_remaining_path_starts_first(make_pylo: MakePylo) -> None:
    p = make_pylo(1)
    # l1 alone is short, but its chain is the longest path (3 + 3 + 3 = 9); then l2 (6) beats
    # medium (5), medium beats l3 (3), and short (1) goes last.
    record_past_run(p, "past", {"short": 1.0, "l1": 3.0, "l2": 3.0, "l3": 3.0, "medium": 5.0})
    p.run_pipeline(flow(), max_parallel=1)
    assert STARTED == ["l1", "l2", "medium", "l3", "short"]


def test_a_key_without_statistics_counts_as_the_mean_of_the_others(make_pylo: MakePylo) -> None:
    p = make_pylo(1)
    record_past_run(p, "past", {"short": 10.0, "medium": 2.0})  # the chain's keys unknown: 6 each
    p.run_pipeline(flow(), max_parallel=1)
    assert STARTED == ["l1", "l2", "short", "l3", "medium"]  # 18, 12, 10, 6, 2


def test_remaining_paths_add_the_longest_chain_of_dependents() -> None:
    graph = build_graph(flow())
    expected = {"short": 1.0, "l1": 3.0, "l2": 3.0, "l3": 3.0, "medium": 5.0}
    paths = remaining_paths(graph, [expected[node.key] for node in graph.nodes])
    assert {node.key: paths[node.index] for node in graph.nodes} == {
        "short": 1.0, "l1": 9.0, "l2": 6.0, "l3": 3.0, "medium": 5.0,
    }  # fmt: skip


def test_statistics_come_from_the_most_recent_runs_only(make_pylo: MakePylo) -> None:
    p = make_pylo(1)
    runs = p.store.runs()
    record_past_run(p, "a-old", {"short": 100.0})
    for number in range(3):
        record_past_run(p, f"b-new{number}", {"short": 1.0})
    assert runs.node_durations(["short"], recent=3) == {"short": [1.0, 1.0, 1.0]}
    assert sorted(runs.node_durations(["short", "l1"], recent=10)["short"]) == [1.0, 1.0, 1.0, 100.0]


@given(
    st.lists(st.sampled_from([0.0, 1.0, 2.5, 7.0]), min_size=1, max_size=30),
    st.lists(st.sampled_from(["append", "appendleft", "extendleft", "popleft"]), max_size=60),
)
def test_ready_nodes_start_most_urgent_first_ties_in_graph_order(priorities: list[float], steps: list[str]) -> None:
    """The heap the coordinator uses once it has priorities picks as a scan of every ready node would."""
    initial = list(range(0, len(priorities), 2))
    ready = ReadyByPriority(initial, priorities)
    scanned = list(initial)
    waiting = [index for index in range(len(priorities)) if index not in initial]
    for action in steps:
        if action == "popleft":
            if not scanned:
                assert not ready
                continue
            best = max(scanned, key=lambda index: (priorities[index], -index))
            scanned.remove(best)
            assert ready.popleft() == best
        elif action == "extendleft":  # a group's waiting nodes, put back at once
            more = [waiting.pop() for _ in range(min(2, len(waiting)))]
            ready.extendleft(reversed(more))
            scanned.extend(more)
        elif waiting:
            index = waiting.pop()
            getattr(ready, action)(index)
            scanned.append(index)
        assert len(ready) == len(scanned)
        assert sorted(ready) == sorted(scanned)
        assert all(index in ready for index in scanned)
