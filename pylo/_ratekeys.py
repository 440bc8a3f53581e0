"""Token buckets by key, shared by every thread and process of one run on this machine.

``@task(rate_limit="10/s", rate_key="jobs/runs/get")``: every task, node and
batch input with the same key takes its start from one bucket for the whole
run. The arithmetic is :class:`~pylo._ratelimit.TokenBucket`'s, unchanged;
only where its two numbers (tokens, last refill) live differs::

    coordinator                         any thread, any process of this machine
    KeyedRateLimits.create(limits) ──►  limits.acquire(key)
      makes <tmp>/pylo-rate-XXXX/         │ open <dir>/<key hash> once per process
      (one 16-byte file per key)          │ flock it, read the two doubles,
      pickles as (dir, limits)            │ TokenBucket.reserve, write them back,
                                          ▼ unlock, sleep the booked delay

Why a file and not a ``multiprocessing`` lock and shared array (what an
execution's own ``rate_limit`` uses, handed to its processes at start in the
``Kit``): those cross to a process only when it starts, so the coordinator
would have to thread them through every backend. A file lock pickles as a
path: the registry travels inside the task's function (with ``spawn``,
``fork``, ``forkserver``, cloudpickle, or a Dask task on a ``LocalCluster``)
to processes started before or after the run began, and no extra process
(a ``Manager``) has to stay alive. ``flock`` is released by the kernel when a
process dies, so a killed worker never leaves the bucket locked.

Limits are per run (each run has its own directory) and per machine: Dask
workers on other machines make a bucket of their own there (logged once).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pylo._ratelimit import TokenBucket, parse_rate_limit
from pylo.errors import PipelineValidationError

__all__ = ["KeyedRateLimits", "bucket_key", "resolve_rate_limits"]

logger = logging.getLogger(__name__)

_STATE = struct.Struct("dd")  # tokens, last refill (TokenBucket's state)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def bucket_key(task_name: str, rate_limit: Any, rate_key: str | None) -> str | None:
    """The bucket a task's nodes take their starts from, or None.

    ``rate_key`` when given; else ``"task:<task_name>"`` when the task has a
    ``rate_limit`` (each rate-limited task its own bucket, shared by its
    nodes and inputs); else None (no limit).
    """
    if rate_key is not None:
        return rate_key
    return None if rate_limit is None else f"task:{task_name}"


def resolve_rate_limits(declarations: Iterable[tuple[str, Any, str | None]]) -> dict[str, float]:
    """The run's buckets, from its tasks' ``(task_name, rate_limit, rate_key)``.

    Several tasks may name one ``rate_key``; those that give a
    ``rate_limit`` must give the same rate, and at least one must give it
    (a task with only ``rate_key`` joins the bucket another task declares).

    Args:
        declarations: One ``(task_name, rate_limit, rate_key)`` per task (or
            node) of the run; repeats are fine.

    Returns:
        Key -> task starts per second.

    Raises:
        PipelineValidationError: A bad ``rate_limit`` or ``rate_key``, two
            rates for one key, or a key no task gives a rate for.
    """
    rates: dict[str, tuple[float, str, Any]] = {}
    unrated: dict[str, str] = {}
    for task_name, rate_limit, rate_key in declarations:
        if rate_key is not None and (not isinstance(rate_key, str) or not rate_key):
            raise PipelineValidationError(f"rate_key of task {task_name} must be a non-empty string, got {rate_key!r}")
        try:
            rate = parse_rate_limit(rate_limit)
        except (TypeError, ValueError) as exc:
            raise PipelineValidationError(f"task {task_name}: {exc}") from exc
        key = bucket_key(task_name, rate_limit, rate_key)
        if key is None:
            continue
        if rate is None:
            unrated.setdefault(key, task_name)
            continue
        known = rates.get(key)
        if known is None:
            rates[key] = (rate, task_name, rate_limit)
        elif known[0] != rate:
            raise PipelineValidationError(
                f"rate_key {key!r} has two rates: rate_limit={known[2]!r} on task {known[1]} and "
                f"rate_limit={rate_limit!r} on task {task_name}; give every task of one key the same rate_limit "
                "(or give it on one task only)"
            )
    for key, task_name in unrated.items():
        if key not in rates:
            raise PipelineValidationError(
                f"rate_key {key!r} of task {task_name} has no rate: give rate_limit on a task with this rate_key"
            )
    return {key: rate for key, (rate, _, _) in rates.items()}


class _FileState:
    """One key's bucket state in a file: the lock (thread lock + ``flock``) that loads and saves it.

    Used as both ``state`` and ``lock`` of a :class:`TokenBucket`: entering
    locks and reads the two doubles into ``cells``; leaving writes them back
    and unlocks. ``flock`` locks belong to an open file description, which
    the threads of a process share, hence the thread lock as well.
    """

    def __init__(self, path: str, burst: float, clock: Callable[[], float]) -> None:
        self.cells = [0.0, 0.0]
        self._burst = burst
        self._clock = clock
        self._thread_lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)

    def __enter__(self) -> _FileState:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        data = os.pread(self._fd, _STATE.size, 0)
        if len(data) < _STATE.size:  # the first start of this key: a full bucket
            self.cells[:] = [self._burst, self._clock()]
        else:
            self.cells[:] = _STATE.unpack(data)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            os.pwrite(self._fd, _STATE.pack(*self.cells), 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._thread_lock.release()

    def close(self) -> None:
        os.close(self._fd)


class KeyedRateLimits:
    """The run's token buckets by key; pickles, and stays one bucket per key wherever it goes.

    Make one per run with :meth:`create` (the coordinator), hand it (or a
    pickled copy) to whatever runs tasks, and :meth:`close` it when the run
    ends. Every copy, in any thread or process of this machine, takes its
    starts from the same buckets.

    Args:
        limits: Key -> rate (task starts per second, or ``"N/s"``,
            ``"N/min"``, ``"N/h"``), as :func:`resolve_rate_limits` returns.
        directory: Where the buckets live; must exist (``create`` makes one).
        burst: Most starts at once after a quiet spell; 1 spaces them evenly.
        clock: Monotonic seconds, the same in every process
            (``time.monotonic`` is, on one machine).

    Raises:
        TypeError: A key that is not a string, or a bad rate type.
        ValueError: An empty key, a rate that is not positive, or ``burst < 1``.
    """

    def __init__(
        self,
        limits: Mapping[str, float | str],
        directory: str | os.PathLike[str],
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed: dict[str, float] = {}
        for key, rate in limits.items():
            if not isinstance(key, str):
                raise TypeError(f"rate keys must be strings, got {type(key).__name__} {key!r}")
            if not key:
                raise ValueError("rate keys must be non-empty strings, got ''")
            value = parse_rate_limit(rate)
            if value is None:
                raise ValueError(f"rate of key {key!r} must be given, got None")
            parsed[key] = value
        if isinstance(burst, bool) or not isinstance(burst, (int, float)) or not burst >= 1:
            raise ValueError(f"burst must be a number >= 1, got {burst!r}")
        self.limits = parsed
        self.directory = os.fspath(directory)
        self.burst = float(burst)
        self._clock = clock
        self._owner = False
        self._closed = False
        self._reset()

    @classmethod
    def create(
        cls,
        limits: Mapping[str, float | str],
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        parent: str | os.PathLike[str] | None = None,
    ) -> KeyedRateLimits:
        """Make the run's buckets in a new directory, removed by :meth:`close`.

        Args:
            limits: Key -> rate, as for the constructor.
            burst: As for the constructor.
            clock: As for the constructor.
            parent: Where to make the directory (default: the system's
                temporary directory).

        Returns:
            The registry; this copy owns the directory.
        """
        directory = tempfile.mkdtemp(prefix="pylo-rate-", dir=parent)
        try:
            limits_object = cls(limits, directory, burst=burst, clock=clock)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        limits_object._owner = True
        return limits_object

    def _reset(self) -> None:
        """Forget this process's open buckets (after unpickling, or in a forked child)."""
        self._pid = os.getpid()
        self._guard = threading.Lock()
        self._buckets: dict[str, tuple[TokenBucket, _FileState]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"limits": self.limits, "directory": self.directory, "burst": self.burst, "clock": self._clock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.limits = state["limits"]
        self.directory = state["directory"]
        self.burst = state["burst"]
        self._clock = state["clock"]
        self._owner = False  # only the creator removes the directory
        self._closed = False
        self._reset()

    def __contains__(self, key: object) -> bool:
        return key in self.limits

    def __repr__(self) -> str:
        return f"KeyedRateLimits({self.limits!r}, directory={self.directory!r})"

    def bucket(self, key: str) -> TokenBucket:
        """The bucket of ``key`` in this process: a :class:`TokenBucket` (``reserve``, ``acquire``).

        It can stand in for an execution's limiter (a lane runner's
        ``limiter``), so a batch node's inputs share the key's bucket.

        Raises:
            KeyError: ``key`` is not one of the run's keys.
            ValueError: This copy was closed.
        """
        if self._closed:
            raise ValueError(f"the rate limits {self.directory} are closed: their run has ended")
        if os.getpid() != self._pid:
            # A forked child shares the parent's open file description, and
            # with it the parent's flock: open its own.
            self._reset()
        found = self._buckets.get(key)
        if found is not None:
            return found[0]
        if key not in self.limits:
            raise KeyError(f"no rate limit for key {key!r}; the run's keys are {sorted(self.limits)}")
        with self._guard:
            found = self._buckets.get(key)
            if found is None:
                state = _FileState(self._path(key), self.burst, self._clock)
                bucket = TokenBucket(self.limits[key], self.burst, state.cells, state, self._clock)
                found = self._buckets[key] = (bucket, state)
        return found[0]

    def _path(self, key: str) -> str:
        if not os.path.isdir(self.directory):
            # A Dask worker on another machine: its own bucket there.
            os.makedirs(self.directory, exist_ok=True)
            logger.warning(
                "rate limit buckets %s were made again on this machine: rate keys are shared by one "
                "machine's workers only",
                self.directory,
            )
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        return os.path.join(self.directory, f"{_UNSAFE.sub('_', key)[:40]}-{digest}")

    def reserve(self, key: str) -> float:
        """Take a start from ``key``'s bucket now, or book the next one; seconds to wait for it.

        Raises:
            KeyError: ``key`` is not one of the run's keys.
        """
        return self.bucket(key).reserve()

    def acquire(self, key: str, sleep: Callable[[float], Any] = time.sleep) -> float:
        """Block until a task of ``key`` may start; returns the seconds waited.

        Raises:
            KeyError: ``key`` is not one of the run's keys.
        """
        delay = self.reserve(key)
        if delay > 0:
            sleep(delay)
        return delay

    async def acquire_async(self, key: str) -> float:
        """:meth:`acquire` for coroutines: waits with ``asyncio.sleep``."""
        import asyncio

        delay = self.reserve(key)
        if delay > 0:
            await asyncio.sleep(delay)
        return delay

    def close(self) -> None:
        """Close this process's files; the creating copy also removes the directory."""
        self._closed = True
        with self._guard:
            buckets, self._buckets = self._buckets, {}
        if os.getpid() == self._pid:
            for _, state in buckets.values():
                state.close()
        if self._owner:
            self._owner = False
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> KeyedRateLimits:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
