"""Tracing with OpenTelemetry: one trace per run, a span per node, user spans nested; nothing without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pylo import Pylo
from pylo.pipeline import TaskContext, task

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

MakePylo = Callable[..., Pylo]
_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """The SDK's provider as the application's, for this test only (the global one can be set once)."""
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: _PROVIDER)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@task
def fetch(x: int) -> int:
    with trace.get_tracer_provider().get_tracer("user").start_as_current_span("user work"):
        return x + 1


@task
def double(x: int) -> int:
    return 2 * x


@task
def broken(x: int) -> int:
    raise ValueError("no")


def test_one_trace_per_run_a_span_per_node_user_spans_nested(make_pylo: MakePylo, spans: InMemorySpanExporter) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(double.send(fetch.send(1)), run_id="traced")
    finished = spans.get_finished_spans()
    by_name = {span.name: span for span in finished}
    run_span = next(span for span in finished if span.name.startswith("pipeline "))
    assert {span.context.trace_id for span in finished} == {run_span.context.trace_id}
    assert by_name["fetch"].parent.span_id == run_span.context.span_id
    assert by_name["double"].parent.span_id == run_span.context.span_id
    assert by_name["user work"].parent.span_id == by_name["fetch"].context.span_id
    attributes = dict(by_name["double"].attributes)
    record = p.get_pipeline(run_id)
    assert attributes == {
        "pylo.run_id": "traced",
        "pylo.node_key": record.nodes[1].key,
        "pylo.task_name": record.nodes[1].task_name,
        "pylo.attempt": 1,
        "pylo.state": "done",
    }
    stored = p.store.runs().get_run(run_id).options["trace"]
    assert stored["trace_id"] == f"{run_span.context.trace_id:032x}"


@task(with_context=True)
def traced_context(context: TaskContext, x: int) -> str | None:
    return context.trace_id


def test_a_task_context_carries_the_runs_trace_id(make_pylo: MakePylo, spans: InMemorySpanExporter) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(traced_context.send(1))
    run_span = next(span for span in spans.get_finished_spans() if span.name.startswith("pipeline "))
    assert p.get_pipeline_result(run_id) == f"{run_span.context.trace_id:032x}"


def test_a_resumed_run_links_to_its_parents_trace(make_pylo: MakePylo, spans: InMemorySpanExporter) -> None:
    p = make_pylo()
    first = p.run_pipeline(double.send(broken.send(1)))
    second = p.resume_pipeline(first, double.send(fetch.send(1)))
    runs = p.store.runs()
    first_trace = runs.get_run(first).options["trace"]
    run_spans = [span for span in spans.get_finished_spans() if span.name.startswith("pipeline ")]
    assert len(run_spans) == 2 and run_spans[0].context.trace_id != run_spans[1].context.trace_id
    (link,) = run_spans[1].links
    assert f"{link.context.trace_id:032x}" == first_trace["trace_id"]
    assert runs.get_run(second).options["trace"]["trace_id"] == f"{run_spans[1].context.trace_id:032x}"
    failed = next(span for span in spans.get_finished_spans() if span.name == "broken")
    assert failed.attributes["pylo.state"] == "failed"


def test_a_batch_node_span_has_its_input_counts(make_pylo: MakePylo, spans: InMemorySpanExporter) -> None:
    p = make_pylo()
    p.run_pipeline(double.map([1, 2, 3]))
    span = next(span for span in spans.get_finished_spans() if span.name == "double")
    assert (span.attributes["pylo.inputs"], span.attributes["pylo.inputs_failed"]) == (3, 0)


def test_without_opentelemetry_nothing_imports_it(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed: importing it fails
        import pylo
        from pylo.pipeline import task
        assert not any(name.startswith("opentelemetry.") for name in sys.modules)

        @task
        def one():
            return 1

        with pylo.Pylo.local_multithread({str(tmp_path)!r}, 1) as p:
            run_id = p.run_pipeline(one.send())
            assert p.get_pipeline_result(run_id) == 1
            assert "trace" not in p.store.runs().get_run(run_id).options
        assert not any(name.startswith("opentelemetry.") for name in sys.modules)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    # And with it installed, `import pylo` alone does not import it.
    check = "import sys, pylo, pylo.pipeline; assert 'opentelemetry' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)


def test_without_a_tracer_provider_runs_are_not_traced(make_pylo: MakePylo) -> None:
    p = make_pylo()
    run_id = p.run_pipeline(double.send(1))
    assert "trace" not in p.store.runs().get_run(run_id).options
