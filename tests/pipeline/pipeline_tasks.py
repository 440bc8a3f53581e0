"""Tasks the pipeline tests run, at module level so they pickle, with a call log.

``CALLS`` counts calls by name; ``BROKEN`` holds the names of tasks that
raise until a test "fixes" them by removing the name.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

from pylo.pipeline import task

CALLS: collections.Counter[str] = collections.Counter()
BROKEN: set[str] = set()
_LOCK = threading.Lock()


def record(name: str) -> None:
    with _LOCK:
        CALLS[name] += 1


def reset() -> None:
    with _LOCK:
        CALLS.clear()
        BROKEN.clear()


def count(name: str) -> int:
    with _LOCK:
        return CALLS[name]


@task
def multiply(x: int, y: int) -> int:
    record("multiply")
    return x * y


@task
def add(x: int, y: int = 0) -> int:
    record("add")
    return x + y


@task
def average(values: list[float]) -> float:
    record("average")
    return sum(values) / len(values)


@task
def divide(x: float, y: float) -> float:
    record("divide")
    return x / y


@task
def pair(x: int) -> tuple[int, int]:
    record("pair")
    return (x, x + 1)


@task
def collect(*values: Any, **named: Any) -> Any:
    record("collect")
    return [list(values), named] if named else list(values)


@task
def step(name: str, *upstream: Any) -> str:
    """A named step: fails while its name is in BROKEN."""
    record(name)
    if name in BROKEN:
        raise RuntimeError(f"{name} is broken")
    return name


@task
def square_or_fail(x: int) -> int:
    """Batch task: fails for inputs in BROKEN (as strings)."""
    record("square")
    if str(x) in BROKEN:
        raise ValueError(f"input {x} is broken")
    return x * x


@task
def total(values: list[int]) -> int:
    record("total")
    return sum(values)


@task
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
async def async_double(x: int) -> int:
    record("async_double")
    return x * 2


@task
def pid_of(_: Any = None) -> int:
    return os.getpid()


def plain_triple(x: int) -> int:
    return 3 * x


#: Status codes the next calls of ``http_call`` get, in order (then 200).
SCRIPT: list[int] = []


class HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"Error {status}")
        self.status = status


def is_server_error(exc: BaseException) -> bool:
    return isinstance(exc, HttpError) and exc.status >= 500


def http_call() -> str:
    record("http")
    with _LOCK:
        status = SCRIPT.pop(0) if SCRIPT else 200
    if status != 200:
        raise HttpError(status)
    return "ok"


def always_fails() -> None:
    record("always_fails")
    raise RuntimeError("AlwaysFailsTask failed")


@task
def numbers(n: int) -> list[int]:
    record("numbers")
    return list(range(n))


@task
def scaled(x: int, factor: int, *, offset: int = 0) -> int:
    return x * factor + offset


@task
def checksum(values: list[int]) -> tuple[int, int, bool]:
    """Count, sum and whether the values arrived in input order (squares of 0..n-1)."""
    record("checksum")
    return len(values), sum(values), values == [i * i for i in range(len(values))]


# -- crash tests: calls logged to a file, one task that hangs until killed ----


def _log_and_maybe_hang(name: str) -> None:
    with open(os.environ["PYLO_TEST_LOG"], "a") as log:
        log.write(name + "\n")
    if name == os.environ.get("PYLO_TEST_HANG"):
        with open(os.environ["PYLO_TEST_LOG"] + ".hanging", "w"):
            pass
        time.sleep(120)


@task
def logged(name: str, *upstream: Any) -> str:
    _log_and_maybe_hang(name)
    return name


@task
def logged_item(x: int) -> int:
    _log_and_maybe_hang(f"item{x}")
    return x


def crash_flow() -> Any:
    """a -> b -> batch of 60 (hangs at item 40 when asked) -> c (hangs when asked) -> d; and a side branch."""

    def node(name: str, *upstream: Any) -> Any:
        return logged.send(name, *upstream).set(display_name=name)

    a = node("a")
    b = node("b", a)
    batch = logged_item.map(list(range(60))).set(display_name="batch").after(b)
    c = node("c", batch)
    side = node("side", a)
    return [node("d", c), side]


def logged_calls(path: str) -> list[str]:
    try:
        with open(path) as log:
            return log.read().split()
    except FileNotFoundError:
        return []


# -- property tests: an event log of starts and ends ----------------------------

EVENTS: list[tuple[str, str]] = []


@task
def prop_step(name: str, fails: bool, *upstream: Any) -> str:
    with _LOCK:
        EVENTS.append(("start", name))
    try:
        if fails:
            raise RuntimeError(f"{name} fails")
        return name
    finally:
        with _LOCK:
            EVENTS.append(("end", name))


@task
def fail_with(message: str) -> None:
    raise ValueError(message)


@task
async def async_square(x: int) -> int:
    return x * x


@task
def interrupt(*upstream: Any) -> None:
    if "interrupt" in BROKEN:
        raise KeyboardInterrupt
    record("interrupt")


@task
def waits(event: threading.Event) -> str:
    """Ends once ``event`` is set (at most 30 s)."""
    event.wait(30)
    record("beside")
    return "beside"


#: Set by the first call of ``slow_item``.
SLOW_STARTED = threading.Event()


@task
def slow_item(x: int) -> int:
    """A batch task of 5 ms per input, counted as "slow"."""
    record("slow")
    SLOW_STARTED.set()
    time.sleep(0.005)
    return x


@task
def spawns_slow(n: int) -> Any:
    """Returns a pipeline: a child run of one batch node of ``n`` ``slow_item`` inputs."""
    return slow_item.map(range(n))


@task
def sleeps_after_writing_pid(pid_file: str, seconds: float) -> float:
    """Writes its process id to ``pid_file``, then sleeps ``seconds``."""
    with open(pid_file + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
    time.sleep(seconds)
    return seconds


@task
def interrupts_once_file_exists(path: str) -> None:
    """Waits (at most 60 s) for ``path`` to exist, then raises KeyboardInterrupt."""
    for _ in range(600):
        if os.path.exists(path):
            raise KeyboardInterrupt(f"{path} exists")
        time.sleep(0.1)


#: Set once ``awaits_forever`` is awaiting; what became of it ("cancelled") once it stopped.
AWAITING = threading.Event()
AWAITED: list[str] = []


@task
async def awaits_forever() -> None:
    """Awaits until cancelled (at most 60 s), and says so in ``AWAITED``."""
    import asyncio

    AWAITING.set()
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        AWAITED.append("cancelled")
        raise


#: The thread each call of ``spawns_after`` ran on, and an event set as it returns.
SPAWNERS: list[threading.Thread] = []
SPAWNED = threading.Event()


@task
def spawns_after(event: threading.Event) -> Any:
    """Once ``event`` is set (at most 30 s), returns a pipeline: a child run of one ``step``."""
    event.wait(30)
    SPAWNERS.append(threading.current_thread())
    SPAWNED.set()
    return step.send("child")


@task
def die(*upstream: Any) -> None:
    os._exit(3)


@task
def logged_cleanup(previous: Any, name: str) -> None:
    """A finally_do that logs. With ``PYLO_TEST_CRASH=second``, the second one to run (another
    ``cleanup-`` name is in the log) waits for ``<log>.go``, then SIGKILLs its process."""
    second = os.environ.get("PYLO_TEST_CRASH") == "second" and any(
        line.startswith("cleanup-") for line in logged_calls(os.environ["PYLO_TEST_LOG"])
    )
    _log_and_maybe_hang(f"cleanup-{name}")
    if second:
        go = os.environ["PYLO_TEST_LOG"] + ".go"
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), 9)
