"""One resume of an execution at a time, across processes (issue 9 item 4).

Two real processes resume the same execution; the second is refused with an
error naming the first, on every store. A resume whose process was killed
leaves a stale claim that the next resume takes over.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from claim_tasks import WAIT, resume_and_hold

from pylo import ExecutionNotResumable, ExecutionStatus, Pylo

SPAWN = multiprocessing.get_context("spawn")
INPUTS = list(range(40))


def fail_odd(item: int) -> int:
    if item % 2:
        raise ValueError(item)
    return item


def make_past(store_dir: Path, store_arg: str) -> None:
    with Pylo.local_multithread(store_dir, 2, store=store_arg, progress=False) as pylo:
        pylo.start_from_scratch(INPUTS, fail_odd, execution_id="past")


def spawn_resume(
    store_dir: Path, store_arg: str, new_id: str, go: Any, started: Any, release: Any, results: Any
) -> Any:
    process = SPAWN.Process(
        target=resume_and_hold, args=(str(store_dir), store_arg, "past", new_id, go, started, release, results)
    )
    process.start()
    return process


def stop(*processes: Any) -> None:
    for process in processes:
        process.join(timeout=WAIT)
        if process.is_alive():
            process.kill()
            process.join(timeout=WAIT)


@pytest.mark.timeout(180)
def test_processes_resuming_one_execution_at_once_run_it_once(store_dir: Path, store_arg: str) -> None:
    make_past(store_dir, store_arg)
    go, release = SPAWN.Event(), SPAWN.Event()
    started = [SPAWN.Event(), SPAWN.Event()]
    results = SPAWN.Queue()
    processes = [spawn_resume(store_dir, store_arg, f"cron{n}", go, started[n], release, results) for n in (0, 1)]
    try:
        go.set()
        loser, outcome = results.get(timeout=WAIT)  # the refused one ends first: the winner waits
        winner = "cron1" if loser == "cron0" else "cron0"
        assert outcome.startswith("ExecutionNotResumable: execution 'past' is already being resumed by "), outcome
        assert f"by execution {winner!r} (process " in outcome
        release.set()
        assert results.get(timeout=WAIT) == (winner, "ok")
    finally:
        release.set()
        stop(*processes)
    with Pylo.local_multithread(store_dir, 1, store=store_arg, progress=False) as pylo:
        ids = [record.id for record in pylo.list_executions()]
        assert ids == ["past", winner], "the refused resume created an execution"
        assert pylo.get_state(winner) == (INPUTS, [])
        # Its claim was released when it ended: the execution can be resumed again.
        again = pylo.start_from_past_execution("past", fail_odd)
        assert pylo.get_execution(again).status is ExecutionStatus.COMPLETED


@pytest.mark.timeout(180)
def test_a_resume_killed_while_holding_its_claim_is_taken_over(store_dir: Path, store_arg: str) -> None:
    make_past(store_dir, store_arg)
    go, started = SPAWN.Event(), SPAWN.Event()
    results = SPAWN.Queue()
    go.set()
    victim = spawn_resume(store_dir, store_arg, "killed", go, started, None, results)
    try:
        assert started.wait(timeout=WAIT), "the resume never started its task"
        with Pylo.local_multithread(store_dir, 1, store=store_arg, progress=False) as pylo:
            # While it lives, it holds the claim.
            with pytest.raises(ExecutionNotResumable, match="already being resumed by execution 'killed'"):
                pylo.start_from_past_execution("past", fail_odd, execution_id="refused")
            victim.kill()
            victim.join(timeout=WAIT)
            assert pylo.get_execution("killed").status is ExecutionStatus.CRASHED
            taken = pylo.start_from_past_execution("past", lambda item: item, execution_id="taken")
            assert pylo.get_state(taken) == (INPUTS, [])
            assert [record.id for record in pylo.list_executions()] == ["past", "killed", "taken"]
    finally:
        stop(victim)
