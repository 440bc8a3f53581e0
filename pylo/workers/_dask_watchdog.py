"""A watchdog for a Dask cluster left with no workers, so an execution does not wait forever.

A Dask nanny does not start again a worker that dies while it is starting
(its memory limit, a broken import at start-up, a machine lost during a
restart), so a cluster can be left with no workers at all. Its scheduler
then keeps the chunks queued, and an execution would wait for them for
ever. :class:`NoWorkersWatchdog` asks the scheduler how many workers it
has, from the client's event loop (never from the coordinator's thread),
and tells its owner once the cluster has had none for ``timeout`` seconds
in a row; a worker seen in between starts the count again.

An execution's lanes raise what :func:`no_workers_error` says from their
``poll``; a pipeline's call node on Dask waits for its task through
:class:`WatchedFuture`, and fails with it.

The default, :data:`NO_WORKERS_TIMEOUT`, is long enough for a nanny to
replace a worker (or an autoscaler to add one) and short enough that a
cluster that lost them all is noticed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pylo.errors import PyloError

__all__ = ["CHECK_SECONDS", "NO_WORKERS_TIMEOUT", "NoWorkersWatchdog", "WatchedFuture", "no_workers_error"]

logger = logging.getLogger(__name__)

#: Default seconds a cluster may have no workers before an execution on it stops.
NO_WORKERS_TIMEOUT = 300.0
#: Longest time between two counts of the workers (shorter for a short timeout).
CHECK_SECONDS = 1.0
#: Longest wait for one count: a scheduler that does not answer is not a cluster without workers.
ASK_SECONDS = 10.0


class NoWorkersWatchdog:
    """Counts a cluster's workers on the client's event loop; calls ``expired`` once after ``timeout`` s of none.

    Args:
        client: The ``distributed.Client`` of the execution.
        timeout: Seconds in a row with no workers before ``expired`` is called.
        expired: Called once, on the client's event loop, with the seconds
            the cluster has had no workers; it must only hand the news over.
    """

    def __init__(self, client: Any, timeout: float, expired: Callable[[float], None]) -> None:
        self._client = client
        self._timeout = timeout
        self._expired = expired
        self._every = min(CHECK_SECONDS, timeout / 4)
        self._task: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        self._task = asyncio.run_coroutine_threadsafe(self._watch(), self._client.loop.asyncio_loop)

    def stop(self) -> None:
        """Stop counting (the execution's lanes shut down); safe to call more than once."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        none_since: float | None = None
        while True:
            workers = await self._count()
            now = time.monotonic()
            if workers is None:
                pass  # not known: the chunks' own errors say when the scheduler is gone
            elif workers:
                none_since = None
            elif none_since is None:
                none_since = now
                logger.warning(
                    "the Dask cluster at %s has no workers; the execution stops if none joins within %g s",
                    self._client.scheduler.address,
                    self._timeout,
                )
            if none_since is not None and now - none_since >= self._timeout:
                self._expired(now - none_since)
                return
            await asyncio.sleep(self._every)

    async def _count(self) -> int | None:
        """The number of workers the scheduler knows now, or None when it does not answer."""
        try:
            return len(await self._client.nthreads(asynchronous=True, callback_timeout=ASK_SECONDS))
        except Exception:
            logger.debug("could not count the workers of the Dask cluster", exc_info=True)
            return None


def no_workers_error(client: Any, seconds: float, timeout: float, stopped: str) -> PyloError:
    """The error that says the cluster has had no workers too long, what ``stopped``, and what to do."""
    return PyloError(
        f"the Dask cluster at {client.scheduler.address} has had no workers for {seconds:.0f} s "
        f"(no_workers_timeout={timeout:g}): {stopped}. Start workers (a Dask nanny does not restart a "
        "worker that dies while it starts) and resume, or give Pylo.dask(..., no_workers_timeout=None) "
        "to wait for workers however long it takes"
    )


class WatchedFuture:
    """A ``distributed`` future whose :meth:`result` gives up when the cluster has had no workers too long.

    Args:
        client: The client the future belongs to.
        future: The future of one task.
        timeout: ``no_workers_timeout`` (None: wait for ever, as ``future.result()`` does).
    """

    def __init__(self, client: Any, future: Any, timeout: float | None) -> None:
        self._client = client
        self._future = future
        self._timeout = timeout

    def result(self) -> Any:
        """The task's result.

        Raises:
            PyloError: The cluster has had no workers for ``timeout`` seconds (the task is cancelled).
            Exception: What the task's future raised.
        """
        if self._timeout is None:
            return self._future.result()
        expired = threading.Event()
        waited = [0.0]

        def expire(seconds: float) -> None:
            waited[0] = seconds
            expired.set()

        watchdog = NoWorkersWatchdog(self._client, self._timeout, expire)
        watchdog.start()
        try:
            while True:
                try:
                    return self._future.result(timeout=CHECK_SECONDS)
                except asyncio.TimeoutError:
                    if expired.is_set():
                        self._future.cancel()
                        raise no_workers_error(self._client, waited[0], self._timeout, "the node failed") from None
        finally:
            watchdog.stop()
