"""``--initializer MODULE:FUNCTION``: per-worker setup from the command line, and how resume uses it again."""

from __future__ import annotations

import re
import sys

from cli_kit import Cli

from pylo import Pylo

SETUP = """
import os

connection = {}

def open_db():
    connection["db"] = f"db of process {os.getpid()}"

def unreachable():
    raise ConnectionRefusedError("cannot reach db.example")

def work(line):
    if "db" not in connection:
        raise RuntimeError("no connection: the worker was not set up")
    return int(line)
"""


def test_a_failing_initializer_leaves_everything_to_resume_with_the_fixed_one(cli: Cli) -> None:
    cli.write("setup.py", SETUP)
    failed = cli("run", "setup:work", "--inputs", "numbers.txt", "--initializer", "setup:unreachable", "--id", "i1")
    assert failed.returncode == 1, failed.stderr
    assert "pylo: error: the initializer setup:unreachable failed in worker" in failed.stderr
    assert "ConnectionRefusedError: cannot reach db.example" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert "0 finished, 0 failed, 100 pending" in failed.stdout and "resume:  pylo resume i1" in failed.stdout
    # The summary says why it ended as the run recorded it: the initializer's own error.
    # Whichever worker's initializer failed first (each of the threads tries its own).
    first = failed.stdout.splitlines()[0]
    assert re.fullmatch(
        r"execution i1 aborted after \S+: the initializer setup:unreachable failed in worker \d+ \(a thread\): "
        r"ConnectionRefusedError: cannot reach db\.example",
        first,
    ), first
    # Without the flag, resume sets workers up with the initializer i1 ran with: still unreachable.
    again = cli("resume", "i1", "--id", "i2")
    assert again.returncode == 1 and "setup:unreachable failed" in again.stderr
    fixed = cli("resume", "i1", "--initializer", "setup:open_db", "--id", "i3")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "all 100 inputs finished" in fixed.stdout
    assert "initializer=setup:open_db" in cli("show", "i3").stdout


def test_worker_processes_are_set_up(cli: Cli) -> None:
    cli.write("setup.py", SETUP)
    cli.write("few.txt", "1\n2\n3\n")
    ran = cli("run", "setup:work", "--inputs", "few.txt", "--processes", "--initializer", "setup:open_db")
    assert ran.returncode == 0, ran.stdout + ran.stderr  # work() raises in a process that was not set up


def test_resume_refuses_an_initializer_that_cannot_be_imported_and_says_what_to_pass(cli: Cli) -> None:
    cli.write("setup.py", SETUP)
    sys.path.insert(0, str(cli.cwd))
    try:
        import setup  # type: ignore[import-not-found]

        with Pylo.local_multithread(cli.cwd / ".pylo", 2, initializer=lambda: None, progress=False) as pylo:
            pylo.start_from_scratch(["1", "2"], setup.work, execution_id="made-in-python")
    finally:
        sys.path.remove(str(cli.cwd))
        sys.modules.pop("setup", None)
    line = cli.error("resume", "made-in-python")
    assert "ran with the initializer" in line and "<lambda>" in line and "cannot be imported by name" in line
    assert "--initializer MODULE:FUNCTION" in line


def test_an_unknown_or_async_initializer_is_a_usage_error(cli: Cli) -> None:
    cli.write("setup.py", SETUP + "\nasync def async_open():\n    pass\n")
    assert "setup" in cli.error("run", "setup:work", "--inputs", "numbers.txt", "--initializer", "setup:missing")
    line = cli.error("run", "setup:work", "--inputs", "numbers.txt", "--initializer", "setup:async_open")
    assert "--initializer setup:async_open is an async function" in line


def test_pipeline_run_sets_up_the_workers_of_its_batch_nodes(cli: Cli) -> None:
    cli.write(
        "flows.py",
        """
        from pylo.pipeline import task

        connection = {}

        def open_db():
            connection["db"] = "open"

        @task
        def look_up(n):
            return connection["db"]  # a KeyError in a worker that was not set up

        flow = look_up.map(range(5))
        """,
    )
    ran = cli("pipeline", "run", "flows:flow", "--initializer", "flows:open_db")
    assert ran.returncode == 0, ran.stdout + ran.stderr
