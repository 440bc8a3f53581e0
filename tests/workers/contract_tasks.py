"""Module-level, picklable tasks for the worker contract suite.

Calls are recorded by appending to a file (O_APPEND), which works the same
from threads, processes and coroutines. ``Async`` turns any of these into an
``async def`` callable for the asyncio backend.
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any

# The call log is shared with the top-level tests; other test modules import it from here too.
from tasks import calls, log_call


def noop(item: Any) -> None:
    return None


def square(item: int) -> int:
    return item * item


def fail_multiples_of_seven(item: int) -> None:
    if item % 7 == 0:
        raise ValueError(f"bad input {item}")


def always_fail(item: Any) -> None:
    raise RuntimeError(f"always fails: {item!r}")


def logged(log: str, fail_every: int, item: int) -> None:
    """Record the call; fail inputs that are multiples of ``fail_every`` (0: never)."""
    log_call(log, item)
    if fail_every and item % fail_every == 0:
        raise ValueError(f"bad input {item}")


def interrupt_at(target: int, item: int) -> None:
    if item == target:
        raise KeyboardInterrupt()


def stuck_at(target: int, seconds: float, item: int) -> None:
    if item == target:
        time.sleep(seconds)


def flaky(log: str, succeed_on: int, item: int) -> None:
    """Fail until attempt ``succeed_on`` for this input (attempts counted in the log)."""
    log_call(log, item)
    attempts = calls(log).count(repr(item))
    if attempts < succeed_on:
        raise ConnectionError(f"attempt {attempts} of {item}")


class Async:
    """An ``async def`` wrapper around a picklable sync task."""

    def __init__(self, function: Any) -> None:
        self.function = function

    async def __call__(self, item: Any) -> Any:
        result = self.function(item)
        if inspect.isawaitable(result):
            return await result
        return result


def lanes_seen(log: str, before: frozenset[int], item: Any) -> None:
    """Record how many lanes the backend running this task has started, where it can be seen.

    Thread lanes are threads named ``pylo-lane-N`` that were not there
    ``before`` the run (``before`` holds thread idents too: an earlier
    test's execution that was interrupted may leave a lane finishing a task
    it could not stop); asyncio lanes are tasks with those names; process
    lanes are the worker processes of this one's parent that were not there
    ``before`` the run. Dask lanes start nothing of their own.
    """
    import asyncio
    import multiprocessing
    import threading

    import psutil

    threads = sum(
        thread.name.startswith("pylo-lane-") and thread.ident not in before for thread in threading.enumerate()
    )
    try:
        coroutines = sum(task.get_name().startswith("pylo-lane-") for task in asyncio.all_tasks())
    except RuntimeError:  # no running loop: not on asyncio
        coroutines = 0
    processes = 0
    if multiprocessing.parent_process() is not None:
        for sibling in psutil.Process(os.getppid()).children():
            command = " ".join(sibling.cmdline())
            new = sibling.pid not in before
            processes += new and "resource_tracker" not in command and "forkserver" not in command
    log_call(log, max(threads, coroutines, processes))


def rendezvous(mine: str, other: str, fail_from: int, item: int) -> None:
    """Input 0 waits (30 s at most) for the other execution's input 0: both must run at once.

    Inputs from ``fail_from`` on fail.
    """
    if item == 0:
        with open(mine, "w"):
            pass
        deadline = time.monotonic() + 30
        while not os.path.exists(other):
            if time.monotonic() > deadline:
                raise TimeoutError("the other execution never ran at the same time as this one")
            time.sleep(0.005)
    if item >= fail_from:
        raise ValueError(f"bad input {item}")
