"""Inputs in (stdin, files, JSON), inputs out (`pylo inputs`), stores and logging."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_kit import RECORD_KEYS, TIMEOUT, Cli

KIND = """
def kind(value):
    return type(value).__name__
"""


@pytest.mark.parametrize("source", [[], ["--inputs", "-"]], ids=["stdin-by-default", "stdin-as-dash"])
def test_inputs_from_stdin_one_per_line(cli: Cli, source: list[str]) -> None:
    cli.write("kinds.py", KIND)
    # Blank and whitespace-only lines are skipped; other lines are kept as they are, CRLF or not.
    stdin = "alpha\n\n  spaced  \r\n   \nlast line without newline"
    run = cli("run", "kinds:kind", *source, "--store-results", "--id", "s", stdin=stdin)
    assert run.returncode == 0, run.stderr
    assert "all 3 inputs finished" in run.stdout
    assert cli("inputs", "s").stdout == "alpha\n  spaced  \nlast line without newline\n"
    assert cli("inputs", "s", "--results").stdout == "alpha\tstr\n  spaced  \tstr\nlast line without newline\tstr\n"


def test_json_inputs_round_trip(cli: Cli) -> None:
    cli.write("kinds.py", KIND)
    values = [1, 2.5, "text", None, True, [1, "a"], {"id": 7, "tags": ["x"]}, "ünïcode"]
    stdin = "\n".join(json.dumps(v, ensure_ascii=False) for v in values) + "\n\n"
    run = cli("run", "kinds:kind", "--json", "--store-results", "--id", "j", stdin=stdin)
    assert run.returncode == 0, run.stderr
    out = cli("inputs", "j", "--json").stdout
    assert [json.loads(line) for line in out.splitlines()] == values
    pairs = [json.loads(line) for line in cli("inputs", "j", "--results", "--json").stdout.splitlines()]
    assert pairs == [[v, type(v).__name__] for v in values]


def test_inputs_filters_by_state(cli: Cli) -> None:
    # One worker with a budget of one failure: 1 and 2 finish, 3 fails, the rest stay pending.
    run = cli("run", "tasks:work", "--inputs", "numbers.txt", "--workers", "1", "--max-worker-failures", "1")
    assert run.returncode == 1
    execution_id = run.stdout.split()[1]
    assert f"execution {execution_id} stopped" in run.stdout
    assert "2 finished, 1 failed, 97 pending, of 100 inputs" in run.stdout

    def inputs(*flags: str) -> list[int]:
        completed = cli("inputs", execution_id, *flags)
        assert completed.returncode == 0, completed.stderr
        return [int(line) for line in completed.stdout.splitlines()]

    assert inputs() == list(range(1, 101))
    assert inputs("--finished") == [1, 2]
    assert inputs("--failed") == [3]
    assert inputs("--unfinished") == list(range(3, 101))
    assert cli("inputs", execution_id, "--failed", "--json").stdout == '"3"\n'  # lines were str inputs


def test_inputs_stop_quietly_when_the_reader_goes_away(cli: Cli) -> None:
    cli.write("numbers_big.txt", "".join(f"{n}\n" for n in range(50_000)))
    assert cli("run", "tasks_fixed:work", "--inputs", "numbers_big.txt", "--id", "big").returncode == 0
    reader = subprocess.Popen(
        cli.command("inputs", "big"), cwd=cli.cwd, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert reader.stdout is not None
    assert reader.stdout.readline() == b"0\n"
    reader.stdout.close()  # like `| head -1`
    _, stderr = reader.communicate(timeout=TIMEOUT)
    assert reader.returncode == 141
    assert stderr == b""


def test_store_from_environment_and_flag(cli: Cli) -> None:
    env = {"PYLO_STORE": "from-env"}
    run = cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "e", env=env)
    assert run.returncode == 1
    assert "resume:  pylo resume e --store from-env\n" in run.stdout
    assert (cli.cwd / "from-env" / "pylo.sqlite").exists()
    assert not (cli.cwd / ".pylo").exists()
    assert cli("list", env=env).stdout.splitlines()[1].startswith("e ")
    # --store beats the environment, before or after the command name.
    assert "no pylo store at .pylo" in cli.error("list", "--store", ".pylo", env=env)
    assert "no pylo store at elsewhere" in cli.error("--store", "elsewhere", "show", "e", env=env)


def test_sqlalchemy_url_store(cli: Cli) -> None:
    url = f"sqlite:///{cli.cwd / 'by-url.db'}"
    run = cli("run", "tasks_fixed:work", "--inputs", "numbers.txt", "--store", url, "--id", "u")
    assert run.returncode == 0, run.stderr
    assert cli("show", "u", "--store", url).returncode == 0
    assert (cli.cwd / "by-url.db").exists()


def test_files_store_written_from_python_is_readable(cli: Cli) -> None:
    cli.write(
        "make.py",
        """
        from pylo import Pylo

        def double(x):
            return 2 * x

        with Pylo.local_multithread("file-store", 2, store="files") as pylo:
            pylo.start_from_scratch([1, 2, 3], double, execution_id="from-python")
        """,
    )
    subprocess.run([sys.executable, "make.py"], cwd=cli.cwd, env=cli.env, check=True, timeout=TIMEOUT)
    listed = cli("list", "--store", "file-store")
    assert listed.stdout.splitlines()[1].split()[:3] == ["from-python", "-", "completed"]
    assert cli("inputs", "from-python", "--store", "file-store", "--json").stdout == "1\n2\n3\n"


def test_verbosity_sets_the_log_level(cli: Cli) -> None:
    cli.write(
        "make.py",
        """
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

        from pylo import Pylo
        from tasks import work

        # A predicate of its own: not a policy the record can describe as data.
        retry = Retrying(stop=stop_after_attempt(2), retry=retry_if_exception_type(ValueError), reraise=True)
        with Pylo.local_multithread(".pylo", 1, retry=retry) as pylo:
            pylo.start_from_scratch(["1", "3"], work, execution_id="custom")
        """,
    )
    subprocess.run([sys.executable, "make.py"], cwd=cli.cwd, env=cli.env, check=True, timeout=TIMEOUT)
    warned = cli("resume", "custom", "tasks_fixed:work")
    assert warned.returncode == 0
    assert warned.stderr.startswith(
        "pylo: WARNING: execution custom ran with a retry policy made in Python, which the command line cannot "
    )
    assert "retry=custom tenacity policy" in cli("show", "custom").stdout
    assert cli("-q", "resume", "custom", "tasks_fixed:work").stderr == ""
    verbose = cli("resume", "custom", "--retries", "0", "--max-failures", "1", "-v")
    assert "pylo: INFO: execution " in verbose.stderr
    assert "stopping: 1 failed inputs (max_failures)" in verbose.stderr


def test_python_dash_m_and_version(cli: Cli) -> None:
    completed = cli("--version", module=True)
    assert completed.returncode == 0
    assert completed.stdout.startswith("pylo ")
    helped = cli("run", "--help")
    assert "--max-worker-failures K" in helped.stdout


def test_json_output_of_list_show_and_failures_and_show_exit_status(cli: Cli) -> None:
    failing = cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "j1", "--label", "job=nightly")
    assert failing.returncode == 1
    fixed = cli("resume", "j1", "tasks_fixed:work", "--id", "j2")
    assert fixed.returncode == 0

    listed = json.loads(cli("list", "--json").stdout)
    assert [e["id"] for e in listed] == ["j1", "j2"]
    first = listed[0]
    assert set(RECORD_KEYS) <= set(first)
    assert (first["status"], first["total"], first["finished"], first["failed"]) == ("completed", 100, 86, 14)
    assert first["labels"] == {"job": "nightly"}
    assert first["options"]["workers"] == "threads"

    shown = cli("show", "j1", "--json")
    assert shown.returncode == 1  # ended with unfinished inputs
    detail = json.loads(shown.stdout)
    assert detail["children"] == ["j2"] and detail["parents"] == []
    done = cli("show", "j2", "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["parents"] == ["j1"]

    failures = json.loads(cli("failures", "j1", "--json").stdout)
    assert failures["failed"] == 14
    assert sum(group["count"] for group in failures["groups"]) == 14
    assert {group["exception_type"] for group in failures["groups"]} == {"ValueError", "TimeoutError"}
    one = failures["failures"][0]
    assert set(one) == {"position", "input", "exception_type", "message", "attempts", "worker", "time"}
    assert json.loads(cli("list", "--json", "--label", "job=none").stdout) == []


def test_last_names_the_newest_execution_and_list_filters_by_status_and_count(cli: Cli) -> None:
    cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "a")
    cli("run", "tasks_fixed:work", "--inputs", "numbers.txt", "--id", "b")
    cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "c")
    assert json.loads(cli("show", "last", "--json").stdout)["id"] == "c"
    assert "execution c:" in cli("failures", "last").stdout
    resumed = cli("resume", "last", "tasks_fixed:work", "--id", "d")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming c as d" in resumed.stdout
    completed = json.loads(cli("list", "--status", "completed", "--json").stdout)
    assert [e["id"] for e in completed] == ["a", "b", "c", "d"]
    newest = cli("list", "--last", "2")
    assert [line.split()[0] for line in newest.stdout.splitlines()[1:]] == ["c", "d"]
    assert "invalid choice: 'done'" in cli.error("list", "--status", "done")
