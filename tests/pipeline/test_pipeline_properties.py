"""Property tests: random DAGs with random failures, soft failures and skips."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pipeline_tasks
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_tasks import EVENTS, prop_step

from pylo import PipelineStatus, Pylo, TaskState
from pylo.pipeline import Pipeline


@dataclass(frozen=True)
class Spec:
    fails: bool
    mode: str  # "plain", "soft" or "skip"
    propagate: bool
    data_ups: tuple[int, ...]
    order_ups: tuple[int, ...]


@st.composite
def dags(draw: st.DrawFn) -> list[Spec]:
    size = draw(st.integers(1, 12))
    specs = []
    for i in range(size):
        ups = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        as_order = draw(st.sets(st.sampled_from(sorted(ups)), max_size=len(ups))) if ups else set()
        specs.append(
            Spec(
                fails=draw(st.booleans()),
                mode=draw(st.sampled_from(["plain", "soft", "skip"])),
                propagate=draw(st.booleans()),
                data_ups=tuple(sorted(ups - as_order)),
                order_ups=tuple(sorted(as_order)),
            )
        )
    return specs


_RAISED = {"plain": TaskState.FAILED, "soft": TaskState.FAILED_SOFTLY, "skip": TaskState.SKIPPED}


def expected(specs: list[Spec]) -> tuple[list[TaskState], set[str]]:
    """The rules of docs/pipelines.md, applied in order (upstream nodes come first): states, and who ran."""
    states: list[TaskState] = []
    ran: set[str] = set()
    for i, spec in enumerate(specs):
        ups = [states[u] for u in (*spec.data_ups, *spec.order_ups)]
        if any(s in (TaskState.FAILED, TaskState.FAILED_DEPENDENCY) for s in ups):
            states.append(TaskState.FAILED_DEPENDENCY)
        elif TaskState.FAILED_SOFTLY in ups and spec.propagate:
            states.append(TaskState.FAILED_SOFTLY)
        else:
            ran.add(f"n{i}")
            states.append(_RAISED[spec.mode] if spec.fails else TaskState.DONE)
    return states, ran


def build(specs: list[Spec]) -> list[Pipeline]:
    made: list[Pipeline] = []
    for i, spec in enumerate(specs):
        node = prop_step.send(f"n{i}", spec.fails, *[made[u] for u in spec.data_ups]).set(
            display_name=f"n{i}",
            fail_softly=spec.mode == "soft",
            skippable=spec.mode == "skip",
            propagate_soft_failures=spec.propagate,
        )
        if spec.order_ups:
            node.after(*[made[u] for u in spec.order_ups])
        made.append(node)
    return made


@pytest.fixture(scope="module")
def pylos() -> Iterator[Callable[[int], Pylo]]:
    """One store for every example; a Pylo per number of workers."""
    made: dict[int, Pylo] = {}
    with tempfile.TemporaryDirectory() as store_dir:

        def get(workers: int) -> Pylo:
            if workers not in made:
                made[workers] = Pylo.local_multithread(store_dir, workers)
            return made[workers]

        yield get
        for pylo in made.values():
            pylo.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=dags(), workers=st.integers(1, 4), max_parallel=st.one_of(st.none(), st.integers(1, 3)))
def test_every_node_ends_as_the_rules_say_and_never_starts_before_its_upstream(
    pylos: Callable[[int], Pylo], specs: list[Spec], workers: int, max_parallel: int | None
) -> None:
    pipeline_tasks.reset()
    EVENTS.clear()
    pylo = pylos(workers)
    run_id = pylo.run_pipeline(build(specs), max_parallel=max_parallel)
    record = pylo.get_pipeline(run_id)
    by_name = {node.display_name: node for node in record.nodes}
    states, ran = expected(specs)
    assert [by_name[f"n{i}"].state for i in range(len(specs))] == states
    hard = {TaskState.FAILED, TaskState.FAILED_DEPENDENCY}
    assert record.status is (PipelineStatus.FAILED if hard & set(states) else PipelineStatus.COMPLETED)

    position = {event: index for index, event in enumerate(EVENTS)}
    started = {name for kind, name in EVENTS if kind == "start"}
    assert started == ran  # nodes ended without running were never called
    for i, spec in enumerate(specs):
        name = f"n{i}"
        if name not in started:
            continue
        for up in (*spec.data_ups, *spec.order_ups):
            if f"n{up}" in ran:  # an upstream node that ran ended before this one started
                assert position[("end", f"n{up}")] < position[("start", name)]
