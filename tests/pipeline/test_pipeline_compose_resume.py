"""Composition across a resume: a failed group member, a failure an exceptionally recovered,
a failed child run, and SIGKILL while a child run or a recovered chain runs."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import compose_tasks as t
import pytest
from pipeline_tasks import BROKEN, count, logged_calls

from pylo import PipelineFailed, PipelineStatus, Pylo, TaskState
from pylo.pipeline import in_parallel

MakePylo = Callable[..., Pylo]


def group_flow() -> Any:
    return in_parallel([t.maybe_fail.send(name) for name in ("a", "b", "c")]).continue_with(t.to_list)


def test_resume_reruns_only_the_failed_member_of_a_group(make_pylo: MakePylo) -> None:
    p = make_pylo()
    BROKEN.add("b")
    first = p.run_pipeline(group_flow())
    assert p.get_pipeline(first).status is PipelineStatus.FAILED
    BROKEN.clear()
    resumed = p.resume_pipeline(first, group_flow())
    assert p.get_pipeline_result(resumed) == [["a", "b", "c"]]
    assert (count("a"), count("b"), count("c")) == (1, 2, 1)


def recovered_flow() -> Any:
    return t.maybe_fail.send("x").exceptionally(t.recover).continue_with(t.to_list)


def test_resume_keeps_a_failure_an_exceptionally_recovered(make_pylo: MakePylo) -> None:
    p = make_pylo()
    BROKEN.add("x")
    first = p.run_pipeline(recovered_flow())
    assert p.get_pipeline_result(first) == ["recovered from ValueError: x is broken"]
    BROKEN.clear()  # even "fixed", the recovered node is not run again: it ended, recovered
    resumed = p.resume_pipeline(first, recovered_flow())
    assert p.get_pipeline_result(resumed) == ["recovered from ValueError: x is broken"]
    assert [n.state for n in p.get_pipeline(resumed).nodes] == [TaskState.FAILED, TaskState.DONE, TaskState.DONE]
    assert (count("x"), count("recover")) == (1, 1)


def child_flow() -> Any:
    return t.parent_of_failing_child.send(1)


def test_resume_continues_a_failed_child_run_without_rerunning_the_parent_body(make_pylo: MakePylo) -> None:
    p = make_pylo()
    BROKEN.add("child-broken")
    first = p.run_pipeline(child_flow())
    with pytest.raises(PipelineFailed):
        p.get_pipeline_result(first)
    old_child = p.get_pipeline(first).nodes[0].child_run_id
    assert old_child is not None and p.get_pipeline(old_child).status is PipelineStatus.FAILED
    BROKEN.clear()
    resumed = p.resume_pipeline(first, child_flow())
    assert p.get_pipeline_result(resumed) == [["child-ok", "child-broken"]]
    new_child = p.get_pipeline(resumed).nodes[0].child_run_id
    assert new_child is not None and p.get_pipeline(new_child).parent_id == old_child
    assert (count("parent body"), count("child-ok"), count("child-broken")) == (1, 1, 2)


def test_resume_keeps_state_stored_with_done_nodes(make_pylo: MakePylo) -> None:
    p = make_pylo()

    def flow() -> Any:
        return t.remember.send("a", 1).continue_with(t.maybe_fail, "s").continue_with(t.read_state)

    BROKEN.add("s")
    first = p.run_pipeline(flow())
    BROKEN.clear()
    assert p.get_pipeline_result(p.resume_pipeline(first, flow())) == {"a": 1}


def tolerant_flow() -> Any:
    """Members: a stateful chain whose second node fails, one failing at once, one that succeeds."""
    chain = t.remember.send("k", 1).continue_with(t.fail_after, "chain")
    members = [chain, t.maybe_fail.send("alone"), t.remember.send("j", 2)]
    group = in_parallel(members, return_exceptions=True)
    return group.continue_with(t.state_and_values).with_initial(state={})


EXPECTED = [
    {"k": 1, "j": 2},  # the failed chain's state is merged too
    [("ValueError", "chain fails", True), ("ValueError", "alone is broken", True), 2],
]


def test_resume_after_a_later_failure_keeps_return_exceptions_members_exceptions_and_states(
    make_pylo: MakePylo,
) -> None:
    p = make_pylo()
    BROKEN.update({"alone", "state_and_values"})
    first = p.run_pipeline(tolerant_flow())
    assert p.get_pipeline(first).status is PipelineStatus.FAILED
    BROKEN.clear()  # "alone" is fixed too: its failure is a value, kept, not run again
    resumed = p.resume_pipeline(first, tolerant_flow())
    assert p.get_pipeline_result(resumed) == EXPECTED
    assert (count("chain"), count("alone"), count("state_and_values")) == (1, 1, 2)
    BROKEN.add("alone")
    fresh = p.run_pipeline(tolerant_flow())  # the same values in a run that did not resume
    assert p.get_pipeline_result(fresh) == EXPECTED


def test_a_failed_return_exceptions_sink_is_the_same_exception_after_a_resume(make_pylo: MakePylo) -> None:
    p = make_pylo()

    def flow() -> Any:
        return [
            in_parallel([t.maybe_fail.send("a").continue_with(t.add, 1)], return_exceptions=True),
            t.maybe_fail.send("later"),
        ]

    BROKEN.update({"a", "later"})
    first = p.run_pipeline(flow())
    BROKEN.clear()
    [[value], later] = p.get_pipeline_result(p.resume_pipeline(first, flow()))
    assert t.describe(value) == ("ValueError", "a is broken", True) and later == "later"


# -- SIGKILL -------------------------------------------------------------------------------


def dynamic_flow() -> Any:
    return t.logged_parent.send()


def handled_flow() -> Any:
    return t.logged_fail.send("fail").exceptionally(t.logged_recover).continue_with(t.logged_after, "after")


def tolerant_crash_flow() -> Any:
    members = [t.logged_step.send("ok"), t.logged_fail.send("bad"), t.logged_fail.send("bad2").continue_with(t.add, 1)]
    return in_parallel(members, return_exceptions=True).continue_with(t.logged_describe)


FLOWS = {"dynamic": dynamic_flow, "handled": handled_flow, "tolerant": tolerant_crash_flow}


def run_victim(store_dir: str, log_path: str, hang: str, flow: str) -> None:
    os.environ["PYLO_TEST_LOG"] = log_path
    os.environ["PYLO_TEST_HANG"] = hang
    pylo = Pylo.local_multithread(store_dir, 2, task_executions_before_flush=1, flush_seconds=0.05)
    pylo.run_pipeline(FLOWS[flow](), run_id="victim")


def kill_when_hanging(tmp_path: Path, hang: str, flow: str) -> tuple[str, str]:
    store_dir = str(tmp_path / "store")
    log_before = str(tmp_path / "before.log")
    child = multiprocessing.get_context("spawn").Process(target=run_victim, args=(store_dir, log_before, hang, flow))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(log_before + ".hanging"):
            assert child.is_alive(), "the child ended before it could be killed"
            assert time.monotonic() < deadline, "the child never reached the hanging task"
            time.sleep(0.01)
        time.sleep(0.2)  # let the flush clock run
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    return store_dir, log_before


def test_sigkill_inside_a_child_run_then_resume_continues_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir, log_before = kill_when_hanging(tmp_path, "child-b", "dynamic")
    assert logged_calls(log_before) == ["parent", "child-a", "child-b"]
    log_after = str(tmp_path / "after.log")
    monkeypatch.setenv("PYLO_TEST_LOG", log_after)
    monkeypatch.delenv("PYLO_TEST_HANG", raising=False)
    with Pylo.local_multithread(store_dir, 2) as pylo:
        crashed = pylo.get_pipeline("victim")
        assert crashed.status is PipelineStatus.CRASHED
        assert crashed.nodes[0].child_run_id is not None  # recorded before the child started
        resumed = pylo.resume_pipeline("victim", dynamic_flow())
        assert pylo.get_pipeline_result(resumed) == "child-a+child-b"
    assert logged_calls(log_after) == ["child-b"]  # neither the parent's body nor child-a again


def test_sigkill_after_a_recovery_then_resume_keeps_the_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir, log_before = kill_when_hanging(tmp_path, "after", "handled")
    assert logged_calls(log_before) == ["fail", "recover", "after"]
    log_after = str(tmp_path / "after.log")
    monkeypatch.setenv("PYLO_TEST_LOG", log_after)
    monkeypatch.delenv("PYLO_TEST_HANG", raising=False)
    with Pylo.local_multithread(store_dir, 2) as pylo:
        resumed = pylo.resume_pipeline("victim", handled_flow())
        assert pylo.get_pipeline_result(resumed) == "recovered: fail fails then after"
    assert logged_calls(log_after) == ["after"]


def test_sigkill_after_return_exceptions_members_failed_then_resume_keeps_their_exceptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir, log_before = kill_when_hanging(tmp_path, "describe", "tolerant")
    assert sorted(logged_calls(log_before)) == ["bad", "bad2", "describe", "ok"]
    log_after = str(tmp_path / "after.log")
    monkeypatch.setenv("PYLO_TEST_LOG", log_after)
    monkeypatch.delenv("PYLO_TEST_HANG", raising=False)
    expected = ["ok", ("ValueError", "bad fails", True), ("ValueError", "bad2 fails", True)]
    with Pylo.local_multithread(store_dir, 2) as pylo:
        resumed = pylo.resume_pipeline("victim", tolerant_crash_flow())
        assert pylo.get_pipeline_result(resumed) == expected
        assert pylo.get_pipeline_result(pylo.run_pipeline(tolerant_crash_flow())) == expected  # as a fresh run
    calls = logged_calls(log_after)
    assert calls[0] == "describe"  # the resume: the members did not run again
    assert sorted(calls[1:4]) == ["bad", "bad2", "ok"] and calls[4:] == ["describe"]  # the fresh run
