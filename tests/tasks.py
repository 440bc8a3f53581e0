"""Task functions and input types used by the tests.

They live at module level so they pickle (process workers, crash tests).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any


def noop(item: Any) -> None:
    return None


def double(item: int) -> int:
    return item * 2


def fail_on_multiples_of_seven(item: int) -> None:
    if item % 7 == 0:
        raise ValueError(f"bad input {item}")


def always_fail(item: Any) -> None:
    raise RuntimeError(f"always fails: {item!r}")


def fail_on_lane_zero(item: Any) -> None:
    if threading.current_thread().name == "pylo-lane-0":
        raise RuntimeError("lane 0 is broken")


@dataclasses.dataclass(frozen=True)
class Movie:
    movie_id: int
    title: str
    tags: tuple[str, ...] = ()


class NeedsArguments(Exception):
    """Pickles, but cannot be rebuilt: its constructor needs two arguments."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


class Unpicklable(Exception):
    """Carries a lock, so pickling it fails."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_needs_arguments(item: Any) -> None:
    raise NeedsArguments(7, f"input {item}")


def raise_unpicklable(item: Any) -> None:
    raise Unpicklable(f"cannot pickle me ({item})")


def log_call(log: str, item: Any) -> None:
    """Append ``repr(item)`` as one line (O_APPEND): safe from threads, processes and a SIGKILL."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{item!r}\n".encode())
    finally:
        os.close(fd)


def calls(log: str) -> list[str]:
    """The lines :func:`log_call` wrote, oldest first; none if the log does not exist."""
    try:
        with open(log, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []
