"""Module-level tasks and child-process bodies for the hardening tests.

They live at module level so they pickle: process workers and spawned
children (crash, concurrency and disk-full tests) import them by name.
Calls are logged with ``contract_tasks.log_call`` (one O_APPEND write per
call), which works the same from threads, processes and coroutines and
survives a SIGKILL of the writer.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import sys
import threading
from typing import Any

from contract_tasks import log_call

from pylo import Pylo, PyloError

# -- hostile tasks ----------------------------------------------------------------


class StopTheRun(BaseException):
    """A task's own BaseException: pylo treats it like KeyboardInterrupt."""


def raise_huge_message(target: int, size: int, item: int) -> None:
    if item == target:
        raise ValueError("m" * size)


def recurse_forever(item: int) -> None:
    """Odd inputs overflow the stack; even ones return."""

    def deeper(depth: int) -> int:
        return deeper(depth + 1) + 1

    if item % 2:
        deeper(0)


def raise_memory_error(item: int) -> None:
    """Odd inputs run out of memory: one for real (a huge allocation), the others by raising it."""
    if item == 1:
        bytearray(1 << 62)  # more than any machine has: MemoryError at once, nothing allocated
    elif item % 2:
        raise MemoryError(f"no memory for input {item}")


def length_of(item: bytes) -> int:
    return len(item)


def stop_at(log: str, target: int, item: int) -> None:
    """Log each input that completes; raise StopTheRun at ``target`` (which never completes)."""
    if item == target:
        raise StopTheRun(f"stopped at input {item}")
    log_call(log, item)


def noisy(size: int, item: int) -> None:
    """Write ``size`` bytes to stdout and to stderr."""
    sys.stdout.write("o" * size + "\n")
    sys.stdout.flush()
    sys.stderr.write("e" * size + "\n")
    sys.stderr.flush()


# -- concurrency ----------------------------------------------------------------------

#: Inputs of job k are ``range(k * JOB_STRIDE, k * JOB_STRIDE + count)``: no two jobs share a value,
#: so an input that ends up in the wrong execution is seen.
JOB_STRIDE = 1_000_000
#: Jobs fail the inputs that are multiples of this, so failure rows are written too.
JOB_FAIL_EVERY = 97


def fail_every_97th(item: int) -> None:
    if item % JOB_FAIL_EVERY == 0:
        raise ValueError(f"input {item} is a multiple of {JOB_FAIL_EVERY}")


def job_inputs(index: int, count: int) -> range:
    return range(index * JOB_STRIDE, index * JOB_STRIDE + count)


def run_job(store_dir: str, store_name: str, index: int, count: int) -> None:
    """One process's own execution in a shared store, flushing often to contend for it."""
    pylo = Pylo.local_multithread(
        store_dir, 2, store=store_name, task_executions_before_flush=20, flush_seconds=0.05, progress=False
    )
    inputs = job_inputs(index, count)
    # Odd jobs give a generator: their inputs are read back from the store
    # while the others write, which exercises read_payloads under contention.
    source = inputs if index % 2 == 0 else (item for item in inputs)
    pylo.start_from_scratch(source, fail_every_97th, execution_id=f"job-{index}")
    pylo.close()


# -- disk full ---------------------------------------------------------------------------


def fail_with_big_message(first_failing: int, item: int) -> None:
    """Inputs from ``first_failing`` on fail with a 64 KB message: each flush then grows the store fast."""
    if item >= first_failing:
        raise ValueError(f"input {item} fails: " + "x" * 65536)


def run_until_disk_full(store_dir: str, store_name: str, limit: int, first_failing: int, report: str) -> None:
    """Run an execution with files limited to ``limit`` bytes; write what happened to ``report``.

    ``RLIMIT_FSIZE`` makes a write past the limit fail: with SIGXFSZ ignored
    the write returns EFBIG instead of killing the process, which is what a
    full disk looks like to pylo. Only the soft limit is lowered, so the
    report can be written after raising it back.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    pylo = Pylo.local_multithread(
        store_dir, 2, store=store_name, task_executions_before_flush=50, flush_seconds=60.0, progress=False
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    outcome: dict[str, Any]
    try:
        pylo.start_from_scratch(range(2000), _big_failures(first_failing), execution_id="full")
        outcome = {"raised": None}
    except PyloError as exc:
        outcome = {"raised": type(exc).__name__, "message": str(exc), "store_error": "StoreError" in _names(exc)}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    with open(report, "w", encoding="utf-8") as file:
        json.dump(outcome, file)


def _big_failures(first_failing: int) -> Any:
    return functools.partial(fail_with_big_message, first_failing)


def _names(exc: BaseException) -> list[str]:
    return [kind.__name__ for kind in type(exc).__mro__]


# -- crashes for the state machine ---------------------------------------------------------


def fail_some(log: str, fail_every: int, item: int) -> None:
    """Log the call; fail inputs that are multiples of ``fail_every`` (0: none)."""
    log_call(log, item)
    if fail_every and item % fail_every == 0:
        raise ValueError(f"input {item} fails")


_killed = threading.Lock()


def die_after(log: str, fail_every: int, calls_before_death: int, item: int) -> None:
    """Like ``fail_some``, but SIGKILL the whole process once ``calls_before_death`` calls were logged."""
    fail_some(log, fail_every, item)
    with _killed:
        with open(log, encoding="utf-8") as file:
            done = sum(1 for _ in file)
        if done >= calls_before_death:
            os.kill(os.getpid(), signal.SIGKILL)


def run_and_die(
    store_dir: str,
    store_name: str,
    execution_id: str,
    inputs: list[int] | None,
    past_id: str | None,
    log: str,
    fail_every: int,
    calls_before_death: int,
) -> None:
    """Start (``inputs``) or resume (``past_id``) an execution, and SIGKILL the process part way."""
    pylo = Pylo.local_multithread(
        store_dir, 2, store=store_name, task_executions_before_flush=3, flush_seconds=0.02, progress=False
    )
    task = functools.partial(die_after, log, fail_every, calls_before_death)
    if past_id is None:
        assert inputs is not None
        pylo.start_from_scratch(inputs, task, execution_id=execution_id)
    else:
        pylo.start_from_past_execution(past_id, task, execution_id=execution_id)
    # Fewer unfinished inputs than calls_before_death: the run ended on its own.
    os.kill(os.getpid(), signal.SIGKILL)
