"""Module-level tasks for the process-worker tests: they pickle by reference.

Tasks that need to know what happened in a worker write to a log file
(O_APPEND, see ``contract_tasks.log_call``), which works from any process.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from typing import Any

from contract_tasks import log_call

from pylo import Pylo


def echo(item: Any) -> Any:
    return item


def exit_on(targets: frozenset[int], code: int, item: int) -> int:
    """Die with ``os._exit(code)`` on the target inputs."""
    if item in targets:
        os._exit(code)
    return item


def sigkill_on(targets: frozenset[int], item: int) -> int:
    """Die by SIGKILL, sent to itself, on the target inputs."""
    if item in targets:
        os.kill(os.getpid(), signal.SIGKILL)
    return item


def crash_then_fail(item: int) -> None:
    """Input 0 kills its worker; inputs from 8 on raise."""
    if item == 0:
        os._exit(3)
    if item >= 8:
        raise ValueError(f"bad input {item}")


def fail_then_hang(fail: int, hang: int, item: int) -> int:
    """Raise on ``fail``, hang (far past any test's timeout) on ``hang``."""
    if item == fail:
        raise ValueError(f"bad input {item}")
    if item == hang:
        time.sleep(120)
    return item * item


def record_start(log: str, item: Any) -> None:
    log_call(log, time.monotonic())


def wait_for_file(marker: str, target: int, item: int) -> int:
    """On ``target``, wait (at most 30 s) until ``marker`` exists."""
    if item == target:
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
    return item


class LockedInterrupt(BaseException):
    """An interrupt that cannot be pickled: it carries a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_locked_interrupt(target: int, item: int) -> None:
    if item == target:
        raise LockedInterrupt(f"stop at {item}")


def exit_with(target: int, code: int, item: int) -> None:
    if item == target:
        raise SystemExit(code)


def slow_logged(log: str, item: int) -> None:
    log_call(log, item)
    time.sleep(0.005)


def run_victim(store_dir: str, log: str, start_method: str) -> None:
    """A parent of worker processes that the test kills with SIGKILL."""
    pylo = Pylo.local_multiprocess(store_dir, 2, start_method=start_method, progress=False)
    pylo.start_from_scratch(range(100_000), functools.partial(slow_logged, log))


def big_result(size: int, item: int) -> bytes:
    """A result of ``size`` bytes: slow enough to send that a flush can land mid-send."""
    return bytes([item % 256]) * size
