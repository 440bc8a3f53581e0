"""The summary of `pylo run` and `pylo resume`: why a run stopped, and the JSON summary for scripts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from cli_kit import RECORD_KEYS, Cli

#: A SQLite store written before stop reasons were recorded (see its README).
BEFORE_STOP_REASONS = Path(__file__).resolve().parent.parent / "stores" / "before_stop_reasons" / "sqlite"

# Prints as it works: with --json-summary that must not reach stdout.
CHATTY = """
def work(line):
    print("working on", line)
    if int(line) % 10 == 3:
        raise KeyError(f"user-{line}")
    return line
"""
# The keys docs/cli.md documents for --json-summary, in order.
SUMMARY_KEYS = [
    *RECORD_KEYS,
    "stop_reason",
    "stop_detail",
    "failures_by_type",
    "failures_command",
    "resume_command",
]


def test_the_summary_says_a_run_stopped_on_max_failures(cli: Cli) -> None:
    # One worker: the run stops at exactly the third failure (inputs 3, 13, 23).
    run = cli("run", "tasks:work", "--inputs", "numbers.txt", "--workers", "1", "--max-failures", "3", "--id", "capped")
    assert run.returncode == 1, run.stderr
    first_line = run.stdout.splitlines()[0]
    assert re.fullmatch(r"execution capped stopped after \S+: 3 failures reached --max-failures 3", first_line)
    assert run.stderr == ""  # said without -v

    shown = cli("show", "capped")
    assert re.search(r"^status +stopped \(3 failures reached --max-failures 3\)$", shown.stdout, re.M)
    as_json = json.loads(cli("show", "capped", "--json").stdout)
    assert (as_json["stop_reason"], as_json["stop_detail"]) == ("max_failures", "3 failures reached --max-failures 3")


def test_the_summary_says_every_worker_spent_its_failure_budget(cli: Cli) -> None:
    run = cli("run", "tasks:work", "--inputs", "numbers.txt", "--workers", "2", "--max-worker-failures", "2")
    assert run.returncode == 1, run.stderr
    assert re.match(
        r"execution \S+ stopped after \S+: every worker reached --max-worker-failures 2, with \d+ failures in all\n",
        run.stdout,
    )
    listed = json.loads(cli("list", "--json").stdout)
    assert [record["stop_reason"] for record in listed] == ["max_worker_failures"]


def test_show_says_why_executions_recorded_before_stop_reasons_stopped(cli: Cli) -> None:
    shutil.copytree(BEFORE_STOP_REASONS, cli.cwd / ".pylo")
    shown = cli("show", "capped")
    assert re.search(r"^status +stopped \(2 failures reached --max-failures 2\)$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^status +interrupted$", cli("show", "cut").stdout, re.M)  # which interrupt is not known
    listed = {record["id"]: record for record in json.loads(cli("list", "--json").stdout)}
    assert [listed[i]["stop_reason"] for i in ("capped", "spent", "cut", "unready")] == [
        "max_failures",
        "max_worker_failures",
        "interrupted",
        "aborted",
    ]
    assert listed["spent"]["stop_detail"] == "every worker reached --max-worker-failures 1, with 2 failures in all"


def test_json_summary_is_the_only_thing_on_stdout_for_run_and_resume(cli: Cli) -> None:
    cli.write("chatty.py", CHATTY)
    run = cli("run", "chatty:work", "--inputs", "numbers.txt", "--id", "first", "--json-summary")
    assert run.returncode == 1, run.stderr
    summary = json.loads(run.stdout)  # one document, nothing else
    assert list(summary) == SUMMARY_KEYS
    assert run.stderr.count("working on") == 100  # the task's prints went to stderr
    assert (summary["id"], summary["status"], summary["parent_id"]) == ("first", "completed", None)
    assert (summary["total"], summary["finished"], summary["failed"], summary["pending"]) == (100, 90, 10, 0)
    assert (summary["stop_reason"], summary["stop_detail"]) == (None, None)
    assert summary["failures_by_type"] == [
        {
            "exception_type": "KeyError",
            "count": 10,
            "message": "'user-#'",
            "example_message": "'user-3'",
            "other_messages": 0,
        }
    ]
    assert summary["failures_command"] == "pylo failures first"
    assert summary["resume_command"] == "pylo resume first"

    # Worker processes print through the descriptor they inherit: that too goes to stderr.
    resumed = cli("resume", "first", "tasks_fixed:work", "--id", "second", "--processes", "--json-summary")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert list(summary) == SUMMARY_KEYS
    assert (summary["id"], summary["parent_id"], summary["status"]) == ("second", "first", "completed")
    assert (summary["finished"], summary["failed"], summary["failures_by_type"]) == (100, 0, [])
    assert (summary["resume_command"], summary["failures_command"]) == (None, None)
    assert "resuming first as second" in resumed.stderr
