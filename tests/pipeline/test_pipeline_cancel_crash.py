"""Cancelling a paused run runs its finally_do once, also when the cancelling process is killed
(SIGKILL) while a finally_do runs: a finally_do recorded done does not run again."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from pipeline_tasks import logged, logged_calls, logged_cleanup

from pylo import PipelineStatus, Pylo, TaskState
from pylo.pipeline import PipelineControlError


def flow() -> Any:
    x = logged.send("x").wait()
    return [logged.send("y", x).finally_do(logged_cleanup, "f1"), logged.send("z", x).finally_do(logged_cleanup, "f2")]


def cancel_in_victim(store_dir: str, log_path: str) -> None:
    os.environ["PYLO_TEST_LOG"] = log_path
    os.environ["PYLO_TEST_CRASH"] = "second"
    pylo = Pylo.local_multithread(store_dir, 1, task_executions_before_flush=1, flush_seconds=0.05)
    pylo.cancel_pipeline("victim", flow())


def test_sigkill_while_a_cancel_runs_finally_do_then_cancel_again_runs_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir = str(tmp_path / "store")
    log = str(tmp_path / "calls.log")
    monkeypatch.setenv("PYLO_TEST_LOG", log)
    with Pylo.local_multithread(store_dir, 1) as pylo:
        pylo.run_pipeline(flow(), run_id="victim", max_parallel=1)
        assert pylo.get_pipeline("victim").status is PipelineStatus.PAUSED
    victim = multiprocessing.get_context("spawn").Process(target=cancel_in_victim, args=(store_dir, log))
    victim.start()
    try:
        deadline = time.monotonic() + 60
        with Pylo.local_multithread(store_dir, 1) as reader:
            # The second finally_do starts once the first ended; it dies once the first's done is in the store.
            while True:
                cleanups = [line for line in logged_calls(log) if line.startswith("cleanup-")]
                states = {n.key: n.state for n in reader.get_pipeline("victim").nodes}
                if len(cleanups) == 2 and list(states.values()).count(TaskState.DONE) == 2:
                    break
                assert victim.is_alive(), "the cancelling process ended before it could be killed"
                assert time.monotonic() < deadline, f"the first finally_do was never recorded done: {cleanups}"
                time.sleep(0.01)
        Path(log + ".go").touch()
    finally:
        victim.join(30)
    assert victim.exitcode == -signal.SIGKILL
    first, second = cleanups
    with Pylo.local_multithread(store_dir, 1) as pylo:
        assert pylo.get_pipeline("victim").status is PipelineStatus.CRASHED
        pylo.cancel_pipeline("victim", flow())  # the cancel under way, finished
        record = pylo.get_pipeline("victim")
        assert record.status is PipelineStatus.CANCELLED
        assert [(n.display_name, n.state.value) for n in record.nodes] == [
            ("logged", "done"),
            ("logged", "cancelled"),
            ("logged_cleanup", "done"),
            ("logged", "cancelled"),
            ("logged_cleanup", "done"),
        ]
        with pytest.raises(PipelineControlError, match="it is cancelled"):
            pylo.cancel_pipeline("victim", flow())
    # The first once (it was recorded done); the second again (it was not).
    assert logged_calls(log) == ["x", first, second, second]
