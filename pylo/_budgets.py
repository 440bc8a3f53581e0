"""Failure budgets: one owner, one rule, for every backend.

The rule: **a chunk may see at most the failures it was granted, and grants
never promise more than is left.**

- Per lane (``max_worker_failures``): the grants of a lane's chunks in flight
  add up to at most what the lane has left. A lane runner stops a chunk once
  it has seen its grant; it keeps nothing between chunks, so a process that
  replaces a dead one, or a Dask task on another machine, needs no budget
  state. A lane whose failures reach ``max_worker_failures`` is spent: it
  takes no more inputs, and the rest of the chunk it stopped in stays pending.
- Per execution (``max_failures``): a grant is at most ``ceil(left / lanes)``
  of what the limit leaves after the failures heard and the other grants; a
  lane's only chunk gets at least 1, so every lane keeps working. The run
  stops once the failures heard reach the limit. Where lanes share a live
  counter (threads, processes, asyncio: a
  :class:`~pylo.workers._runner.FailureGate`) they also stop the moment it
  is reached; that is a faster stop, not another count. Otherwise (Dask) at
  most ``max_failures + lanes`` inputs fail.

Splitting a lane's budget among its chunks in flight means a lane with 1
failure left keeps one chunk in flight, not two: budgets cost throughput
only when they are nearly spent.
"""

from __future__ import annotations

import math

__all__ = ["Budgets"]


class Budgets:
    """The failure budgets of one execution's lanes.

    Args:
        max_worker_failures: Failures a lane may see in all.
        max_failures: Failures the execution may see, or None.
        lanes: Number of lanes.
        slots: Chunks a lane may have in flight at once (1 + prefetch).
    """

    def __init__(self, max_worker_failures: int, max_failures: int | None, lanes: int, slots: int) -> None:
        self._per_lane = max_worker_failures
        self._limit = max_failures
        self._lanes = lanes
        self._slots = max(1, slots)
        self._failures = [0] * lanes
        self._reserved = [0] * lanes
        self._reserved_total = 0
        self.failed = 0  #: failures heard in this execution

    def active(self, lane: int) -> bool:
        """False once the lane has seen ``max_worker_failures`` failures."""
        return self._failures[lane] < self._per_lane

    def failures(self, lane: int) -> int:
        """Failures the lane has seen."""
        return self._failures[lane]

    @property
    def reached(self) -> bool:
        """True once the execution has seen ``max_failures`` failures."""
        return self._limit is not None and self.failed >= self._limit

    def grant(self, lane: int, in_flight: int) -> int:
        """Reserve the budget of a new chunk for ``lane``, which has ``in_flight`` chunks out.

        Returns 0 when nothing may be granted: submit no chunk then.
        """
        left = self._per_lane - self._failures[lane] - self._reserved[lane]
        if left <= 0:
            return 0
        share = math.ceil(left / max(1, self._slots - in_flight))
        if self._limit is not None:
            spare = self._limit - self.failed - self._reserved_total
            cap = math.ceil(spare / self._lanes) if spare > 0 else 0
            share = min(share, cap if in_flight else max(1, cap))
        if share > 0:
            self._reserved[lane] += share
            self._reserved_total += share
        return share

    def charge(self, lane: int, failures: int) -> None:
        """Count ``failures`` heard from a chunk of ``lane``; they come out of its grant."""
        if not failures:
            return
        self._failures[lane] += failures
        self.failed += failures
        used = min(failures, self._reserved[lane])
        self._reserved[lane] -= used
        self._reserved_total -= used

    def release(self, lane: int, granted: int, charged: int) -> None:
        """A chunk of ``lane`` ended: free what its grant did not use."""
        unused = min(max(0, granted - charged), self._reserved[lane])
        self._reserved[lane] -= unused
        self._reserved_total -= unused
