"""Module-level tasks for the Dask backend tests.

Dask worker processes are spawned with this test process's ``sys.path``, so
they import this module (and ``contract_tasks``) by name. Calls are logged
with O_APPEND writes, which interleave safely across worker processes.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from contract_tasks import log_call


def kill_worker_once(marker: str, log: str, target: int, item: int) -> None:
    """Log the call; SIGKILL this worker process the first time ``target`` runs."""
    log_call(log, item)
    if item == target and not os.path.exists(marker):
        with open(marker, "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def kill_worker_always(target: int, item: int) -> None:
    """SIGKILL the worker process every time ``target`` runs: a poison input."""
    if item == target:
        os.kill(os.getpid(), signal.SIGKILL)


def hold_until(release: str, target: int, limit: float, item: int) -> None:
    """Block on ``target`` until the file ``release`` exists (at most ``limit`` seconds).

    Then create ``release + ".done"``: a test that finds it missing knows the
    held task had not returned yet.
    """
    if item != target:
        return
    deadline = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    with open(release + ".done", "w", encoding="utf-8"):
        pass


def hold_or_interrupt(release: str, held: int, interrupted: int, item: int) -> None:
    """Input ``held`` blocks (see :func:`hold_until`); input ``interrupted`` raises KeyboardInterrupt."""
    hold_until(release, held, 30.0, item)
    if item == interrupted:
        raise KeyboardInterrupt()


def slow_but_zero_fails(seconds: float, item: int) -> None:
    """Input 0 fails at once; every other input takes ``seconds``."""
    if item == 0:
        raise ValueError("zero fails")
    time.sleep(seconds)


def timed_nap(log: str, seconds: float, item: int) -> None:
    """Sleep, then log when this input started and ended (monotonic clock)."""
    started = time.monotonic()
    time.sleep(seconds)
    log_call(log, f"{started} {time.monotonic()}")


def started_at(log: str, item: Any) -> None:
    """Log the moment this input started (monotonic clocks agree across local processes)."""
    log_call(log, time.monotonic())
