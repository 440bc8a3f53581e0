"""The run store contract for control requests and node statistics, on every store kind."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from run_kit import chain, make_node, make_run, request_cancel
from store_kit import WAIT, StoreFactory

from pylo.errors import PipelineNotFound
from pylo.stores.base import Store
from pylo.stores.runs import NodeRow, RunUpdate


def test_a_run_has_no_control_request_at_first(store: Store) -> None:
    runs = store.runs()
    runs.create_run(make_run("r"), chain(2))
    assert runs.read_control("r") is None


def test_a_request_replaces_the_last_and_none_clears_it(store: Store) -> None:
    runs = store.runs()
    runs.create_run(make_run("r"), chain(2))
    runs.request_control("r", "pause")
    assert runs.read_control("r") == "pause"
    runs.request_control("r", "cancel")
    assert runs.read_control("r") == "cancel"
    runs.request_control("r", None)
    assert runs.read_control("r") is None
    runs.request_control("r", None)  # clearing twice is fine
    assert runs.read_control("r") is None


def test_requests_leave_rows_and_status_alone(store: Store) -> None:
    runs = store.runs()
    runs.create_run(make_run("r"), chain(2))
    before = runs.read_nodes("r")
    runs.request_control("r", "pause")
    runs.record_run("r", RunUpdate(nodes=[make_node("n0", 0, state="done")]))
    assert runs.read_control("r") == "pause"
    assert runs.get_run("r").status == "running"
    assert [n.state for n in runs.read_nodes("r")] == ["done", before[1].state]


def test_control_of_an_unknown_run_is_not_found(store: Store) -> None:
    runs = store.runs()
    with pytest.raises(PipelineNotFound):
        runs.request_control("nope", "pause")
    with pytest.raises(PipelineNotFound):
        runs.read_control("nope")


def test_an_unknown_action_is_refused(store: Store) -> None:
    runs = store.runs()
    runs.create_run(make_run("r"), chain(1))
    with pytest.raises(ValueError, match="control request must be one of"):
        runs.request_control("r", "stop")


def test_a_request_from_another_process_is_read_while_the_writer_writes(store_factory: StoreFactory) -> None:
    with store_factory() as store:
        runs = store.runs()
        runs.create_run(make_run("r"), chain(3))
        process = multiprocessing.get_context("spawn").Process(target=request_cancel, args=(store_factory.spec, "r"))
        process.start()
        deadline = time.monotonic() + WAIT
        seq = 0
        while runs.read_control("r") is None:
            assert time.monotonic() < deadline, "the request never arrived"
            runs.record_run("r", RunUpdate(nodes=[make_node(f"n{seq % 3}", seq % 3, attempts=seq)]))
            seq += 1
        process.join(WAIT)
        assert process.exitcode == 0
        assert runs.read_control("r") == "cancel"
        assert len(runs.read_nodes("r")) == 3  # the writer's log is intact


def _done(key: str, seq: int, seconds: float) -> NodeRow:
    return make_node(key, seq, state="done", attempts=1, started_at=1000.0, ended_at=1000.0 + seconds)


def test_node_durations_of_done_nodes_newest_run_first_bounded(store: Store) -> None:
    runs = store.runs()
    for number in range(4):
        now = 1_700_000_000.0 + number
        nodes = [_done("a", 0, float(number)), make_node("b", 1, state="failed", started_at=1.0, ended_at=9.0)]
        runs.create_run(make_run(f"r{number}", created_at=now, updated_at=now), nodes)
    assert runs.node_durations(["a", "b", "c"], recent=2) == {"a": [3.0, 2.0]}
    assert runs.node_durations(["a"], recent=10) == {"a": [3.0, 2.0, 1.0, 0.0]}
    assert runs.node_durations([], recent=10) == {}
