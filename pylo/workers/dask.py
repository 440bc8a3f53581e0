"""Dask lanes: each chunk runs as one task on a ``distributed`` cluster.

The coordinator stays in this process and is still the only store writer;
cluster workers only run chunks and send back :class:`ChunkResult` messages,
so they never need the store, its credentials or its network.

Flow of one execution::

    start:  cloudpickle(function, settings) ──► Variable "pylo-job-<token>"
                                                 (held by the scheduler)
    submit: client.submit(run_chunk, token, lane, chunk, budget)
                 │      (one task per chunk, pure=False; up to two out per lane)
                 ▼
    Dask worker process: _dask_remote.run_chunk
        fetch the job from the Variable once per process (LRU cache)
        LaneRunner over the chunk; a watched thread when there is a timeout;
        stop flag: set by cancel() on every worker (client.run), and
        Event "pylo-stop-<token>" read once per process, with the job
                 │
                 ▼ ChunkResult (or an error: KilledWorker, cancelled, bug)
    client event loop: _collect gathers it ──► SimpleQueue ──► poll()

What each rule of a lane becomes here, and why:

* **Budgets.** A remote task keeps no lane state: each chunk carries the
  failure budget the coordinator gave it, as on every backend (the
  coordinator never lets a lane's chunks in flight hold more budget than the
  lane has left). With fewer lanes than cluster threads a lane has one chunk
  out: two could run side by side.
* **max_failures.** Lanes on other machines share no counter: each chunk
  may fail at most its share of what is left (the coordinator's rule), and
  the coordinator stops the run when the count is reached. At most
  ``max_failures + lanes`` inputs fail.
* **Rate limits.** Each chunk gets a token bucket of ``rate / lanes`` that
  starts empty, and at most ``lanes`` chunks run at once (the cluster's
  threads bound them when a lane has two out), so the cluster-wide cap holds
  with no shared state; when fewer lanes have work, the total rate is lower.
* **Timeouts.** The chunk runs in a thread inside the Dask task, watched like
  a thread lane: a task past its timeout fails with ``TaskTimeout`` and the
  chunk returns at once; the coordinator re-queues the rest. The stuck thread
  cannot be killed: it stays in the worker process until the task returns,
  while the worker takes other tasks.
* **A worker lost mid-chunk.** Dask reschedules the chunk on another worker
  (its inputs run again: nothing was reported). When the chunk has killed
  ``allowed-failures + 1`` workers, Dask gives up with ``KilledWorker``; the
  backend then runs that chunk's inputs one task each, so only an input whose
  own task kills its workers again is recorded as failed with
  ``WorkerCrashed``; the others finish normally.
* **initializer.** It runs once per Dask worker process and execution, in
  the thread of the first chunk of the execution that process runs (the
  other threads of the process wait for it), and not again for its other
  chunks. A process where it raised answers that chunk and later ones with
  :class:`~pylo.errors.InitializerFailed`; the first one ends the execution.
* **No workers.** A nanny does not start again a worker that died while
  it was starting, so a cluster can be left with none, and its scheduler
  keeps the chunks queued for ever. A watchdog (``_dask_watchdog``) counts
  the workers from the client's event loop; once there have been none for
  ``no_workers_timeout`` seconds, ``poll`` raises a :class:`PyloError`
  naming the scheduler and the option, and the execution ends ``aborted``
  like any other error, its outcomes kept and resumable.
* **progress()** knows nothing (a remote chunk is reported when it ends), so
  a time-based flush waits for chunk ends; Dask chunks aim at 250 ms of work
  (``chunk_seconds``) counted in the CPU time of the worker thread, within
  four times that on the wall clock (see :mod:`pylo._sizing`), so outcomes
  become durable up to that much later than on local workers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pylo.errors import InitializerFailed, PyloError, WorkerCrashed
from pylo.workers._dask_remote import Inputs, Job, forget_job, job_name, run_chunk, stop_job
from pylo.workers._dask_watchdog import NO_WORKERS_TIMEOUT, NoWorkersWatchdog, no_workers_error
from pylo.workers._runner import describe_failure, qualified_name
from pylo.workers.base import Backend, ChunkResult, Lanes, RunnerSettings, TaskFailure

__all__ = ["DaskBackend", "DaskLanes"]

logger = logging.getLogger(__name__)

# Not `pip install "pylo[dask]"`: the name pylo on the package index belongs to an unrelated project.
_INSTALL_HINT = (
    'Pylo.dask needs dask and distributed: pip install ".[dask]" from a checkout of pylo '
    '(or pip install "dask[distributed]")'
)
#: Seconds ``shutdown(wait=True)`` gives the cluster to clean up.
CLEANUP_SECONDS = 10.0

# Clients that resolve_client made from an address: pylo may close these,
# never one the user passed in.
_OWNED_CLIENTS: weakref.WeakSet[Any] = weakref.WeakSet()


def _import_distributed() -> Any:
    """``distributed``, or an ImportError that says what to install."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return distributed


