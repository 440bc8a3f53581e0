"""Every error the user can cause is one line on stderr, exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_kit import Cli


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "tasks"], "pylo: error: 'tasks' is not MODULE:FUNCTION (for example tasks:process"),
        (["run", "tasks:work:extra"], "is not MODULE:FUNCTION"),
        (["run", "no_such_module:work"], "cannot import module 'no_such_module': no module named 'no_such_module'"),
        (["run", "broken:work"], "importing module 'broken' failed: ZeroDivisionError: division by zero"),
        (["run", "needs_dep:work"], "importing module 'needs_dep' failed: ModuleNotFoundError: No module named 'nodep"),
        (["run", "syntax:work"], "importing module 'syntax' failed: SyntaxError:"),
        (["run", "tasks:missing"], "module 'tasks' has no attribute 'missing'"),
        (["run", "tasks:value"], "tasks:value is a int, not a function"),
        (["run", "tasks:work", "--inputs", "absent.txt"], "cannot read inputs from absent.txt: No such file"),
        (["run", "tasks:work", "--asyncio"], "tasks:work is a plain function; --asyncio runs `async def` functions"),
        (
            ["run", "tasks:work", "--id", "no spaces"],
            "argument --id: 'no spaces' is not a valid execution id: use 1 to 128 letters",
        ),
        (["run", "tasks:work", "--workers", "0"], "argument --workers: must be >= 1, got 0 (see `pylo run --help`)"),
        (["run", "tasks:work", "--rate-limit", "9/fortnight"], "argument --rate-limit: '9/fortnight' is not a rate"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    ],
)
def test_bad_run_arguments(cli: Cli, args: list[str], expected: str) -> None:
    cli.write("broken.py", "1 / 0\n")
    cli.write("needs_dep.py", "import nodep_xyz\n")
    cli.write("syntax.py", "def work(:\n")
    assert expected in cli.error(*args, stdin="1\n")
    assert not (cli.cwd / ".pylo").exists()


@pytest.mark.parametrize("command", [["list"], ["show", "x"], ["failures", "x"], ["inputs", "x"], ["resume", "x"]])
def test_read_commands_refuse_a_missing_store_without_creating_one(cli: Cli, command: list[str]) -> None:
    line = cli.error(*command)
    assert line.startswith("pylo: error: no pylo store at .pylo (the directory does not exist)")
    assert not (cli.cwd / ".pylo").exists()
    empty = cli.cwd / "empty"
    empty.mkdir()
    assert "no pylo store at empty (it holds no pylo.sqlite)" in cli.error(*command, "--store", "empty")
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("command", ["show", "failures", "inputs", "resume"])
def test_unknown_execution_id(cli: Cli, command: str) -> None:
    assert cli("run", "tasks_fixed:work", "--inputs", "numbers.txt").returncode == 0
    line = cli.error(command, "nope")
    assert line == f"pylo: error: no execution with id 'nope' in the store at {Path('.pylo', 'pylo.sqlite')}"


def test_damaged_store(cli: Cli) -> None:
    store = cli.cwd / "damaged"
    store.mkdir()
    (store / "pylo.sqlite").write_bytes(b"this is not a database" * 100)
    line = cli.error("list", "--store", "damaged")
    assert "damaged/pylo.sqlite is not a SQLite database" in line
    assert "pylo: error: " in cli.error("run", "tasks:work", "--store", "damaged", stdin="1\n")


def test_a_line_that_is_not_json(cli: Cli) -> None:
    line = cli.error("run", "tasks:work", "--json", "--id", "j", stdin='1\n"two"\n{three\n')
    assert line.startswith("pylo: error: line 3 of stdin is not JSON (Expecting property name enclosed in double")
    assert line.endswith("nothing ran (execution j is recorded as aborted)")
    assert "aborted" in cli("list").stdout


def test_resume_needs_an_importable_function(cli: Cli) -> None:
    cli.write("gone.py", "def work(x):\n    raise ValueError(x)\n")
    assert cli("run", "gone:work", "--id", "one", stdin="1\n").returncode == 1
    (cli.cwd / "gone.py").unlink()
    line = cli.error("resume", "one")
    assert "cannot import module 'gone'" in line
    assert line.endswith("(the function execution one ran; pass another as MODULE:FUNCTION)")


def test_inputs_results_only_with_finished(cli: Cli) -> None:
    assert cli("run", "tasks_fixed:work", "--inputs", "numbers.txt", "--id", "r").returncode == 0
    line = cli.error("inputs", "r", "--results", "--failed")
    assert (
        line == "pylo: error: --results prints finished inputs and their results; it cannot be combined with --failed"
    )


def test_resume_refuses_before_it_announces_and_speaks_cli(cli: Cli) -> None:
    cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "first")
    cli("resume", "first", "--id", "second")
    taken = cli("resume", "first", "--id", "second")
    assert taken.returncode == 2
    assert "an execution with id second already exists; pass another --id" in taken.stderr
    assert "resuming" not in taken.stdout
    again = cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "first")
    assert again.returncode == 2
    assert "pass another --id, or run its unfinished inputs again with: pylo resume first" in again.stderr
    assert "start_from" not in again.stderr + taken.stderr


def test_an_execution_stopped_while_reading_inputs_has_nothing_to_resume(cli: Cli) -> None:
    cli.write(
        "partial.py",
        """
from pylo import Pylo

def inputs():
    yield from range(5)
    raise KeyboardInterrupt  # Ctrl-C while the inputs are still being read

with Pylo.local_multithread(".pylo", 2) as pylo:
    try:
        pylo.start_from_scratch(inputs(), str, execution_id="partial")
    except KeyboardInterrupt:
        pass
""",
    )
    made = subprocess.run(
        [sys.executable, "partial.py"], cwd=cli.cwd, env=cli.env, capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    refused = cli("resume", "partial", "tasks:work")
    assert refused.returncode == 2
    assert "execution partial stopped while its inputs were being read" in refused.stderr
    assert "there is nothing to resume; run the `pylo run` command again, with --id partial" in refused.stderr
    assert "resuming" not in refused.stdout
