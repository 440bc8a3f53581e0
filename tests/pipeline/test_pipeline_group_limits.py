"""in_parallel(max_parallelism=N): at most N member chains of the group in flight, each from its
first node's start to its last node's end; shared nodes, crossing groups and a resume."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylo import PipelineStatus, Pylo
from pylo.pipeline import in_parallel, task

MakePylo = Callable[..., Pylo]

pytestmark = pytest.mark.parametrize("store_name", ["sqlite"])

EVENTS: list[str] = []
IN_FLIGHT = [0, 0]  # member chains between their first start and last end; the most seen
BROKEN: set[str] = set()
_LOCK = threading.Lock()


@pytest.fixture(autouse=True)
def clean() -> None:
    EVENTS.clear()
    IN_FLIGHT[:] = [0, 0]
    BROKEN.clear()


@task
def first(chain: str) -> str:
    """The first node of a chain: the chain is in flight from here."""
    with _LOCK:
        IN_FLIGHT[0] += 1
        IN_FLIGHT[1] = max(IN_FLIGHT[1], IN_FLIGHT[0])
        EVENTS.append(f"start {chain}1")
    with _LOCK:
        EVENTS.append(f"end {chain}1")
    return chain


def _step(chain: str, step: int) -> None:
    with _LOCK:
        EVENTS.append(f"start {chain}{step}")
    with _LOCK:
        EVENTS.append(f"end {chain}{step}")


@task
def middle(chain: str, step: int) -> str:
    _step(chain, step)
    if f"{chain}{step}" in BROKEN:
        raise ValueError(f"{chain}{step} is broken")
    return chain


@task
def last(chain: str, step: int) -> str:
    """The last node of a chain: the chain is no longer in flight once it returns."""
    _step(chain, step)
    with _LOCK:
        IN_FLIGHT[0] -= 1
    return f"{chain} done"


def chain(name: str, length: int = 3) -> Any:
    pipeline = first.send(name)
    for step in range(2, length):
        pipeline = pipeline.continue_with(middle, step)
    return pipeline.continue_with(last, length)


def by_chain(names: str, length: int = 3) -> list[str]:
    return [f"{kind} {name}{step}" for name in names for step in range(1, length + 1) for kind in ("start", "end")]


def test_max_parallelism_1_runs_multi_node_chains_one_after_the_other_in_order(make_pylo: MakePylo) -> None:
    p = make_pylo(4)
    run_id = p.run_pipeline(in_parallel([chain(name) for name in "abc"], max_parallelism=1))
    assert p.get_pipeline_result(run_id) == ["a done", "b done", "c done"]
    assert by_chain("abc") == EVENTS


def test_max_parallelism_2_never_has_more_than_two_chains_in_flight(make_pylo: MakePylo) -> None:
    p = make_pylo(6)
    run_id = p.run_pipeline(in_parallel([chain(name, 4) for name in "abcdef"], max_parallelism=2), max_parallel=6)
    assert p.get_pipeline_result(run_id) == [f"{name} done" for name in "abcdef"]
    assert 1 <= IN_FLIGHT[1] <= 2 and IN_FLIGHT[0] == 0
    assert EVENTS.index("start c1") > min(EVENTS.index("end a4"), EVENTS.index("end b4"))


def test_a_node_every_member_needs_runs_once_and_holds_no_slot(make_pylo: MakePylo) -> None:
    p = make_pylo(4)
    # Each member receives the shared first node's result: a shared prefix, not part of any chain.
    shared = first.send("s")
    members = [
        shared.continue_with(middle, 2).continue_with(last, 3),
        shared.continue_with(middle, 5).continue_with(last, 6),
    ]
    run_id = p.run_pipeline(in_parallel(members, max_parallelism=1))
    assert p.get_pipeline_result(run_id) == ["s done", "s done"]
    steps = [f"{kind} s{step}" for step in (1, 2, 3, 5, 6) for kind in ("start", "end")]
    assert steps == EVENTS


def test_nested_groups_each_limit_their_own_members(make_pylo: MakePylo) -> None:
    p = make_pylo(6)
    inner = in_parallel([chain("a", 2), chain("b", 2)], max_parallelism=1)
    outer = in_parallel([inner, chain("c", 2)], max_parallelism=1)
    run_id = p.run_pipeline(outer, max_parallel=6)
    assert p.get_pipeline_result(run_id) == [["a done", "b done"], "c done"]
    assert by_chain("abc", 2) == EVENTS


@task
def join(*parts: Any) -> str:
    return "+".join(parts)


def test_groups_sharing_members_in_crossing_orders_do_not_deadlock(
    make_pylo: MakePylo, caplog: pytest.LogCaptureFixture
) -> None:
    p = make_pylo(4)
    c, n, m = first.send("c").continue_with(last, 2), first.send("n").continue_with(last, 2), first.send("m")
    # c and n belong to one member of g, m to the other; in h, c and m to one member, n to the other.
    g = in_parallel([join.send(c, n), join.send(m)], max_parallelism=1)
    h = in_parallel([join.send(c, m), join.send(n)], max_parallelism=1)
    with caplog.at_level(logging.WARNING, logger="pylo.pipeline._group_limits"):
        run_id = p.run_pipeline([g, h])
    assert p.get_pipeline_result(run_id) == [["c done+n done", "m"], ["c done+m", "n done"]]
    assert "starts over its group's max_parallelism" in caplog.text


def test_a_resume_admits_only_unfinished_chains_and_keeps_the_limit(
    make_pylo: MakePylo, caplog: pytest.LogCaptureFixture
) -> None:
    p = make_pylo(4)
    flow = in_parallel([chain(name, 3) for name in "abcd"], max_parallelism=2)
    BROKEN.update({"b2", "c2", "d2"})
    first_run = p.run_pipeline(flow)
    assert p.get_pipeline(first_run).status is PipelineStatus.FAILED
    BROKEN.clear()
    EVENTS.clear()
    IN_FLIGHT[:] = [0, 0]
    with caplog.at_level(logging.WARNING, logger="pylo.pipeline._group_limits"):
        resumed = p.resume_pipeline(first_run, flow, max_parallel=4)
    assert p.get_pipeline_result(resumed) == [f"{name} done" for name in "abcd"]
    # a is done and takes no slot; b and c take the two, d waits for one of them to end.
    assert sorted(EVENTS) == sorted(by_chain("bcd", 3)[2:6] + by_chain("bcd", 3)[8:12] + by_chain("bcd", 3)[14:])
    assert EVENTS.index("start d2") > min(EVENTS.index("end b3"), EVENTS.index("end c3"))
    assert caplog.text == ""


@task
def visit(previous: Any, name: str, step: int, length: int) -> str:
    """Step ``step`` of chain ``name``: the chain is in flight from its first step's start to its last's end."""
    with _LOCK:
        if step == 1:
            IN_FLIGHT[0] += 1
            IN_FLIGHT[1] = max(IN_FLIGHT[1], IN_FLIGHT[0])
        EVENTS.append(f"{name}{step}")
        if step == length:
            IN_FLIGHT[0] -= 1
    return name


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(1, 3), min_size=1, max_size=5),
    limit=st.integers(1, 3),
    shared=st.booleans(),
)
def test_never_more_chains_in_flight_than_the_limit(
    make_pylo: MakePylo, lengths: list[int], limit: int, shared: bool
) -> None:
    EVENTS.clear()
    IN_FLIGHT[:] = [0, 0]
    prefix = middle.send("p", 0) if shared else None  # a node every member needs
    members = []
    for number, length in enumerate(lengths):
        name = f"m{number}-"
        pipeline = visit.send(prefix, name, 1, length)
        for step in range(2, length + 1):
            pipeline = pipeline.continue_with(visit, name, step, length)
        members.append(pipeline)
    p = make_pylo(4)
    run_id = p.run_pipeline(in_parallel(members, max_parallelism=limit), max_parallel=4)
    assert p.get_pipeline(run_id).status is PipelineStatus.COMPLETED
    assert IN_FLIGHT[0] == 0 and IN_FLIGHT[1] <= limit
    if limit == 1:
        # One chain after the other, each whole. (The examples share a store, so from the second
        # on, statistics may order the chains: declaration order is the other tests' subject.)
        seen = [e for e in EVENTS if e.startswith("m")]
        order = list(dict.fromkeys(e.split("-")[0] for e in seen))
        assert seen == [f"{name}-{step}" for name in order for step in range(1, lengths[int(name[1:])] + 1)]