# -- the coordinator's side ----------------------------------------------------


@dataclass(slots=True, eq=False)
class _Flight:
    """A chunk submitted and not reported yet.

    After a ``KilledWorker`` the chunk is run again one input per task
    (``one_by_one``), from input ``next``, and its outcomes gather here.
    """

    lane: int
    chunk_id: int
    inputs: Sequence[Any]
    budget: int
    started: float
    future: Any = None
    one_by_one: bool = False
    next: int = 0
    failures: list[tuple[int, TaskFailure]] = field(default_factory=list)
    results: list[tuple[int, bytes]] = field(default_factory=list)


class DaskBackend(Backend):
    """Runs each chunk as a task on a Dask cluster, through a ``distributed.Client``.

    Args:
        client: A ``distributed.Client`` (used as it is, never closed by
            pylo), or the address of a Dask scheduler (a client is made, and
            closed by :meth:`release`); see :meth:`resolve_client`.
        no_workers_timeout: Seconds an execution waits while the cluster
            has no workers before it stops (None: it waits for ever).
            Checked by ``Pylo.dask``.

    Raises:
        ImportError: dask or distributed is not installed; says what to install.
        TypeError: ``client`` is neither a Client nor an address.
        OSError: The scheduler at the address cannot be reached.
    """

    name = "dask"
    sends_to = "Dask workers"

    def __init__(self, client: Any, no_workers_timeout: float | None = NO_WORKERS_TIMEOUT) -> None:
        self.client = self.resolve_client(client)
        self.no_workers_timeout = no_workers_timeout

    def new_lanes(self) -> DaskLanes:
        return DaskLanes(self.client, self.no_workers_timeout)

    def release(self) -> None:
        """Close the client if it was made from an address; one passed in is left alone."""
        self.release_client(self.client)

    def default_lanes(self) -> int:
        """One lane per worker thread of the cluster now, at least 1."""
        return max(1, sum(self.client.nthreads().values()))

    @staticmethod
    def resolve_client(client: Any) -> Any:
        """The ``distributed.Client`` to run on.

        Args:
            client: A ``distributed.Client`` (used as it is), or the address of
                a Dask scheduler such as ``"tcp://10.0.0.5:8786"`` (a new
                client connects to it; :meth:`release_client` closes it).

        Raises:
            ImportError: dask or distributed is not installed; says what to install.
            TypeError: ``client`` is neither a Client nor an address.
            OSError: The scheduler at the address cannot be reached.
        """
        distributed = _import_distributed()
        if isinstance(client, distributed.Client):
            return client
        if isinstance(client, str):
            # Not the default client: dask.compute() elsewhere in the user's
            # program must not start using a client pylo made.
            made = distributed.Client(client, set_as_default=False)
            _OWNED_CLIENTS.add(made)
            return made
        hint = (
            " (for a cluster object, pass distributed.Client(cluster))" if hasattr(client, "scheduler_address") else ""
        )
        raise TypeError(
            "client must be a distributed.Client or a scheduler address such as 'tcp://host:8786', "
            f"got {type(client).__name__}{hint}"
        )

    @staticmethod
    def release_client(client: Any) -> None:
        """Close ``client`` if :meth:`resolve_client` made it from an address; else do nothing."""
        if client in _OWNED_CLIENTS:
            _OWNED_CLIENTS.discard(client)
            client.close()


