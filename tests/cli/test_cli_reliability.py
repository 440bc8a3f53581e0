"""What goes wrong under the command is one line naming the problem and the place (issue 9).

Each test runs the real ``pylo`` command in a subprocess.
"""

from __future__ import annotations

import resource
import signal
import sqlite3
import subprocess
from pathlib import Path

from cli_kit import TIMEOUT, Cli

FAILING_TASK = """
def work(line):
    n = int(line)
    if n >= 300:
        raise ValueError("x" * 65536)
    return n
"""


def _limit_file_size() -> None:
    # Writes past 1 MB fail with EFBIG, as on a full disk (SIGXFSZ would kill instead).
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_full_disk_is_one_line_per_message_naming_the_store(cli: Cli) -> None:
    cli.write("filling.py", FAILING_TASK)
    cli.write("many.txt", "".join(f"{n}\n" for n in range(3000)))
    completed = subprocess.run(
        cli.command("run", "filling:work", "--inputs", "many.txt", "--store", "full"),
        cwd=cli.cwd,
        env=cli.env,
        preexec_fn=_limit_file_size,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.splitlines()
    assert len(lines) <= 2, completed.stderr[-2000:]
    assert all(line.startswith("pylo: ") for line in lines), lines
    assert lines[-1].startswith("pylo: error: cannot record a flush of execution")
    assert str(Path("full", "pylo.sqlite")) in lines[-1]
    assert "disk I/O error" in lines[-1] or "too large" in lines[-1]


def test_a_huge_json_integer_names_its_line(cli: Cli) -> None:
    line = cli.error("run", "tasks:work", "--json", "--id", "big", stdin="1\n2\n" + "9" * 5000 + "\n")
    assert line.startswith("pylo: error: line 3 of stdin cannot be read as JSON: Exceeds the limit")
    assert line.endswith("nothing ran (execution big is recorded as aborted)")


def test_a_lone_surrogate_is_refused_when_read_naming_its_line(cli: Cli) -> None:
    line = cli.error("run", "tasks:work", "--json", "--id", "s", stdin='"a"\n["\\ud83d\\ude00"]\n{"k": "\\ud800"}\n')
    assert line.startswith("pylo: error: line 3 of stdin holds a lone surrogate ('\\ud800')")
    assert "aborted" in cli("list").stdout
    # A surrogate pair is fine: it is one character.
    assert cli("run", "tasks_fixed:work", "--json", "--id", "ok", stdin='"1"\n"\\ud83d\\ude00"\n').returncode != 2


def test_a_lone_surrogate_already_stored_is_one_line_from_pylo_inputs(cli: Cli, tmp_path: Path) -> None:
    from pylo import Pylo

    with Pylo.local_multithread(cli.cwd / ".pylo", 1, progress=False) as pylo:
        pylo.start_from_scratch(["fine", "bad \ud800"], str, execution_id="old")
    line = cli.error("inputs", "old")
    assert "input #1" in line and "old" in line


def test_resuming_from_a_damaged_payload_names_the_execution_that_holds_it(cli: Cli) -> None:
    assert cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "first").returncode == 1
    database = cli.cwd / ".pylo" / "pylo.sqlite"
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE pylo_batches SET payload = x'80045d' WHERE execution_id = 'first'")
    line = cli.error("resume", "first", "tasks_fixed:work", "--id", "second")
    assert "of execution 'first'" in line, line
    assert "cannot decode the inputs of batch 0" in line


def test_read_commands_refuse_an_empty_pylo_sqlite_and_leave_it_empty(cli: Cli) -> None:
    assert cli("run", "tasks_fixed:work", "--inputs", "numbers.txt").returncode == 0
    database = cli.cwd / ".pylo" / "pylo.sqlite"
    database.write_bytes(b"")
    for command in (["list"], ["show", "x"], ["inputs", "x"], ["failures", "x"], ["resume", "x"]):
        line = cli.error(*command)
        assert f"the store at {Path('.pylo', 'pylo.sqlite')} is an empty file" in line, line
    assert "is an empty file" in cli.error("run", "tasks:work", stdin="1\n")
    assert database.stat().st_size == 0
    assert sorted(path.name for path in database.parent.iterdir()) == ["pylo.sqlite"]
