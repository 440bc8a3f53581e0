"""`pylo inputs`: failed inputs of one exception type, and a log of every input's outcome."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pytest
from cli_kit import Cli

COLUMNS = ["position", "state", "exception_type", "message", "attempts", "worker", "failed_at", "input", "execution"]


def test_failed_inputs_of_one_exception_type(cli: Cli) -> None:
    # Inputs 3, 13, ... 93 raise ValueError; 25, 50, 75, 100 TimeoutError.
    assert cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "job").returncode == 1
    values = cli("inputs", "job", "--failed", "--type", "ValueError")
    assert values.returncode == 0, values.stderr
    assert values.stdout.split() == [str(n) for n in range(3, 100, 10)]
    timeouts = cli("inputs", "job", "--failed", "--type", "TimeoutError", "--json")
    assert [json.loads(line) for line in timeouts.stdout.splitlines()] == ["25", "50", "75", "100"]
    assert cli("inputs", "job", "--failed", "--type", "KeyError").stdout == ""
    assert cli.error("inputs", "job", "--type", "ValueError") == (
        "pylo: error: --type filters failed inputs by exception type; add --failed: "
        "pylo inputs job --failed --type ValueError"
    )


def test_a_builtin_exception_type_is_matched_with_or_without_its_module(cli: Cli) -> None:
    # Built-in types are stored bare (TimeoutError); builtins.TimeoutError names them as well.
    assert cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "job").returncode == 1
    inputs = cli("inputs", "job", "--failed", "--type", "builtins.TimeoutError")
    assert inputs.stdout.split() == ["25", "50", "75", "100"], inputs.stderr
    failures = json.loads(cli("failures", "job", "--type", "builtins.TimeoutError", "--json").stdout)
    assert [(group["exception_type"], group["count"]) for group in failures["groups"]] == [("TimeoutError", 4)]
    rows = cli("inputs", "job", "--outcomes", "--json", "--failed", "--type", "builtins.TimeoutError").stdout
    assert [json.loads(row)["position"] for row in rows.splitlines()] == [24, 49, 74, 99]
    assert cli("inputs", "job", "--failed", "--type", "builtins.KeyError").stdout == ""
    for bad in ("", "TimeoutError."):
        assert cli.error("failures", "job", "--type", bad) == (
            "pylo: error: argument --type: must be an exception type: its name (TimeoutError) or its "
            f"qualified name (builtins.TimeoutError, requests.exceptions.HTTPError), got {bad!r} "
            "(see `pylo failures --help`)"
        )


def test_outcomes_of_every_input_as_csv_and_json(cli: Cli) -> None:
    # One worker stops at the third failure (input 23): 20 finished, 3 failed, 77 pending.
    run = cli("run", "tasks:work", "--inputs", "numbers.txt", "--workers", "1", "--max-failures", "3", "--id", "cut")
    assert run.returncode == 1, run.stderr

    table = cli("inputs", "cut", "--outcomes")
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert table.stdout.splitlines()[0].split(",") == COLUMNS
    assert [row["position"] for row in rows] == [str(p) for p in range(100)]  # input order
    assert Counter(row["state"] for row in rows) == {"finished": 20, "failed": 3, "pending": 77}
    failed = [row for row in rows if row["state"] == "failed"]
    assert [(row["input"], row["exception_type"], row["message"]) for row in failed] == [
        (str(n), "ValueError", f"record {n} has no price") for n in (3, 13, 23)
    ]
    assert all(row["attempts"] == "1" and row["worker"] == "0" and float(row["failed_at"]) > 0 for row in failed)
    finished = rows[0]
    assert finished == {
        **dict.fromkeys(COLUMNS, ""),
        **{"position": "0", "state": "finished", "worker": "0", "input": "1", "execution": "cut"},
    }

    lines = cli("inputs", "cut", "--outcomes", "--json", "--unfinished").stdout.splitlines()
    outcomes = [json.loads(line) for line in lines]
    assert [list(outcome) for outcome in outcomes[:1]] == [COLUMNS]
    assert Counter(outcome["state"] for outcome in outcomes) == {"failed": 3, "pending": 77}
    assert outcomes[0] == {**outcomes[0], "position": 2, "exception_type": "ValueError", "worker": 0, "input": "3"}
    assert outcomes[0]["execution"] == "cut"
    assert outcomes[-1]["state"] == "pending" and outcomes[-1]["exception_type"] is None
    assert outcomes[-1]["execution"] is None and outcomes[-1]["worker"] is None

    only = cli("inputs", "cut", "--outcomes", "--failed", "--type", "ValueError", "--json").stdout.splitlines()
    assert [json.loads(line)["input"] for line in only] == ["3", "13", "23"]
    assert cli.error("inputs", "cut", "--outcomes", "--results").startswith(
        "pylo: error: --results and --outcomes cannot be combined"
    )


@pytest.mark.parametrize("backend", [[], ["--processes"]], ids=["threads", "processes"])
def test_outcomes_name_the_worker_of_finished_inputs(cli: Cli, backend: list[str]) -> None:
    run = cli("run", "tasks_fixed:work", "--inputs", "numbers.txt", "--workers", "2", *backend, "--id", "all")
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO(cli("inputs", "all", "--outcomes").stdout)))
    assert Counter(row["state"] for row in rows) == {"finished": 100}
    assert {row["worker"] for row in rows} <= {"0", "1"}


def test_a_resume_names_the_execution_and_worker_that_ran_each_input_it_inherited(cli: Cli) -> None:
    # cut: one worker stops at the third failure; mid: two workers stop at their first; rest runs what is left.
    cut = cli("run", "tasks:work", "--inputs", "numbers.txt", "--workers", "1", "--max-failures", "3", "--id", "cut")
    assert cut.returncode == 1, cut.stderr
    mid = cli("resume", "cut", "tasks:work", "--id", "mid", "--workers", "2", "--max-worker-failures", "1")
    assert mid.returncode == 1, mid.stderr
    rest = cli("resume", "mid", "tasks_fixed:work", "--id", "rest", "--workers", "1")
    assert rest.returncode == 0, rest.stderr

    def outcomes(execution_id: str) -> list[dict[str, object]]:
        lines = cli("inputs", execution_id, "--outcomes", "--json").stdout.splitlines()
        return [json.loads(line) for line in lines]

    rows, earlier = outcomes("rest"), {"cut": outcomes("cut"), "mid": outcomes("mid")}
    assert Counter(row["state"] for row in rows) == {"finished": 100}
    # Each input names the execution that ran it, and the worker that ran it there, as that execution's log says.
    for row in rows:
        ran_in = str(row["execution"])
        if ran_in != "rest":
            there = earlier[ran_in][int(str(row["position"]))]
            assert (there["state"], there["execution"], there["worker"]) == ("finished", ran_in, row["worker"]), row
    by_execution = Counter(row["execution"] for row in rows)
    assert by_execution["cut"] == 20 and by_execution["rest"] >= 3  # cut's failures ran again, last in rest
    assert [row["position"] for row in rows if row["execution"] == "cut"] == [p for p in range(23) if p % 10 != 2]
    assert all(row["worker"] is not None for row in rows)
    # The CSV log says the same.
    table = list(csv.DictReader(io.StringIO(cli("inputs", "rest", "--outcomes").stdout)))
    assert [(row["execution"], row["worker"]) for row in table] == [(r["execution"], str(r["worker"])) for r in rows]