class DaskLanes(Lanes):
    """One execution's lanes on the cluster: a token, a job held by the scheduler, chunks as tasks."""

    # A second chunk per lane waits on the cluster while the first one's
    # result travels back (start() turns this off when lanes are fewer than
    # the cluster's threads). Each chunk carries the budget the coordinator
    # gave it: remote tasks keep no lane state.
    prefetch = 1
    # Each chunk is a task of the cluster: its scheduling, transfer and
    # gathering cost tens of milliseconds, more on a busy machine, which
    # chunks of 50 ms of work would pay every few inputs. Counted in CPU
    # time: run_chunk reports the CPU time of the thread that ran the chunk.
    chunk_seconds = 0.25

    def __init__(self, client: Any, no_workers_timeout: float | None = None) -> None:
        self._client = client
        self._token = uuid.uuid4().hex
        self._settings = RunnerSettings()
        self._flights: dict[int, _Flight] = {}
        # A chunk's outcome, or (None, None, None) to wake poll when the watchdog fires.
        self._done: queue.SimpleQueue[tuple[_Flight | None, Any, Any]] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._no_workers_timeout = no_workers_timeout
        self._watchdog: NoWorkersWatchdog | None = None
        self._no_workers: PyloError | None = None  # set by the watchdog, raised by poll
        self._ready: list[ChunkResult] = []  # results held back while an error is raised
        self._stopping = False
        self._started = False
        self._closed = False
        self._setup_failed = False  # an initializer failure was reported: one is enough

    def start(self, function: Callable[[Any], Any], lanes: int, settings: RunnerSettings) -> None:
        distributed = _import_distributed()
        import cloudpickle

        self._settings = settings
        # With as many lanes as the cluster has threads, Dask itself runs at
        # most `lanes` chunks at once, so two chunks out per lane neither
        # exceed number_of_workers tasks at a time nor the rate limit (each
        # chunk's bucket is rate / lanes). With fewer lanes, a lane's two
        # chunks could run side by side: keep one out per lane.
        self.prefetch = 1 if lanes >= sum(self._client.nthreads().values()) else 0
        rate = None if settings.rate_limit is None else settings.rate_limit / lanes
        job = Job(function, settings, f"pylo-stop-{self._token}", rate)
        # Pickled once here and held by the scheduler; each worker process
        # fetches it once, so a large closure does not travel with every chunk.
        distributed.Variable(job_name(self._token), client=self._client).set(cloudpickle.dumps(job))
        self._started = True
        if self._no_workers_timeout is not None:
            self._watchdog = NoWorkersWatchdog(self._client, self._no_workers_timeout, self._without_workers)
            self._watchdog.start()

    def _without_workers(self, seconds: float) -> None:
        """On the client's event loop: the cluster has had no workers too long; poll raises it."""
        assert self._no_workers_timeout is not None, "the watchdog runs only with a timeout"
        logger.warning("the Dask cluster has had no workers for %.0f s: stopping the execution", seconds)
        stopped = "the execution stopped with its outcomes so far recorded"
        self._no_workers = no_workers_error(self._client, seconds, self._no_workers_timeout, stopped)
        self._done.put((None, None, None))

    def submit(self, lane: int, chunk_id: int, inputs: Sequence[Any], budget: int) -> None:
        flight = _Flight(lane, chunk_id, inputs, budget, time.perf_counter())
        self._flights[chunk_id] = flight
        if self._stopping:
            self._done.put((flight, None, ChunkResult(chunk_id, lane, 0, (), (), None, 0.0)))
            return
        self._launch(flight, f"pylo-chunk-{self._token}-{chunk_id}", inputs, budget)

    def _launch(self, flight: _Flight, key: str, inputs: Sequence[Any], budget: int) -> None:
        future = self._client.submit(
            run_chunk, self._token, flight.lane, flight.chunk_id, Inputs(inputs), budget, key=key, pure=False
        )
        flight.future = future
        self._client.loop.add_callback(self._collect, flight, future)

    async def _collect(self, flight: _Flight, future: Any) -> None:
        """On the client's event loop: fetch the chunk's outcome as soon as it is ready."""
        try:
            outcome = await self._client.gather(future, asynchronous=True)
        except BaseException as exc:  # KilledWorker, cancelled, or a failure of the task itself
            outcome = exc
        finally:
            # Released at once: a finished result still held would be recomputed
            # (its inputs run again) if the worker holding it died.
            future.release()
        self._done.put((flight, future, outcome))

    def poll(self, timeout: float | None) -> list[ChunkResult]:
        if self._ready:
            ready, self._ready = self._ready, []
            return ready
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                first = self._done.get(timeout=wait)
            except queue.Empty:
                return []
            found = [first]
            while True:
                try:
                    found.append(self._done.get_nowait())
                except queue.Empty:
                    break
            results = []
            for flight, future, outcome in found:
                if flight is None:
                    continue  # the watchdog's wake-up: looked at below
                result = self._settle(flight, future, outcome)
                if result is not None:
                    results.append(result)
            if self._no_workers is not None and self._error is None:
                # Even while stopping: the chunks out will not come back without workers.
                self._error, self._no_workers = self._no_workers, None
                self._stopping = True
            if self._error is not None:
                # Raised first; the results gathered with it come out of the
                # next poll, which the coordinator makes while it winds down.
                error, self._error = self._error, None
                self._ready = results
                raise error
            if results:
                return results
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def _settle(self, flight: _Flight, future: Any, outcome: Any) -> ChunkResult | None:
        """Turn one task's outcome into the chunk's result, or None while the chunk goes on."""
        if self._flights.get(flight.chunk_id) is not flight or (future is not None and future is not flight.future):
            return None  # a task of a chunk already reported
        if isinstance(outcome, ChunkResult):
            if not flight.one_by_one:
                return self._report(flight, outcome)
            # One input of a chunk run one by one: its indexes are shifted.
            base = flight.next
            flight.failures.extend((base + index, failure) for index, failure in outcome.failures)
            flight.results.extend((base + index, encoded) for index, encoded in outcome.results)
            flight.next = base + outcome.attempted
            if outcome.interrupt is not None or outcome.attempted == 0:
                return self._report_gathered(flight, outcome.interrupt)
            return self._next_one(flight)
        if self._is_killed_worker(outcome) and not self._stopping:
            if not flight.one_by_one:
                logger.warning(
                    "chunk %d of worker %d killed the Dask workers that ran it (%s); "
                    "running its inputs one task each to find the input that does",
                    flight.chunk_id,
                    flight.lane,
                    outcome,
                )
                flight.one_by_one = True
                return self._next_one(flight, launch_only=True)
            flight.failures.append((flight.next, self._crashed(outcome)))
            flight.next += 1
            return self._next_one(flight)
        if isinstance(outcome, InitializerFailed):
            # A worker process that cannot set up runs none of the chunk: its inputs stay pending.
            if self._error is None and not self._setup_failed:
                self._error = outcome
            self._setup_failed = True
            self._stopping = True
        elif not (self._stopping or self._closed):
            # Not a task's failure (those are inside the ChunkResult): the
            # cluster lost the chunk, or the task could not even start (pylo
            # or the function's module missing on a worker). The run ends; a
            # resume reruns everything not recorded.
            error = PyloError(
                f"the Dask cluster could not run chunk {flight.chunk_id} of worker {flight.lane}: "
                f"{qualified_name(type(outcome))}: {outcome}. Recorded outcomes are kept; "
                "resume the execution once the cluster is healthy (are pylo and the task's "
                "modules installed on every Dask worker?)"
            )
            error.__cause__ = outcome if isinstance(outcome, BaseException) else None
            self._error = error
            self._stopping = True  # no new tasks on a cluster in this state
        # After cancel() (or the error above) a lost chunk reports what was gathered.
        return self._report_gathered(flight, None)

    def _next_one(self, flight: _Flight, *, launch_only: bool = False) -> ChunkResult | None:
        """Run the next input of a one-by-one chunk, or report the chunk when it is done."""
        left = flight.budget - len(flight.failures)
        if not launch_only and (flight.next >= len(flight.inputs) or left <= 0 or self._stopping):
            return self._report_gathered(flight, None)
        index = flight.next
        key = f"pylo-input-{self._token}-{flight.chunk_id}-{index}"
        self._launch(flight, key, flight.inputs[index : index + 1], left)
        return None

    @staticmethod
    def _is_killed_worker(outcome: Any) -> bool:
        from distributed import KilledWorker

        return isinstance(outcome, KilledWorker)

    def _crashed(self, killed: BaseException) -> TaskFailure:
        """The failure of an input whose own task killed the Dask workers that ran it."""
        allowed = getattr(killed, "allowed_failures", None)
        deaths = allowed + 1 if isinstance(allowed, int) else 1
        times = f"{deaths} times" if isinstance(allowed, int) else "repeatedly"
        error = WorkerCrashed(
            f"the Dask worker process running this input died {times} (distributed raised KilledWorker); "
            "the task may crash its process (os._exit, a signal, a segfault, running out of memory)"
        )
        return describe_failure(error, deaths, self._settings)  # each death was an attempt at this input

    def _report_gathered(self, flight: _Flight, interrupt: BaseException | None) -> ChunkResult:
        return self._report(
            flight,
            ChunkResult(
                chunk_id=flight.chunk_id,
                lane=flight.lane,
                attempted=flight.next,
                failures=flight.failures,
                results=flight.results,
                interrupt=interrupt,
                elapsed=time.perf_counter() - flight.started,
            ),
        )

    def _report(self, flight: _Flight, result: ChunkResult) -> ChunkResult:
        """The chunk is over."""
        del self._flights[flight.chunk_id]
        return result

    def cancel(self) -> None:
        self._stopping = True
        if not self._started:
            return
        try:
            from distributed import Event

            # Running chunks stop before their next input; chunks still queued
            # stop before their first one and report nothing attempted.
            Event(f"pylo-stop-{self._token}", client=self._client).set()
            # Pushed to the processes running chunks now: they stop before
            # their next input without polling the scheduler.
            self._client.run(stop_job, self._token, wait=False, on_error="ignore")
        except Exception:
            logger.warning("could not signal the Dask workers to stop", exc_info=True)

    def shutdown(self, wait: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.stop()
        if not self._started:
            return
        futures = [flight.future for flight in self._flights.values() if flight.future is not None]
        cleaner = threading.Thread(target=self._clean_up, args=(futures,), name="pylo-dask-cleanup", daemon=True)
        cleaner.start()
        # Cleaning up is a few messages to the scheduler; it must never keep an
        # interrupted run waiting on an unresponsive cluster.
        cleaner.join(CLEANUP_SECONDS if wait else 1.0)

    def _clean_up(self, futures: list[Any]) -> None:
        from distributed import Event, Variable

        client = self._client
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("cancel the chunks still running", lambda: client.cancel(futures) if futures else None),
            ("free the job on the workers", lambda: client.run(forget_job, self._token, on_error="ignore")),
            ("remove the stop event", lambda: Event(f"pylo-stop-{self._token}", client=client).clear()),
            ("remove the job", lambda: Variable(job_name(self._token), client=client).delete()),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                logger.debug("could not %s of execution token %s", what, self._token, exc_info=True)
