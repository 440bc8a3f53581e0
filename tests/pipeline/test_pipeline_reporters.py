"""Reporters: the text plan, Mermaid and dot graphs parsed back, the plan and progress hooks."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import control_tasks
import pytest
from control_tasks import step

from pylo import Pylo
from pylo.pipeline import in_parallel, task
from pylo.pipeline._graph import build_graph
from pylo.pipeline.reporters import STATE_COLOURS, PlanReporter, ProgressReporter, to_dot, to_mermaid, to_text

MakePylo = Callable[..., Pylo]


def diamond() -> Any:
    top = step.send("top").set(task_id="top")
    sides = in_parallel([step.send("left", top).set(task_id="left"), step.send("right", top).set(task_id="right")])
    return step.send("bottom", sides).set(task_id="bottom", display_name='the "end"')


def edges_of(pipeline: Any) -> set[tuple[str, str]]:
    graph = build_graph(pipeline)
    return {(graph.nodes[up].key, node.key) for node in graph.nodes for up in node.upstream}


def parse_mermaid(text: str) -> tuple[dict[str, str], set[tuple[str, str]], dict[str, str]]:
    """Node id -> key, edges as (key, key), key -> class (state)."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    keys: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()
    classes: dict[str, str] = {}
    for line in lines[1:]:
        if match := re.fullmatch(r'    (n\d+)\["(.*)<br/>(.*)"\]', line):
            keys[match.group(1)] = match.group(3)
        elif match := re.fullmatch(r"    (n\d+) --> (n\d+)", line):
            edges.add((keys[match.group(1)], keys[match.group(2)]))
        elif match := re.fullmatch(r"    class (n\d+) (\w+)", line):
            classes[keys[match.group(1)]] = match.group(2)
        else:
            assert re.fullmatch(r"    classDef \w+ fill:#[0-9a-f]{6}", line), line
    return keys, edges, classes


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], set[tuple[str, str]]]:
    """Node key -> attributes, edges (a structural check: every statement is a node, an edge or a default)."""
    assert text.startswith("digraph pipeline {\n") and text.endswith("}\n")
    quoted = r'"((?:[^"\\]|\\.)*)"'
    nodes: dict[str, dict[str, str]] = {}
    edges: set[tuple[str, str]] = set()
    for line in text.splitlines()[1:-1]:
        if match := re.fullmatch(rf"    {quoted} -> {quoted};", line):
            edges.add((match.group(1), match.group(2)))
        elif match := re.fullmatch(rf"    {quoted} \[(.*)\];", line):
            nodes[match.group(1)] = {k: v for k, v in re.findall(rf"(\w+)={quoted}", match.group(2))}
        else:
            assert line in ("    rankdir=TB;", "    node [shape=box, style=filled, fillcolor=white];"), line
    assert {key for edge in edges for key in edge} <= set(nodes)
    return nodes, edges


def test_the_text_plan_lists_nodes_in_an_order_they_may_run_in() -> None:
    assert to_text(diamond()) == (
        '1. step (top)\n2. step (left) after top\n3. step (right) after top\n4. the "end" (bottom) after left, right\n'
    )


def test_mermaid_of_a_pipeline_parses_back_to_its_graph() -> None:
    keys, edges, classes = parse_mermaid(to_mermaid(diamond()))
    assert sorted(keys.values()) == ["bottom", "left", "right", "top"]
    assert edges == edges_of(diamond())
    assert classes == {}


def test_dot_of_a_pipeline_parses_back_to_its_graph() -> None:
    nodes, edges = parse_dot(to_dot(diamond()))
    assert set(nodes) == {"top", "left", "right", "bottom"}
    assert edges == edges_of(diamond())
    assert nodes["bottom"]["label"] == r"the \"end\"\nbottom"


def test_a_runs_graph_colours_nodes_by_state(make_pylo: MakePylo) -> None:
    p = make_pylo()
    control_tasks.BROKEN.add("left")
    record = p.get_pipeline(p.run_pipeline(diamond()))
    expected = {"top": "done", "left": "failed", "right": "done", "bottom": "failed_dependency"}
    _, edges, classes = parse_mermaid(to_mermaid(record))
    assert classes == expected and edges == edges_of(diamond())
    nodes, _ = parse_dot(to_dot(record))
    assert {key: attributes["fillcolor"] for key, attributes in nodes.items()} == {
        key: STATE_COLOURS[state] for key, state in expected.items()
    }
    assert "[failed_dependency]" in to_text(record)


