"""``pylo rm`` and ``pylo prune``, and Ctrl-C while ``pylo run`` reads its inputs, in a real subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

from cli_kit import TIMEOUT, Cli

from pylo import ExecutionRecord, ExecutionStatus, Pylo
from pylo.errors import ExecutionNotFound, StoreError
from pylo.stores._registry import open_store

DAY = 86400.0


def ids(cli: Cli) -> list[str]:
    return [record["id"] for record in json.loads(cli("list", "--json").stdout)]


def lines(text: str) -> list[str]:
    return text.splitlines()


def add_record(cli: Cli, execution_id: str, *, age_days: float = 0.0, **changes: object) -> None:
    """An execution written straight into the store, as old as asked."""
    at = time.time() - age_days * DAY
    fields: dict[str, object] = {"status": ExecutionStatus.COMPLETED, "ended_at": at, "pid": 1, "host": "elsewhere"}
    fields.update(changes)
    record = ExecutionRecord(
        execution_id,
        None,
        execution_id,
        created_at=at,
        updated_at=at,
        task_name="tasks:work",
        codec="pickle",
        inputs_complete=True,
        **fields,  # type: ignore[arg-type]
    )
    with Pylo.local_multithread(cli.cwd / ".pylo", 1) as pylo:
        pylo.store.create_execution(record)


def run(cli: Cli, execution_id: str, task: str = "tasks_fixed:work") -> None:
    completed = cli("run", task, "--inputs", "numbers.txt", "--id", execution_id, "-q")
    assert completed.returncode in (0, 1), completed.stderr


# -- pylo rm ------------------------------------------------------------------------------------


def test_rm_deletes_each_id_and_names_it(cli: Cli) -> None:
    run(cli, "a")
    run(cli, "b")
    run(cli, "c")
    removed = cli("rm", "a", "last")
    assert (removed.returncode, removed.stderr) == (0, "")
    assert sorted(lines(removed.stdout)) == ["deleted a", "deleted c"]
    assert ids(cli) == ["b"]


def test_rm_refuses_an_execution_a_resume_reads_and_deletes_nothing(cli: Cli) -> None:
    run(cli, "first", "tasks:work")
    assert cli("resume", "first", "tasks_fixed:work", "--id", "second", "-q").returncode == 0
    refused = cli("rm", "first", "nope")
    assert refused.returncode == 1
    assert lines(refused.stderr) == [
        "pylo rm: no execution nope in the store at .pylo/pylo.sqlite",
        "pylo rm: cannot delete first: execution second resumed it and still reads its inputs; "
        "delete it first, or together: pylo rm second first",
        "pylo rm: nothing was deleted",
    ]
    assert refused.stdout == ""
    assert ids(cli) == ["first", "second"]
    dry = cli("rm", "first", "second", "--dry-run")
    assert (dry.returncode, lines(dry.stdout)) == (0, ["would delete second", "would delete first"])
    assert ids(cli) == ["first", "second"]
    both = cli("rm", "first", "second")
    assert (both.returncode, lines(both.stdout)) == (0, ["deleted second", "deleted first"])
    assert ids(cli) == []


def test_rm_refuses_a_running_execution(cli: Cli) -> None:
    run(cli, "done")
    # Running in this (live) test process, as far as the store can tell.
    add_record(cli, "live", status=ExecutionStatus.RUNNING, ended_at=None, pid=os.getpid(), host=socket.gethostname())
    refused = cli("rm", "live", "done")
    assert refused.returncode == 1
    assert lines(refused.stderr)[0] == (
        f"pylo rm: cannot delete live: it is running (process {os.getpid()}); "
        f"stop it first (Ctrl-C where it runs, or kill {os.getpid()})"
    )
    assert ids(cli) == ["done", "live"]


# -- pylo prune -----------------------------------------------------------------------------------


def test_prune_needs_a_filter(cli: Cli) -> None:
    run(cli, "a")
    assert "pylo prune needs --status STATUS, --older-than AGE or --label KEY=VALUE" in cli.error("prune")
    assert "argument --older-than: must be a number and a unit" in cli.error("prune", "--older-than", "7")
    assert ids(cli) == ["a"]


def test_prune_deletes_by_status_and_age_and_keeps_what_a_resume_reads(cli: Cli) -> None:
    add_record(cli, "old-done", age_days=10)
    add_record(cli, "old-stopped", age_days=9, status=ExecutionStatus.STOPPED)
    add_record(cli, "old-parent", age_days=8)
    add_record(cli, "young", age_days=1)
    add_record(cli, "tagged", age_days=0.5, labels={"job": "nightly"})
    with Pylo.local_multithread(cli.cwd / ".pylo", 1) as pylo:
        now = time.time()
        pylo.store.create_execution(
            ExecutionRecord(
                "child", "old-parent", "old-parent", ExecutionStatus.COMPLETED, now, now, now, "tasks:work", "pickle"
            )
        )
    dry = cli("prune", "--older-than", "7d", "--status", "completed", "--dry-run")
    assert (dry.returncode, lines(dry.stdout)) == (0, ["would delete old-done"])
    assert lines(dry.stderr) == [
        "pylo prune: kept old-parent: execution child resumed it and still reads its inputs; "
        "delete it first, or together: pylo rm child old-parent",
        "would delete 1 execution, kept 1 in use",
    ]
    pruned = cli("prune", "--older-than", "7d")
    assert (pruned.returncode, lines(pruned.stdout)) == (0, ["deleted old-stopped", "deleted old-done"])
    assert ids(cli) == ["old-parent", "young", "tagged", "child"]
    # Labels narrow the choice, and select on their own.
    labelled = cli("prune", "--label", "job=nightly")
    assert (labelled.returncode, labelled.stdout) == (0, "deleted tagged\n")
    assert lines(labelled.stderr) == ["deleted 1 execution, kept 0 in use"]
    # A status alone selects whatever its age; a resume goes before what it resumed.
    everything = cli("prune", "--status", "completed")
    assert (everything.returncode, lines(everything.stdout)) == (
        0,
        ["deleted child", "deleted young", "deleted old-parent"],
    )


# -- Ctrl-C while `pylo run` reads its inputs -------------------------------------------------------


def _recorded(store: Path, execution_id: str) -> int:
    """How many inputs the execution has recorded, -1 while it (or its store) does not exist."""
    try:
        with open_store("sqlite", store, create=False) as opened:
            return opened.get_execution(execution_id).total
    except (ExecutionNotFound, StoreError):
        return -1


def test_ctrl_c_while_reading_inputs_leaves_an_execution_the_same_id_replaces(cli: Cli) -> None:
    process = subprocess.Popen(
        cli.command("run", "tasks_fixed:work", "--id", "cut"),
        cwd=cli.cwd,
        env=cli.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        # Inputs are written to the store 16 batches at a time: these 100
        # stay in memory while pylo waits for more on stdin, which stays open.
        process.stdin.write(b"".join(b"%d\n" % n for n in range(100)))
        process.stdin.flush()
        deadline = time.monotonic() + TIMEOUT
        while _recorded(cli.cwd / ".pylo", "cut") < 0:
            assert time.monotonic() < deadline, "the execution was never created"
            assert process.poll() is None, process.communicate()
            select.select([process.stdout], [], [], 0.05)  # wait a moment without busy looping
        os.killpg(process.pid, signal.SIGINT)  # the terminal sends it to the whole group
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert process.returncode == 130, stderr
    assert (
        b"execution cut interrupted while reading its inputs (0 recorded, none ran): it has no inputs to resume; "
        b"run the command again (with --id cut it replaces this execution), or delete it: pylo rm cut"
    ) in stdout
    listing = cli("list").stdout
    assert "interrupted (inputs incomplete)" in listing
    shown = cli("show", "cut")
    assert "0 recorded before reading them stopped: incomplete, none ran" in shown.stdout
    assert "pylo resume" not in shown.stdout
    refused = cli("resume", "cut")
    assert refused.returncode == 2
    assert "run the `pylo run` command again, with --id cut to reuse its id" in refused.stderr
    assert "pylo rm cut" in refused.stderr and "start_from" not in refused.stderr
    again = cli("run", "tasks_fixed:work", "--inputs", "numbers.txt", "--id", "cut")
    assert again.returncode == 0, again.stdout + again.stderr
    record = json.loads(cli("show", "cut", "--json").stdout)
    assert (record["status"], record["inputs_complete"], record["finished"]) == ("completed", True, 100)
    # Once its inputs are recorded, the id is taken as before.
    taken = cli("run", "tasks_fixed:work", "--inputs", "numbers.txt", "--id", "cut")
    assert taken.returncode == 2
    assert "an execution with id cut already exists" in taken.stderr
