"""`--processes` and `--asyncio` (and `async def` tasks, which pick asyncio by themselves)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from cli_kit import TIMEOUT, Cli

ASYNC_TASKS = """
import asyncio
import collections

calls = collections.Counter()

async def work(line):
    await asyncio.sleep(0)
    calls[line] += 1
    if int(line) % 10 == 3 and calls[line] < 2:  # the second attempt succeeds
        raise ConnectionError(f"reset while fetching {line}")
    return int(line) * 2
"""

CPU_TASKS = """
import os

def work(line):
    if int(line) % 10 == 3:
        raise ValueError(f"odd record {line} in process {os.getpid()}")
    return sum(range(int(line)))
"""


def needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not written yet")


@needs("pylo.workers.aio")
def test_async_functions_run_on_asyncio_with_async_retries(cli: Cli) -> None:
    cli.write("fetch.py", ASYNC_TASKS)
    failing = cli("run", "fetch:work", "--inputs", "numbers.txt", "--workers", "4", "--id", "a1")
    assert failing.returncode == 1, failing.stderr
    assert "10  ConnectionError: reset while fetching #" in failing.stdout
    assert "number_of_workers=4" in cli("show", "a1").stdout
    # --asyncio is accepted as well; --retries builds an AsyncRetrying.
    retried = cli("resume", "a1", "--asyncio", "--retries", "1", "--id", "a2")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "retries=1" in cli("show", "a2").stdout
    assert "is an async function: run it with --asyncio" in cli.error("resume", "a1", "--processes")


@needs("pylo.workers.processes")
def test_processes_run_module_functions(cli: Cli) -> None:
    cli.write("cpu.py", CPU_TASKS)
    run = cli("run", "cpu:work", "--inputs", "numbers.txt", "--processes", "--workers", "2", "--retries", "1")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "90 finished, 10 failed, 0 pending, of 100 inputs" in run.stdout
    assert "10  ValueError: odd record # in process #" in run.stdout
    execution_id = run.stdout.split()[1]
    failures = cli("failures", execution_id)
    assert "  attempts: 2, worker " in failures.stdout
    resumed = cli("resume", execution_id, "tasks_fixed:work", "--processes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


EXITING_TASKS = """
import os

def work(line):
    if int(line) == 7:
        os._exit(3)  # kills the worker process: on threads it would kill pylo itself
    if int(line) % 10 == 3:
        raise ValueError(f"odd record {line}")
    return int(line)
"""


@needs("pylo.workers.processes")
def test_resume_runs_on_the_workers_and_options_the_execution_ran_with(cli: Cli) -> None:
    cli.write("crashy.py", EXITING_TASKS)
    run = cli(
        "run", "crashy:work", "--inputs", "numbers.txt", "--processes", "--workers", "2", "--retries", "2", "--id", "p1"
    )
    assert run.returncode == 1, run.stdout + run.stderr
    shown = cli("show", "p1").stdout
    assert "workers=processes" in shown
    assert "retries=2" in shown
    # No flags: processes again (a thread running os._exit would end pylo with no summary), same retries.
    resumed = cli("resume", "p1", "--id", "p2")
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert "execution p2 finished" in resumed.stdout or "execution p2 " in resumed.stdout
    shown = cli("show", "p2").stdout
    assert "workers=processes" in shown
    assert "retries=2" in shown
    assert "number_of_workers=2" in shown
    # Flags override what was recorded.
    overridden = cli("resume", "p2", "tasks_fixed:work", "--threads", "--retries", "0", "--id", "p3")
    assert overridden.returncode == 0, overridden.stdout + overridden.stderr
    shown = cli("show", "p3").stdout
    assert "workers=threads" in shown
    assert "retries=" not in shown


def test_resume_of_a_policy_made_in_python_says_to_pass_retries(cli: Cli) -> None:
    cli.write(
        "job.py",
        """
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt
from pylo import Pylo

def work(line):
    if int(line) % 10 == 3:
        raise ValueError(line)

if __name__ == "__main__":
    policy = Retrying(stop=stop_after_attempt(2), retry=retry_if_exception_type(OSError))
    with Pylo.local_multithread(".pylo", 2, retry=policy) as pylo:
        pylo.start_from_scratch(range(20), work, execution_id="py1")
""",
    )
    made = subprocess.run(
        [sys.executable, "job.py"], cwd=cli.cwd, env=cli.env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert made.returncode == 0, made.stderr
    assert "retry=custom tenacity policy" in cli("show", "py1").stdout
    resumed = cli("resume", "py1", "job:work", "--id", "py2")
    assert "made in Python" in resumed.stderr and "pass --retries N" in resumed.stderr
