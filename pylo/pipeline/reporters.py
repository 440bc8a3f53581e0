"""Reporters: what a pipeline will do and what a run did, for people (built on hooks).

- :func:`to_text`, :func:`to_mermaid`, :func:`to_dot`: a pipeline's graph (in
  the order its nodes may run) or a run's, whose nodes are coloured by state.
- :class:`PlanReporter`: a hook that prints that plan when the run starts,
  before any node runs.
- :class:`ProgressReporter`: a hook that shows nodes done out of the total
  on a tqdm bar, and batch nodes' inputs on a second one.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from pylo.pipeline.hooks import PipelineEvent

__all__ = ["PlanReporter", "ProgressReporter", "STATE_COLOURS", "to_dot", "to_mermaid", "to_text"]

#: Fill colour of a run's node, by state.
STATE_COLOURS = {
    "pending": "#eeeeee",
    "running": "#87ceeb",
    "done": "#90ee90",
    "failed": "#f08080",
    "failed_softly": "#ffd580",
    "failed_dependency": "#d3a0a0",
    "skipped": "#dddddd",
    "cancelled": "#c0c0c0",
}


@dataclass(frozen=True, slots=True)
class _Vertex:
    key: str
    label: str
    upstream: tuple[str, ...]
    state: str | None


def _vertices(pipeline_or_run: Any) -> list[_Vertex]:
    """The nodes of a pipeline (built into its graph) or of a run record, in a stable topological order."""
    from pylo.pipeline._records import PipelineRecord

    if isinstance(pipeline_or_run, PipelineRecord):
        return [
            _Vertex(node.key, node.display_name, tuple(node.upstream), str(node.state))
            for node in pipeline_or_run.nodes
        ]
    from pylo.pipeline._graph import build_graph

    graph = build_graph(pipeline_or_run)
    nodes = graph.nodes
    return [
        _Vertex(node.key, node.node.task.display_name, tuple(nodes[up].key for up in node.upstream), None)
        for node in nodes
    ]


def to_text(pipeline_or_run: Any) -> str:
    """The plan: one line per node, in an order the nodes may run in, with what each waits for."""
    lines = []
    for number, vertex in enumerate(_vertices(pipeline_or_run), 1):
        waits = f" after {', '.join(vertex.upstream)}" if vertex.upstream else ""
        state = f" [{vertex.state}]" if vertex.state else ""
        lines.append(f"{number}. {vertex.label} ({vertex.key}){waits}{state}")
    return "\n".join(lines) + "\n"


def _safe_id(number: int) -> str:
    return f"n{number}"


def _quote_mermaid(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(pipeline_or_run: Any) -> str:
    """A Mermaid flowchart (``flowchart TD``): node ids ``n0``.., labels the display names (and keys).

    A run's nodes get a ``class`` per state, filled by :data:`STATE_COLOURS`.
    """
    vertices = _vertices(pipeline_or_run)
    ids = {vertex.key: _safe_id(number) for number, vertex in enumerate(vertices)}
    lines = ["flowchart TD"]
    for vertex in vertices:
        lines.append(f'    {ids[vertex.key]}["{_quote_mermaid(vertex.label)}<br/>{_quote_mermaid(vertex.key)}"]')
    for vertex in vertices:
        for up in vertex.upstream:
            lines.append(f"    {ids[up]} --> {ids[vertex.key]}")
    states = sorted({vertex.state for vertex in vertices if vertex.state})
    for state in states:
        lines.append(f"    classDef {state} fill:{STATE_COLOURS.get(state, '#ffffff')}")
    for vertex in vertices:
        if vertex.state:
            lines.append(f"    class {ids[vertex.key]} {vertex.state}")
    return "\n".join(lines) + "\n"


def _escape_dot(text: str) -> str:
    return re.sub(r'(["\\])', r"\\\1", text).replace("\n", "\\n")


def _quote_dot(text: str) -> str:
    return f'"{_escape_dot(text)}"'


def to_dot(pipeline_or_run: Any) -> str:
    """A Graphviz ``digraph``: one node per key (labelled with its display name), one edge per dependency.

    A run's nodes are filled by state (:data:`STATE_COLOURS`).
    """
    lines = ["digraph pipeline {", "    rankdir=TB;", "    node [shape=box, style=filled, fillcolor=white];"]
    vertices = _vertices(pipeline_or_run)
    for vertex in vertices:
        label = f'"{_escape_dot(vertex.label)}\\n{_escape_dot(vertex.key)}"'  # \n: a line break in the label
        attributes = [f"label={label}"]
        if vertex.state:
            attributes.append(f"fillcolor={_quote_dot(STATE_COLOURS.get(vertex.state, '#ffffff'))}")
            attributes.append(f"tooltip={_quote_dot(vertex.state)}")
        lines.append(f"    {_quote_dot(vertex.key)} [{', '.join(attributes)}];")
    for vertex in vertices:
        for up in vertex.upstream:
            lines.append(f"    {_quote_dot(up)} -> {_quote_dot(vertex.key)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


class PlanReporter:
    """A hook that writes the plan (:func:`to_text`) when the run starts, before any node runs.

    Args:
        pipeline: The pipeline being run.
        out: Where to write (default: standard error).
    """

    def __init__(self, pipeline: Any, out: TextIO | None = None) -> None:
        self._plan = to_text(pipeline)
        self._out = out

    def pipeline_started(self, event: PipelineEvent) -> None:
        out = self._out or sys.stderr
        out.write(f"pipeline run {event.run_id} plan:\n{self._plan}")
        out.flush()


class ProgressReporter:
    """A hook that shows a run's progress on tqdm bars: nodes ended out of the total, and batch nodes' inputs.

    The first bar counts the run's nodes as they end. A second bar,
    ``inputs``, appears with the first batch node that starts: inputs
    finished (succeeded or failed) out of the inputs of the batch nodes
    started so far, its own and its child runs', updated as their executions
    go (``node_progress`` events), with the failed ones in its postfix. A
    child run's nodes are not counted on the first bar (their number is not
    known in advance).

    Args:
        pipeline: The pipeline being run (for its number of nodes).
        **tqdm_options: Passed to ``tqdm.tqdm`` (both bars).

    Attributes:
        total: The run's nodes.
        ended: Its nodes ended so far.
        inputs_done: Batch node inputs finished so far (failed ones included).
        inputs_failed: Of those, the ones that failed.
        inputs_total: Inputs of the batch nodes started so far.
    """

    def __init__(self, pipeline: Any, **tqdm_options: Any) -> None:
        self.total = len(_vertices(pipeline))
        self.ended = 0
        self.inputs_done = self.inputs_failed = self.inputs_total = 0
        self._options = tqdm_options
        self._bar: Any = None
        self._inputs_bar: Any = None
        self._run_id: str | None = None
        # (run id, node key) -> (done, failed, total) of each batch node heard of.
        self._batches: dict[tuple[str, str | None], tuple[int, int, int]] = {}

    def pipeline_started(self, event: PipelineEvent) -> None:
        if self._run_id is not None:
            return  # a child run's start
        from tqdm import tqdm

        self._run_id = event.run_id
        self._bar = tqdm(total=self.total, desc=f"pipeline {event.run_id}", unit="node", **self._options)

    def _ended(self, event: PipelineEvent) -> None:
        if event.run_id != self._run_id:
            return
        self.ended += 1
        if self._bar is not None:
            self._bar.update(1)

    node_finished = _ended
    node_skipped = _ended

    def node_progress(self, event: PipelineEvent) -> None:
        self._batches[(event.run_id, event.node_key)] = (
            event.inputs_done or 0,
            event.inputs_failed or 0,
            event.inputs_total or 0,
        )
        self.inputs_done = sum(done for done, _, _ in self._batches.values())
        self.inputs_failed = sum(failed for _, failed, _ in self._batches.values())
        self.inputs_total = sum(total for _, _, total in self._batches.values())
        if self._inputs_bar is None:
            from tqdm import tqdm

            self._inputs_bar = tqdm(total=self.inputs_total, desc="inputs", unit="input", **self._options)
        bar = self._inputs_bar
        bar.total = self.inputs_total
        bar.n = self.inputs_done
        bar.set_postfix_str(f"failed={self.inputs_failed}", refresh=False)
        bar.refresh()

    def pipeline_finished(self, event: PipelineEvent) -> None:
        if event.run_id != self._run_id:
            return
        if self._inputs_bar is not None:
            self._inputs_bar.close()
        if self._bar is not None:
            self._bar.set_postfix_str(event.status)
            self._bar.close()