def test_the_plan_reporter_writes_the_plan_before_any_node_runs(make_pylo: MakePylo) -> None:
    out = io.StringIO()

    class Watch:
        def node_started(self, event: Any) -> None:
            assert "4. the" in out.getvalue()

    p = make_pylo()
    run_id = p.run_pipeline(diamond(), hooks=[PlanReporter(diamond(), out), Watch()])
    assert out.getvalue() == f"pipeline run {run_id} plan:\n" + to_text(diamond())


def test_the_progress_reporter_counts_nodes_ended(make_pylo: MakePylo) -> None:
    pytest.importorskip("tqdm")
    out = io.StringIO()
    reporter = ProgressReporter(diamond(), file=out)
    make_pylo().run_pipeline(diamond(), hooks=[reporter])
    assert (reporter.ended, reporter.total) == (4, 4)
    assert "4/4" in out.getvalue() and "completed" in out.getvalue()


BROKEN_ITEMS: set[int] = set()


@task
def item(x: int) -> int:
    if x in BROKEN_ITEMS:
        raise ValueError(f"item {x} is broken")
    return x


@task
def total_of(values: list[int]) -> int:
    return sum(values)


class Progress:
    def __init__(self) -> None:
        self.events: list[tuple[str | None, int | None, int | None, int | None]] = []

    def node_progress(self, event: Any) -> None:
        self.events.append((event.display_name, event.inputs_done, event.inputs_failed, event.inputs_total))


def test_the_progress_reporter_shows_batch_nodes_inputs_as_they_go(make_pylo: MakePylo) -> None:
    pytest.importorskip("tqdm")
    out = io.StringIO()
    flow = [total_of.send(item.map(range(20)).set(display_name="twenty")), item.map(range(10)).set(display_name="ten")]
    reporter = ProgressReporter(flow, file=out)
    heard = Progress()
    make_pylo().run_pipeline(flow, hooks=[reporter, heard])
    assert (reporter.ended, reporter.total) == (3, 3)
    assert (reporter.inputs_done, reporter.inputs_failed, reporter.inputs_total) == (30, 0, 30)
    assert "inputs" in out.getvalue() and "30/30" in out.getvalue()
    for name, size in (("twenty", 20), ("ten", 10)):
        mine = [(done, failed, total) for node, done, failed, total in heard.events if node == name]
        assert mine[0] == (0, 0, size) and mine[-1] == (size, 0, size)  # from the start to the end
        assert [done for done, _, _ in mine] == sorted({done for done, _, _ in mine})  # as it goes, never back


def test_a_resumed_batch_node_reports_the_inputs_it_found_finished(make_pylo: MakePylo) -> None:
    pytest.importorskip("tqdm")
    pylo = make_pylo()
    flow = item.map(range(10)).set(display_name="ten")
    BROKEN_ITEMS.update({3, 7})
    try:
        heard = Progress()
        first = pylo.run_pipeline(flow, hooks=[heard])
        assert heard.events[-1] == ("ten", 10, 2, 10)
    finally:
        BROKEN_ITEMS.clear()
    out = io.StringIO()
    reporter = ProgressReporter(flow, file=out)
    heard = Progress()
    pylo.resume_pipeline(first, flow, hooks=[reporter, heard])
    assert heard.events[0] == ("ten", 8, 0, 10) and heard.events[-1] == ("ten", 10, 0, 10)
    assert (reporter.inputs_done, reporter.inputs_total) == (10, 10)


@task
def spawner() -> Any:
    return item.map(range(4))  # a child run with a batch node


def test_the_progress_reporter_counts_its_own_nodes_and_its_child_runs_inputs(make_pylo: MakePylo) -> None:
    pytest.importorskip("tqdm")
    out = io.StringIO()
    reporter = ProgressReporter(spawner.send(), file=out)
    make_pylo().run_pipeline(spawner.send(), hooks=[reporter])
    assert (reporter.ended, reporter.total) == (1, 1)
    assert (reporter.inputs_done, reporter.inputs_total) == (4, 4)
