"""Helpers for the ``pylo`` command's tests: a runner in a work directory with task modules.

The tests run the real console script (``pylo`` next to ``sys.executable``,
installed by ``pip install -e .``) or ``python -m pylo`` in a subprocess,
in a fresh directory under ``tmp_path``, with the same ``pylo`` package as
the test process.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pylo

#: Every wait on a subprocess ends by then.
TIMEOUT = 60
PACKAGE_ROOT = Path(pylo.__file__).resolve().parent.parent

# A task that fails in two ways, and its fixed version: the story of a job.
TASKS = """
def work(line):
    n = int(line)
    if n % 10 == 3:
        raise ValueError(f"record {n} has no price")
    if n % 25 == 0:
        raise TimeoutError(f"pricing service timed out for record '{n}'")
    return n * 2


def not_a_function():
    pass


value = 42
"""

#: The keys of an execution in `pylo list --json` (and show, and the run summary), as docs/cli.md lists them.
RECORD_KEYS = (
    "id",
    "parent_id",
    "input_source",
    "status",
    "task",
    "created_at",
    "updated_at",
    "ended_at",
    "duration_seconds",
    "total",
    "finished",
    "failed",
    "pending",
    "inputs_complete",
    "pid",
    "host",
    "options",
    "labels",
)

TASKS_FIXED = """
def work(line):
    return int(line) * 2
"""


def console_script() -> Path:
    """The installed ``pylo`` script that belongs to this interpreter."""
    return Path(sys.executable).parent / "pylo"


@dataclass
class Cli:
    """Runs ``pylo`` in a work directory.

    Attributes:
        cwd: The directory commands run in (task modules are written here).
        env: Their environment: no ``PYLO_STORE``, this checkout first on
            ``PYTHONPATH``.
    """

    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str, module: bool = False) -> list[str]:
        """The argv of ``pylo ARGS`` (``python -m pylo ARGS`` with ``module``)."""
        if module:
            return [sys.executable, "-m", "pylo", *args]
        script = console_script()
        if not script.exists():
            pytest.fail(f"the console script {script} is missing: run pip install -e .")
        return [str(script), *args]

    def __call__(
        self, *args: str, stdin: str | None = None, module: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pylo ARGS`` to its end and return what it printed."""
        return subprocess.run(
            self.command(*args, module=module),
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def error(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
        """Run ``pylo ARGS``, expecting a usage error; return its one line on stderr.

        Asserts exit status 2, one line starting ``pylo: error:``, no traceback.
        """
        completed = self(*args, stdin=stdin, env=env)
        assert completed.returncode == 2, (completed.returncode, completed.stdout, completed.stderr)
        assert "Traceback" not in completed.stderr
        lines = completed.stderr.splitlines()
        assert len(lines) == 1, completed.stderr
        assert lines[0].startswith("pylo: error: "), lines[0]
        return lines[0]

    def write(self, name: str, source: str) -> Path:
        """Write a file (a task module, inputs) into the work directory."""
        path = self.cwd / name
        path.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
        return path


def make_cli(tmp_path: Path) -> Cli:
    """A runner in ``tmp_path/work``, which holds ``tasks.py``, ``tasks_fixed.py`` and ``numbers.txt``."""
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYLO_STORE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    runner = Cli(work, env)
    runner.write("tasks.py", TASKS)
    runner.write("tasks_fixed.py", TASKS_FIXED)
    runner.write("numbers.txt", "".join(f"{n}\n" for n in range(1, 101)))
    return runner


@dataclass
class Terminal:
    """What a command printed in a pseudo-terminal, and how it ended."""

    output: str
    exit_status: int


def run_in_terminal(
    cli: Cli,
    *args: str,
    columns: int = 100,
    send_when: tuple[re.Pattern[str], bytes] | None = None,
) -> Terminal:
    """Run ``pylo ARGS`` with a pseudo-terminal as its stdin, stdout, stderr and controlling terminal.

    Args:
        cli: Where and how to run.
        columns: The terminal's width.
        send_when: ``(pattern, keys)``: type ``keys`` (``b"\\x03"`` is Ctrl-C)
            once the output matches ``pattern``.
    """
    argv = cli.command(*args)
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        try:
            os.chdir(cli.cwd)
            os.execve(argv[0], argv, cli.env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    output = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            output += data
            if send_when is not None and send_when[0].search(output.decode(errors="replace")):
                os.write(fd, send_when[1])
                send_when = None
    finally:
        os.close(fd)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    return Terminal(output.decode(errors="replace"), os.waitstatus_to_exitcode(status))
