"""Rate limits: parsing ``rate_limit=`` and the token bucket that enforces it.

A limit caps how many tasks *start* per second across all workers of an
execution. The bucket holds at most ``burst`` tokens and gains ``rate`` per
second; each task start takes one token, waiting for it when the bucket is
empty. The same arithmetic serves threads (a ``threading.Lock``), processes
(a ``multiprocessing`` lock and shared doubles) and asyncio (one loop, no
lock): only where the state lives differs.
"""

from __future__ import annotations

import re
import time
from typing import Any

__all__ = ["TokenBucket", "parse_rate_limit"]

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*")


def parse_rate_limit(value: Any) -> float | None:
    """Turn ``rate_limit=`` into task starts per second.

    Accepts None (no limit), a positive number (per second), or a string
    ``"N/unit"`` with unit ``s``, ``min`` or ``h`` (``"20/s"``,
    ``"100/min"``, ``"5000/h"``).

    Raises:
        TypeError: Neither None, a number nor a string.
        ValueError: Not positive, slower than one start a week, or a
            string of another form.
    """
    rate = _parse(value)
    if rate is not None and rate < MIN_RATE:
        raise ValueError(
            f"rate_limit must be at least one task start per week ({MIN_RATE:.3g}/s), got {value!r}; "
            "for no limit pass None"
        )
    return rate


#: Slowest rate_limit: one start a week, so a wait for a token fits every sleep.
MIN_RATE = 1 / (7 * 24 * 3600)


def _parse(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"rate_limit must be a number per second or a string like '20/s', got bool {value!r}")
    if isinstance(value, (int, float)):
        rate = float(value)
        if not rate > 0 or rate == float("inf"):
            raise ValueError(f"rate_limit must be > 0 task starts per second, got {value!r}")
        return rate
    if isinstance(value, str):
        match = _PATTERN.fullmatch(value.lower())
        if match is None or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
            raise ValueError(
                f"rate_limit {value!r} is not a rate: use a number per second or 'N/s', 'N/min' or 'N/h', "
                "such as '20/s' or '100/min'"
            )
        return float(match.group(1)) / _UNITS[match.group(2)]
    raise TypeError(
        f"rate_limit must be a number per second or a string like '20/s', got {type(value).__name__} {value!r}"
    )


class TokenBucket:
    """A token bucket whose state lives in ``state`` (two floats: tokens, last refill).

    Args:
        rate: Tokens added per second.
        burst: Most tokens the bucket holds; 1 spaces starts evenly.
        state: A mutable sequence of two floats, e.g. a list, or a
            ``multiprocessing.Array('d', 2)`` to share it across processes.
            Start it with ``TokenBucket.initial_state(burst)``.
        lock: A context manager guarding ``state`` (threading or
            multiprocessing lock), or None when one thread uses the bucket.
        clock: Monotonic seconds; ``time.monotonic`` agrees across processes
            of one machine.
    """

    def __init__(self, rate: float, burst: float, state: Any, lock: Any = None, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._state = state
        self._lock = lock
        self._clock = clock

    @staticmethod
    def initial_state(burst: float) -> list[float]:
        """Tokens and refill time for a new bucket: full, refilled now."""
        return [float(burst), time.monotonic()]

    def reserve(self) -> float:
        """Take a token now or book the next one; return how long to wait for it.

        Booking (letting tokens go negative) keeps starts fair and exact
        under contention: each caller learns its own start time at once.
        """
        if self._lock is None:
            return self._reserve()
        with self._lock:
            return self._reserve()

    def _reserve(self) -> float:
        state = self._state
        now = self._clock()
        tokens = min(self.burst, state[0] + (now - state[1]) * self.rate)
        tokens -= 1.0
        state[0] = tokens
        state[1] = now
        return 0.0 if tokens >= 0 else -tokens / self.rate

    def acquire(self, sleep: Any = time.sleep) -> None:
        """Block until this caller may start a task."""
        delay = self.reserve()
        if delay > 0:
            sleep(delay)
