"""`--processes` and `--asyncio` (and `async def` tasks, which pick asyncio by themselves)."""

from __future__ import annotations

import importlib.util

import pytest
from cli_kit import Cli

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
