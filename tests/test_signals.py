"""Ctrl-C and SIGTERM during a run: outcomes saved, workers gone, resume continues."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from interrupts import InterruptAfter, short_busy_timeout

from pylo import ExecutionNotFound, ExecutionStatus, Pylo
from pylo._options import RunOptions
from pylo.stores import open_store
from pylo.stores.base import Flush
from pylo.workers.threads import ThreadBackend, ThreadLanes

CHILD = textwrap.dedent(
    """
    import sys, time, os
    from pylo import Pylo

    store, backend, log = sys.argv[1], sys.argv[2], sys.argv[3]

    def record(item):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, f"{item}\\n".encode())
        os.close(fd)

    def slow(item):
        record(item)
        time.sleep(0.002)

    async def slow_async(item):
        import asyncio
        record(item)
        await asyncio.sleep(0.002)

    if backend == "threads":
        pylo = Pylo.local_multithread(store, 2, progress=False, flush_seconds=0.1)
    elif backend == "processes":
        pylo = Pylo.local_multiprocess(store, 2, progress=False, flush_seconds=0.1)
    else:
        pylo = Pylo.local_asyncio(store, 4, progress=False, flush_seconds=0.1)
    task = slow_async if backend == "asyncio" else slow
    pylo.start_from_scratch(range(20000), task, execution_id="victim")
    """
)

BACKENDS = [
    name
    for name, module in [
        ("threads", "pylo.workers.threads"),
        ("processes", "pylo.workers.processes"),
        ("asyncio", "pylo.workers.aio"),
    ]
    if importlib.util.find_spec(module) is not None
]


def ran(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigterm-group"])
def test_a_signal_saves_outcomes_stops_workers_and_allows_resume(tmp_path: Path, backend: str, how: str) -> None:
    store, log = tmp_path / "store", tmp_path / "ran.log"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), backend, str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, like a job in a terminal
    )
    try:
        deadline = time.monotonic() + 60
        while len(ran(log)) < 300:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never got going"
            time.sleep(0.01)
        family = psutil.Process(child.pid).children(recursive=True)
        if how == "ctrl-c":
            os.killpg(child.pid, signal.SIGINT)  # the terminal sends it to the whole group
        elif how == "sigterm":
            os.kill(child.pid, signal.SIGTERM)
        else:
            os.killpg(child.pid, signal.SIGTERM)  # what systemd sends when it stops a service
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    if how == "ctrl-c":
        assert child.returncode in (-signal.SIGINT, 130, 1), stderr
        assert b"KeyboardInterrupt" in stderr
    else:
        assert child.returncode == 128 + signal.SIGTERM, stderr
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"worker processes outlived the run: {alive}"

    pylo = Pylo.local_multithread(store, 2, progress=False)
    record = pylo.get_execution("victim")
    assert record.status is ExecutionStatus.INTERRUPTED
    # What interrupted it is recorded with its end.
    said = "Ctrl-C" if how == "ctrl-c" else "SIGTERM"
    assert (record.stop_reason, record.stop_detail) == ("interrupted", said)
    finished, unfinished = pylo.get_state("victim")
    assert sorted(finished + unfinished) == list(range(20000))
    assert set(finished) <= set(ran(log)) and len(finished) > 0
    assert record.finished == len(finished)
    # Inputs the workers were running were interrupted, not failed: pending, no record.
    assert record.failed == 0 and pylo.get_failures("victim") == []

    ran_again: list[int] = []
    resumed = pylo.start_from_past_execution("victim", ran_again.append)
    assert sorted(ran_again) == unfinished
    assert pylo.get_state(resumed) == (list(range(20000)), [])
    pylo.close()


def test_sigterm_handler_of_the_application_is_left_alone(tmp_path: Path) -> None:
    seen: list[int] = []

    def mine(signum: int, frame: object) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        pylo = Pylo.local_multithread(tmp_path / "store", 1, progress=False)

        def task(item: int) -> None:
            if item == 0:
                os.kill(os.getpid(), signal.SIGTERM)

        execution_id = pylo.start_from_scratch(range(3), task)
        assert seen == [signal.SIGTERM]
        assert pylo.get_execution(execution_id).status is ExecutionStatus.COMPLETED
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- an interrupt at every moment of a run -------------------------------------------
#
# Each window is hit deterministically: a test double raises KeyboardInterrupt,
# or sends this process a real SIGINT, at that very point.


def _interrupt(real: bool) -> None:
    if real:
        # Python's own handler raises KeyboardInterrupt in this (the main)
        # thread at its next check, which comes before this call returns.
        os.kill(os.getpid(), signal.SIGINT)
        return
    raise KeyboardInterrupt("injected")


class _Window:
    """Where the next run is interrupted, and how."""

    where = ""
    real = False


def _backend_interrupted_at(window: type[_Window]) -> ThreadBackend:
    class Interrupted(ThreadLanes):
        def start(self, *args: Any) -> None:
            super().start(*args)
            if window.where == "start":
                _interrupt(window.real)

        def shutdown(self, wait: bool) -> None:
            super().shutdown(wait)
            if wait and window.where == "shutdown":
                _interrupt(window.real)

    class Backend(ThreadBackend):
        def new_lanes(self) -> ThreadLanes:
            if window.where == "construction":
                _interrupt(window.real)
            return Interrupted(5.0)

    return Backend()


@pytest.mark.parametrize("real", [False, True], ids=["raised", "real-sigint"])
@pytest.mark.parametrize("where", ["construction", "start", "shutdown", "final-flush"])
def test_an_interrupt_at_any_moment_of_a_run_ends_it_interrupted_with_every_outcome(
    tmp_path: Path, where: str, real: bool
) -> None:
    class Window(_Window):
        pass

    Window.where, Window.real = where, real
    store = open_store("sqlite", tmp_path / "store")
    original = store.record_flush

    def record_flush(execution_id: str, flush: Flush) -> None:
        if Window.where == "final-flush" and flush.status is ExecutionStatus.COMPLETED:
            _interrupt(real)
        original(execution_id, flush)

    store.record_flush = record_flush  # type: ignore[method-assign]
    # No flush before the end: every outcome is saved by the last one, or lost.
    options = RunOptions(3, task_executions_before_flush=100_000, flush_seconds=3600.0, progress=False)
    pylo = Pylo(store, _backend_interrupted_at(Window), options)
    ran: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        pylo.start_from_scratch(range(300), ran.append, execution_id="cut")
    record = pylo.get_execution("cut")
    assert record.status is ExecutionStatus.INTERRUPTED
    finished, unfinished = pylo.get_state("cut")
    assert record.finished == len(finished) == len(ran)
    assert sorted(finished + unfinished) == list(range(300))
    if where in ("shutdown", "final-flush"):
        assert len(finished) == 300  # the run was over: everything is saved
    Window.where = ""
    resumed = pylo.start_from_past_execution("cut", ran.append)
    assert sorted(ran) == list(range(300))
    assert pylo.get_state(resumed) == (list(range(300)), [])
    pylo.close()


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_between_a_statement_and_its_result_leaves_the_database_free(
    tmp_path: Path, interrupt: type[BaseException]
) -> None:
    # A signal's exception is raised as soon as the driver's call returns,
    # inside SQLAlchemy's handling of the statement: it must end the
    # transaction, not leave the write lock with a connection nobody uses
    # (the end of the run, written next, would wait for it for a minute).
    import sqlite3

    import sqlalchemy as sa

    store = open_store("sqlite", tmp_path / "store")
    pylo = Pylo(store, ThreadBackend(), RunOptions(2, progress=False))
    execution_id = pylo.start_from_scratch(range(10), abs, execution_id="run")
    raised: list[str] = []

    def after_cursor_execute(*args: Any) -> None:
        cursor, statement = args[1], args[2]
        if not raised and cursor.description is not None:  # a query with rows still to fetch
            raised.append(statement)
            raise interrupt()

    sa.event.listen(store._engine, "after_cursor_execute", after_cursor_execute)  # type: ignore[attr-defined]
    # A flush that goes through SQLAlchemy (it sets the status), as the end of a run does.
    final = Flush(
        states={},
        failures=(),
        results=(),
        total=10,
        finished=10,
        failed=0,
        status=ExecutionStatus.INTERRUPTED,
    )
    with pytest.raises(interrupt):
        store.record_flush(execution_id, final)
    assert raised, "the flush ran no write through SQLAlchemy"
    other = sqlite3.connect(tmp_path / "store" / "pylo.sqlite", timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")  # "database is locked" if a transaction was left open
        other.rollback()
    finally:
        other.close()
    sa.event.remove(store._engine, "after_cursor_execute", after_cursor_execute)  # type: ignore[attr-defined]
    store.record_flush(execution_id, final)  # and the store writes as before
    assert pylo.get_execution(execution_id).status is ExecutionStatus.INTERRUPTED
    pylo.close()


def test_an_interrupt_inside_a_flush_ends_the_run_interrupted_with_every_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first flush with chunk rows creates their table through SQLAlchemy,
    # asking SQLite whether it exists: Ctrl-C lands right after that query.
    import threading

    import sqlalchemy as sa

    short_busy_timeout(monkeypatch)
    store = open_store("sqlite", tmp_path / "store")
    armed = threading.Event()
    fired: list[str] = []  # once: the resume below runs undisturbed

    def after_cursor_execute(*args: Any) -> None:
        if armed.is_set() and args[1].description is not None:
            armed.clear()
            fired.append(args[2])
            raise KeyboardInterrupt

    sa.event.listen(store._engine, "after_cursor_execute", after_cursor_execute)  # type: ignore[attr-defined]
    original = store.record_flush

    def record_flush(execution_id: str, flush: Flush) -> None:
        if flush.chunks and flush.status is None and not fired:
            armed.set()
        original(execution_id, flush)

    store.record_flush = record_flush  # type: ignore[method-assign]
    pylo = Pylo(store, ThreadBackend(), RunOptions(2, task_executions_before_flush=50, progress=False))
    ran: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        pylo.start_from_scratch(range(300), ran.append, execution_id="cut")
    assert len(fired) == 1, "the interrupt did not land in a query of a flush"
    armed.clear()
    record = pylo.get_execution("cut")
    assert record.status is ExecutionStatus.INTERRUPTED
    finished, _ = pylo.get_state("cut")
    # Every input that ran is saved: those of the interrupted flush and those
    # the lanes had reported with them, by the run's last flush, at once.
    assert record.finished == len(finished) == len(ran)
    resumed = pylo.start_from_past_execution("cut", ran.append)
    assert sorted(ran) == list(range(300))
    assert pylo.get_state(resumed) == (list(range(300)), [])
    pylo.close()


@pytest.mark.parametrize("nth", range(1, 17))
def test_an_interrupt_at_any_statement_of_a_run_ends_it_with_every_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    # A Ctrl-C raised right after the nth statement SQLAlchemy sends for a run
    # (creating it, its first flushes, the chunk table's creation and the
    # queries before it): the run ends interrupted, or completed if it got
    # there first, with every input that ran saved, and resumes.
    short_busy_timeout(monkeypatch)
    store = open_store("sqlite", tmp_path / "store")
    interrupt = InterruptAfter(store._engine, nth, armed=False)  # type: ignore[attr-defined]
    options = RunOptions(2, task_executions_before_flush=50, flush_seconds=0.01, progress=False)
    pylo = Pylo(store, ThreadBackend(), options)
    ran: list[int] = []
    interrupt.armed = True
    try:
        pylo.start_from_scratch(range(300), ran.append, execution_id="cut")
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    interrupt.armed = False
    try:
        record = pylo.get_execution("cut")
    except ExecutionNotFound:  # interrupted while being created: nothing is left of it
        assert interrupted and not ran
        record = None
    if record is not None:
        expected = ExecutionStatus.INTERRUPTED if interrupted else ExecutionStatus.COMPLETED
        assert record.status is expected, interrupt.sent[-1:]
        finished, _ = pylo.get_state("cut")
        assert record.finished == len(finished) == len(ran), interrupt.sent[-1:]
    if record is None or not record.inputs_complete:
        # Interrupted while its inputs were recorded, before any task ran: started again, it is replaced.
        assert not ran
        last = pylo.start_from_scratch(range(300), ran.append, execution_id="cut")
    else:
        last = pylo.start_from_past_execution("cut", ran.append) if interrupted else "cut"
    assert sorted(ran) == list(range(300))
    assert pylo.get_state(last) == (list(range(300)), [])
    pylo.close()
