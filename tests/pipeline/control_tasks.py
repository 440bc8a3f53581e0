"""Tasks the control and hook tests run: gates a test opens, and a start log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pylo.pipeline import task

STARTED: list[str] = []
_LOCK = threading.Lock()
#: Set by a gated task once it started; opened by the test to let it end.
REACHED: dict[str, threading.Event] = {}
GATES: dict[str, threading.Event] = {}
#: Items of ``gated_item`` at which it waits for ``GATES["item"]``.
WAIT_AT = {5}
#: Names of tasks that fail until removed.
BROKEN: set[str] = set()
ATTEMPTS: dict[str, int] = {}
#: What each ``cleanup`` call received (the previous result or exception).
RECEIVED: list[Any] = []


def in_background(function: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Start ``function`` on a thread; the list gets what it returned or raised."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(function())
        except BaseException as exc:  # pragma: no cover - shown by the assertion
            box.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def until(check: Callable[[], bool], seconds: float = 30) -> bool:
    """Look (at the store) until ``check`` holds, as a run writes from its own threads; False after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def reset() -> None:
    with _LOCK:
        STARTED.clear()
        REACHED.clear()
        GATES.clear()
        BROKEN.clear()
        ATTEMPTS.clear()
        RECEIVED.clear()


def gate(name: str) -> tuple[threading.Event, threading.Event]:
    """(reached, open) events of the gate ``name``."""
    with _LOCK:
        return REACHED.setdefault(name, threading.Event()), GATES.setdefault(name, threading.Event())


def started(name: str) -> None:
    with _LOCK:
        STARTED.append(name)


@task
def step(name: str, *upstream: Any) -> str:
    """Log the start; wait at the gate ``name`` when a test made one; fail while ``name`` is broken."""
    started(name)
    with _LOCK:
        ATTEMPTS[name] = ATTEMPTS.get(name, 0) + 1
        pair = (REACHED.get(name), GATES.get(name))
    if pair[0] is not None and pair[1] is not None:
        pair[0].set()
        assert pair[1].wait(30), f"gate {name} was never opened"
    if name in BROKEN:
        raise ValueError(f"{name} is broken")
    return name


@task
def gated_item(x: int) -> int:
    started(f"item{x}")
    if x in WAIT_AT:
        reached, opened = gate("item")
        reached.set()
        assert opened.wait(30), "gate item was never opened"
    return x * 10


@task
def flaky(name: str) -> str:
    """Fails on its first attempt, then returns ``name``."""
    with _LOCK:
        ATTEMPTS[name] = ATTEMPTS.get(name, 0) + 1
        first = ATTEMPTS[name] == 1
    if first:
        raise ValueError(f"{name} failed once")
    return name


@task
def cleanup(previous: Any) -> str:
    """A ``finally_do`` task: logs its start and what it received."""
    started("cleanup")
    with _LOCK:
        RECEIVED.append(previous)
    return "cleaned"


@task
def spawn_gated() -> Any:
    """Returns a child pipeline: child-gated (gated when a test made its gate), then child-after."""
    started("parent")
    return step.send("child-after", step.send("child-gated"))
