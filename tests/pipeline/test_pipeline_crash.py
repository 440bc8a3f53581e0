"""Crash tests: a child process running a pipeline is killed with SIGKILL, then the run is resumed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from pipeline_tasks import crash_flow, logged_calls

from pylo import PipelineStatus, Pylo, TaskState


def run_victim(store_dir: str, store_name: str, log_path: str, hang: str) -> None:
    os.environ["PYLO_TEST_LOG"] = log_path
    os.environ["PYLO_TEST_HANG"] = hang
    pylo = Pylo.local_multithread(store_dir, 2, store=store_name, task_executions_before_flush=1, flush_seconds=0.05)
    pylo.run_pipeline(crash_flow(), run_id="victim")


@pytest.mark.parametrize("hang", ["c", "item40"])
@pytest.mark.parametrize("store_name", ["sqlite", "files"])
def test_sigkill_while_a_node_runs_then_resume_reruns_no_done_node(
    tmp_path: Path, store_name: str, hang: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir = str(tmp_path / "store")
    log_before = str(tmp_path / "before.log")
    child = multiprocessing.get_context("spawn").Process(
        target=run_victim, args=(store_dir, store_name, log_before, hang)
    )
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(log_before + ".hanging"):
            assert child.is_alive(), "the child ended before it could be killed"
            assert time.monotonic() < deadline, "the child never reached the hanging node"
            time.sleep(0.01)
        time.sleep(0.2)  # let the flush clock run: the store holds what ended before the kill
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL

    with Pylo.local_multithread(store_dir, 2, store=store_name) as pylo:
        crashed = pylo.get_pipeline("victim")
        assert crashed.status is PipelineStatus.CRASHED
        done_before = {n.display_name for n in crashed.nodes if n.state is TaskState.DONE}
        assert {"a", "b"} <= done_before and "d" not in done_before
        by_key = {n.key: n for n in crashed.nodes}
        for node in crashed.nodes:  # the store never holds a done node whose upstream is not done
            if node.state is TaskState.DONE:
                assert all(by_key[up].state is TaskState.DONE for up in node.upstream)

        log_after = str(tmp_path / "after.log")
        monkeypatch.setenv("PYLO_TEST_LOG", log_after)
        monkeypatch.delenv("PYLO_TEST_HANG", raising=False)
        resumed = pylo.resume_pipeline("victim", crash_flow())
        assert pylo.get_pipeline_result(resumed) == ["d", "side"]

    rerun = logged_calls(log_after)
    assert not set(rerun) & done_before  # no node the store said was done ran again
    assert sorted(rerun, key=rerun.index) == rerun and len(set(rerun)) == len(rerun)
    items_before = {name for name in logged_calls(log_before) if name.startswith("item")}
    items_after = {name for name in rerun if name.startswith("item")}
    assert items_before | items_after == {f"item{i}" for i in range(60)}
    if hang == "item40":
        # The batch node resumed its execution: only the inputs not recorded finished ran again.
        assert len(items_after) < 60
    else:
        assert items_after == set()  # the batch node was done: nothing of it ran again


def test_sigterm_interrupts_the_run_which_then_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_dir = str(tmp_path / "store")
    log_before = str(tmp_path / "before.log")
    child = multiprocessing.get_context("spawn").Process(target=run_victim, args=(store_dir, "sqlite", log_before, "c"))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(log_before + ".hanging"):
            assert child.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]
    finally:
        child.join(30)
    assert child.exitcode == 128 + signal.SIGTERM

    with Pylo.local_multithread(store_dir, 2) as pylo:
        stopped = pylo.get_pipeline("victim")
        assert stopped.status is PipelineStatus.INTERRUPTED
        states = {n.display_name: n.state for n in stopped.nodes}
        assert states["c"] is TaskState.PENDING and states["batch"] is TaskState.DONE
        monkeypatch.setenv("PYLO_TEST_LOG", str(tmp_path / "after.log"))
        monkeypatch.delenv("PYLO_TEST_HANG", raising=False)
        resumed = pylo.resume_pipeline("victim", crash_flow())
        assert pylo.get_pipeline_result(resumed) == ["d", "side"]
    assert logged_calls(str(tmp_path / "after.log")) == ["c", "d"]
