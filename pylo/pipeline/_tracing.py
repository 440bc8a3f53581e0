"""OpenTelemetry tracing of runs: one trace per run, one span per node (the ``otel`` extra).

Active when ``opentelemetry`` (the API, ``pip install ".[otel]"`` from a checkout) can be
imported; it is imported only when a run starts, never by ``import pylo``,
and without it nothing changes. Spans go wherever the application's tracer
provider sends them (none is configured here); while the application has
set none, runs are not traced at all (nothing to pay per node).

- The run is a span ``pipeline <name>`` whose trace id is stored in the run's
  ``options["trace"]`` (with its span id); a resumed or unpaused run's span
  links to its parent's.
- Each node is a child span ``<display name>`` with attributes
  ``pylo.run_id``, ``pylo.node_key``, ``pylo.task_name``, ``pylo.attempt``
  and ``pylo.state`` (and ``pylo.inputs`` for a batch node), set at its end.
- A task that runs in its node's thread (the threads kind, and batch nodes'
  own spans) sees the node's span as current: spans it starts nest under it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["RunTracer", "chain", "start_run_tracer"]

logger = logging.getLogger(__name__)


def _opentelemetry() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


class RunTracer:
    """The spans of one run; fed by the coordinator's ``(event, index)`` calls, from its thread."""

    def __init__(
        self,
        trace: Any,
        provider: Any,
        run_id: str,
        name: str,
        rows: list[Any],
        parent: Any,
        inputs_of: Callable[[str], Any],
    ) -> None:
        from opentelemetry.trace import Link, SpanContext, TraceFlags

        self._trace = trace
        self._tracer = provider.get_tracer("pylo.pipeline")
        self._run_id = run_id
        self._rows = rows
        self._inputs_of = inputs_of
        links = []
        if isinstance(parent, dict):
            try:
                context = SpanContext(
                    trace_id=int(parent["trace_id"], 16),
                    span_id=int(parent["span_id"], 16),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
                links.append(Link(context, {"pylo.link": "parent run"}))
            except (KeyError, TypeError, ValueError):
                logger.debug("run %s: cannot link to its parent's trace %r", run_id, parent)
        self._span = self._tracer.start_span(
            f"pipeline {name}", attributes={"pylo.run_id": run_id}, links=links, context=None
        )
        self._context = trace.set_span_in_context(self._span)
        self._nodes: dict[int, Any] = {}
        span_context = self._span.get_span_context()
        self.ids: dict[str, str] | None = None
        if span_context.is_valid:
            self.ids = {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}

    @property
    def trace_id(self) -> str | None:
        return None if self.ids is None else self.ids["trace_id"]

    def __call__(self, event: str, index: int) -> None:
        row = self._rows[index]
        if event == "start":
            self._nodes[index] = self._tracer.start_span(
                row.display_name,
                context=self._context,
                attributes={"pylo.run_id": self._run_id, "pylo.node_key": row.key, "pylo.task_name": row.task_name},
            )
            return
        span = self._nodes.pop(index, None)
        if span is None:  # ended without running: a zero-length span says so
            span = self._tracer.start_span(
                row.display_name,
                context=self._context,
                attributes={"pylo.run_id": self._run_id, "pylo.node_key": row.key, "pylo.task_name": row.task_name},
            )
        if row.kind == "batch" and row.execution_id is not None:
            self._batch_counts(span, row.execution_id)
        span.set_attribute("pylo.attempt", row.attempts)
        span.set_attribute("pylo.state", row.state)
        if row.exc_type is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, f"{row.exc_type}: {row.message or ''}"))
        span.end()

    def _batch_counts(self, span: Any, execution_id: str) -> None:
        try:
            record = self._inputs_of(execution_id)
        except Exception:
            logger.debug("cannot read execution %s for its span", execution_id, exc_info=True)
            return
        if record is not None:
            span.set_attribute("pylo.inputs", record.total)
            span.set_attribute("pylo.inputs_failed", record.failed)
            span.set_attribute("pylo.inputs_pending", record.pending)

    @contextlib.contextmanager
    def node_context(self, index: int) -> Iterator[None]:
        """In the node's thread: its span is the current one."""
        span = self._nodes.get(index)
        if span is None:
            yield
            return
        with self._trace.use_span(span, end_on_exit=False):
            yield

    def end(self, status: str) -> None:
        for span in self._nodes.values():
            span.end()
        self._nodes.clear()
        self._span.set_attribute("pylo.status", status)
        self._span.end()


def start_run_tracer(
    run_id: str, name: str, rows: list[Any], parent: Any, inputs_of: Callable[[str], Any]
) -> RunTracer | None:
    """A tracer for the run, or None when OpenTelemetry is not installed."""
    trace = _opentelemetry()
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None  # no SDK configured: spans would go nowhere, and cost per node
    return RunTracer(trace, provider, run_id, name, rows, parent, inputs_of)


def chain(*calls: Callable[[str, int], None] | None) -> Callable[[str, int], None] | None:
    """One ``(event, index)`` callback calling each given one in order."""
    present = [call for call in calls if call is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def both(event: str, index: int) -> None:
        for call in present:
            call(event, index)

    return both
