"""Dask lanes: each chunk runs as one task on a ``distributed`` cluster.

The coordinator stays in this process and is still the only store writer;
cluster workers only run chunks and send back :class:`ChunkResult` messages,
so they never need the store, its credentials or its network.

Flow of one execution::

    start:  cloudpickle(function, settings) ──► Variable "pylo-job-<token>"
                                                 (held by the scheduler)
    submit: client.submit(_run_chunk, token, lane, chunk, budget)
                 │      (one task per chunk, pure=False; two out per lane,
                 │       splitting the lane's failure budget)
                 ▼
    Dask worker process: _run_chunk
        fetch the job from the Variable once per process (LRU cache)
        LaneRunner over the chunk; a watched thread when there is a timeout;
        stop flag = Event "pylo-stop-<token>", read at most every 0.1 s
                 │
                 ▼ ChunkResult (or an error: KilledWorker, cancelled, bug)
    client event loop: _collect gathers it ──► SimpleQueue ──► poll()

What each rule of a lane becomes here, and why:

* **Budgets.** A remote task keeps no lane state, so each chunk carries an
  authoritative failure budget. A lane has two chunks out (one waits on the
  cluster while the other's result travels back), and they split the lane's
  budget, so the lane never sees more failures than it may. With fewer lanes
  than cluster threads a lane has one chunk out: two could run side by side.
* **max_failures.** Lanes on other machines share no counter. The backend
  splits what is left of ``max_failures`` among the chunks out (each gets at
  most ``ceil(left / lanes)``; a lane's only chunk at least 1), and the
  coordinator stops the run when the count is reached. At most
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
* **progress()** knows nothing (a remote chunk is reported when it ends), so
  a time-based flush waits for chunk ends; the coordinator keeps chunks near
  50 ms of work, so this costs little.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pylo._codec import get_codec
from pylo._ratelimit import TokenBucket
from pylo.errors import PyloError, WorkerCrashed
from pylo.workers._runner import Abandoned, LaneRunner, qualified_name
from pylo.workers.base import Backend, ChunkResult, RunnerSettings, TaskFailure

__all__ = ["DaskBackend"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = 'Pylo.dask needs dask and distributed: pip install "pylo[dask]"'
#: Seconds between two reads of the stop Event by one worker process.
STOP_CHECK_SECONDS = 0.1
#: Seconds a worker waits for the scheduler to hand it an execution's job.
JOB_FETCH_SECONDS = 60.0
#: Executions whose job a worker process keeps in memory at once.
JOBS_KEPT = 4
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


# -- what runs on the Dask workers ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    """Everything a worker needs for every chunk of one execution; sent once."""

    function: Callable[[Any], Any]
    settings: RunnerSettings
    stop_name: str
    rate_per_lane: float | None


class _RemoteStop:
    """A stop flag backed by a ``distributed.Event``, read at most every STOP_CHECK_SECONDS.

    The lane runner checks its flag before every input, and an Event read is
    a round trip to the scheduler: reading it on every input would cost more
    than a short task. One flag serves every chunk of an execution in a
    worker process, so a new chunk reuses the last answer.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._event: Any = None
        self._set = False
        self._next_check = 0.0

    def bind(self) -> None:
        """Make the Event (and the worker's client) in a Dask task thread.

        ``get_client()`` finds the worker through the task's thread state; a
        watched lane then reads the Event from a thread of its own.
        """
        if self._event is None:
            from distributed import Event

            event = Event(self._name)
            _ = event.client
            self._event = event

    def is_set(self) -> bool:
        if self._set:
            return True
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + STOP_CHECK_SECONDS
        try:
            self.bind()
            self._set = bool(self._event.is_set())
        except Exception:  # the scheduler is going away: the worker will stop anyway
            logger.debug("cannot read the stop event %s", self._name, exc_info=True)
        return self._set

    def set(self) -> None:
        self._set = True


class _Held:
    """A job as a worker process keeps it, with the flag its chunks share."""

    __slots__ = ("job", "stop")

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.stop = _RemoteStop(job.stop_name)


_HELD: collections.OrderedDict[str, _Held] = collections.OrderedDict()
_FORGOTTEN: collections.OrderedDict[str, None] = collections.OrderedDict()
_HELD_LOCK = threading.Lock()


def _job_name(token: str) -> str:
    return f"pylo-job-{token}"


def _held_job(token: str) -> _Held | None:
    """The job of execution ``token`` in this worker process; None once it has ended."""
    with _HELD_LOCK:
        held = _HELD.get(token)
        if held is not None:
            _HELD.move_to_end(token)
            return held
        if token in _FORGOTTEN:
            return None
    import cloudpickle
    from distributed import Variable

    # Fetched outside the lock: two threads may both fetch; both get the same job.
    payload = Variable(_job_name(token)).get(timeout=JOB_FETCH_SECONDS)
    fetched = _Held(cloudpickle.loads(payload))
    with _HELD_LOCK:
        held = _HELD.setdefault(token, fetched)
        while len(_HELD) > JOBS_KEPT:
            _HELD.popitem(last=False)
    return held


def _forget_job(token: str) -> None:
    """Run on every worker when an execution ends: free its job, stop its stragglers."""
    with _HELD_LOCK:
        held = _HELD.pop(token, None)
        _FORGOTTEN[token] = None
        while len(_FORGOTTEN) > 256:
            _FORGOTTEN.popitem(last=False)
    if held is not None:
        held.stop.set()


class _Inputs:
    """A chunk's inputs, wrapped so that Dask hands them to the task untouched.

    Dask looks inside list, tuple and dict arguments for futures to compute
    first (older versions also for keys and task tuples); inputs are data.
    """

    __slots__ = ("items",)

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items

    def __reduce__(self) -> tuple[type[_Inputs], tuple[Sequence[Any]]]:
        return (_Inputs, (self.items,))


def _run_chunk(token: str, lane: int, chunk_id: int, wrapped: _Inputs, budget: int) -> ChunkResult:
    """The Dask task: run one chunk of inputs in a lane runner and describe it."""
    inputs = wrapped.items
    held = _held_job(token)
    if held is None:  # the execution ended while this task waited for a thread
        return ChunkResult(chunk_id, lane, 0, (), (), None, 0.0)
    job = held.job
    held.stop.bind()
    limiter = None
    if job.rate_per_lane is not None:
        # Starts empty: a lane's chunks follow each other, and a full bucket
        # at every chunk start would let each lane exceed its share.
        limiter = TokenBucket(job.rate_per_lane, 1.0, [0.0, time.monotonic()])
    timeout = job.settings.timeout
    runner = LaneRunner(job.function, lane, job.settings, held.stop, None, limiter, watched=timeout is not None)
    if timeout is None:
        return runner.run(chunk_id, inputs, budget)
    return _run_watched(runner, chunk_id, inputs, budget, timeout)


def _run_watched(runner: LaneRunner, chunk_id: int, inputs: Sequence[Any], budget: int, timeout: float) -> ChunkResult:
    """Run the chunk in a thread and give up on an input that runs past ``timeout``.

    A thread cannot be killed, so a stuck one is abandoned: the chunk ends
    with that input failed (TaskTimeout), and the thread runs on, its outcome
    ignored, until the task returns.
    """
    box: list[ChunkResult | BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            box.append(runner.run(chunk_id, inputs, budget))
        except Abandoned:
            pass  # the chunk was reported with this input timed out
        except BaseException as exc:  # a bug in pylo: hand it to the Dask task
            box.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"pylo-chunk-{chunk_id}", daemon=True)
    thread.start()
    interval = min(0.1, timeout / 4)
    while not done.wait(interval):
        given_up = runner.abandon_if_stuck(timeout, time.monotonic())
        if given_up is not None:
            logger.warning("a task ran past its timeout of %g s; its thread is abandoned", timeout)
            return given_up
    outcome = box[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


# -- the coordinator's side ----------------------------------------------------


@dataclass(slots=True, eq=False)
class _Flight:
    """A chunk the coordinator submitted and that has not been reported yet.

    ``asked`` is the budget the coordinator gave it; ``debts`` are the lane's
    chunks still out when it was submitted, whose failures ``asked`` does not
    count yet. ``lent`` is the budget the chunk runs with (0 while held).
    After a ``KilledWorker`` the chunk is run again one input per task
    (``one_by_one``), from input ``next``, and its outcomes gather here.
    """

    lane: int
    chunk_id: int
    inputs: Sequence[Any]
    asked: int
    debts: tuple[_Flight, ...]
    started: float
    lent: int = 0
    future: Any = None
    # None until reported; then the failures it reported (what it owed its lane).
    settled: int | None = None
    one_by_one: bool = False
    next: int = 0
    failures: list[tuple[int, TaskFailure]] = field(default_factory=list)
    results: list[tuple[int, bytes]] = field(default_factory=list)

    def lane_budget_left(self) -> int:
        """What the lane may still fail in this chunk, after its earlier chunks' share."""
        owed = sum(debt.lent if debt.settled is None else debt.settled for debt in self.debts)
        return self.asked - owed

    def follows(self) -> bool:
        """True while an earlier chunk of the lane is still out."""
        return any(debt.settled is None for debt in self.debts)


class DaskBackend(Backend):
    """Runs each chunk as a task on a Dask cluster, through a ``distributed.Client``.

    Args:
        client: A connected ``distributed.Client``; see :meth:`resolve_client`.
            The backend never closes it.
    """

    # A second chunk per lane waits on the cluster while the first one's
    # result travels back (start() turns this off when lanes are fewer than
    # the cluster's threads). Remote tasks keep no lane state, so the two
    # chunks split the lane's budget: see _launch_or_hold.
    prefetch = 1

    def __init__(self, *, client: Any) -> None:
        self._client = client
        self._token = uuid.uuid4().hex
        self._lanes = 1
        self._settings = RunnerSettings()
        self._flights: dict[int, _Flight] = {}
        self._lane_flights: dict[int, list[_Flight]] = collections.defaultdict(list)
        self._held: list[_Flight] = []
        self._done: queue.SimpleQueue[tuple[_Flight, Any, Any]] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._ready: list[ChunkResult] = []  # results held back while an error is raised
        self._stopping = False
        self._started = False
        self._closed = False
        # max_failures across machines: failures reported, and budgets lent out.
        self._failures_seen = 0
        self._budget_lent = 0

    # -- entry points the facade uses ----------------------------------------

    @classmethod
    def resolve_client(cls, client: Any) -> Any:
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

    @classmethod
    def release_client(cls, client: Any) -> None:
        """Close ``client`` if :meth:`resolve_client` made it from an address; else do nothing."""
        if client in _OWNED_CLIENTS:
            _OWNED_CLIENTS.discard(client)
            client.close()

    @classmethod
    def release(cls, options: Mapping[str, Any]) -> None:
        """Close the client of these options if pylo made it (see :meth:`release_client`)."""
        if options.get("client") is not None:
            cls.release_client(options["client"])

    @classmethod
    def default_lanes(cls, client: Any) -> int:
        """One lane per worker thread of the cluster now, at least 1."""
        return max(1, sum(client.nthreads().values()))

    @classmethod
    def check_function(cls, function: Callable[[Any], Any]) -> None:
        """Refuse a function that cannot travel to Dask workers (cloudpickle, as Dask uses).

        Raises:
            TypeError: cloudpickle cannot pickle the function or what it captures.
        """
        try:
            import cloudpickle
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        try:
            cloudpickle.dumps(function)
        except Exception as exc:
            raise TypeError(
                f"task_function {getattr(function, '__qualname__', type(function).__qualname__)} cannot be sent "
                f"to Dask workers: cloudpickle cannot pickle it ({qualified_name(type(exc))}: {exc}); "
                "define it at module level, or make the objects it captures picklable"
            ) from exc

    # -- Backend ---------------------------------------------------------------

    def start(self, function: Callable[[Any], Any], lanes: int, settings: RunnerSettings) -> None:
        distributed = _import_distributed()
        import cloudpickle

        self._lanes = lanes
        self._settings = settings
        # With as many lanes as the cluster has threads, Dask itself runs at
        # most `lanes` chunks at once, so two chunks out per lane neither
        # exceed number_of_workers tasks at a time nor the rate limit (each
        # chunk's bucket is rate / lanes). With fewer lanes, a lane's two
        # chunks could run side by side: keep one out per lane.
        self.prefetch = 1 if lanes >= sum(self._client.nthreads().values()) else 0
        rate = None if settings.rate_limit is None else settings.rate_limit / lanes
        job = _Job(function, settings, f"pylo-stop-{self._token}", rate)
        # Pickled once here and held by the scheduler; each worker process
        # fetches it once, so a large closure does not travel with every chunk.
        distributed.Variable(_job_name(self._token), client=self._client).set(cloudpickle.dumps(job))
        self._started = True

    def submit(self, lane: int, chunk_id: int, inputs: Sequence[Any], budget: int) -> None:
        out = self._lane_flights[lane]
        flight = _Flight(lane, chunk_id, inputs, budget, tuple(out), time.perf_counter())
        out.append(flight)
        self._flights[chunk_id] = flight
        self._launch_or_hold(flight)

    def _launch_or_hold(self, flight: _Flight) -> None:
        """Send a chunk to the cluster with the budget it may use, or hold it until there is one.

        A lane's failures must stay within the budget the coordinator gives,
        but with two chunks out neither knows the other's failures. So the
        lane's budget is split: a chunk alone gets half of it (a follower
        takes the rest), a follower gets what its predecessor did not take.
        A follower with nothing left waits here until its predecessor
        reports. A chunk that stops on its share of the budget with inputs
        left is re-queued by the coordinator, as its lane is still active.
        """
        left = flight.lane_budget_left()
        follows = flight.follows()
        limit = self._settings.max_failures
        # Nothing to run with: the run is stopping, the lane's budget is
        # spent, or max_failures is reached (the coordinator stops on it).
        spent = (left <= 0 and not follows) or (limit is not None and self._failures_seen >= limit)
        if self._stopping or spent:
            self._done.put((flight, None, ChunkResult(flight.chunk_id, flight.lane, 0, (), (), None, 0.0)))
            return
        lend = left if follows or not self.prefetch else math.ceil(left / 2)
        if limit is not None:
            # Lanes on other machines share no counter: each chunk gets its
            # share of what max_failures leaves; at least 1, so that every
            # lane keeps a chunk running (hence at most max_failures + lanes
            # failures). Followers wait instead.
            spare = limit - self._failures_seen - self._budget_lent
            lend = min(lend, max(1, math.ceil(spare / self._lanes)))
            if spare <= 0 and follows:
                lend = 0
        if lend <= 0:
            self._held.append(flight)
            return
        flight.lent = lend
        self._budget_lent += lend
        self._launch(flight, f"pylo-chunk-{self._token}-{flight.chunk_id}", flight.inputs, lend)

    def _launch(self, flight: _Flight, key: str, inputs: Sequence[Any], budget: int) -> None:
        future = self._client.submit(
            _run_chunk, self._token, flight.lane, flight.chunk_id, _Inputs(inputs), budget, key=key, pure=False
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
                result = self._settle(flight, future, outcome)
                if result is not None:
                    results.append(result)
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
        if not (self._stopping or self._closed):
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
        left = flight.lent - len(flight.failures)
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
        if not self._settings.store_exceptions:
            return TaskFailure(None, None, None, None, deaths, time.time())
        return TaskFailure(
            exc_type=qualified_name(WorkerCrashed),
            message=str(error),
            traceback=f"{qualified_name(WorkerCrashed)}: {error}\n",
            exception=get_codec(self._settings.codec_name).encode_exception(error),
            attempts=deaths,  # each death was an attempt at this input
            failed_at=time.time(),
        )

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
        """The chunk is over: settle its budget, count its failures, release held chunks."""
        del self._flights[flight.chunk_id]
        self._lane_flights[flight.lane].remove(flight)
        self._budget_lent -= flight.lent
        self._failures_seen += len(result.failures)
        flight.settled = len(result.failures)
        held, self._held = self._held, []
        for waiting in held:
            self._launch_or_hold(waiting)
        return result

    def cancel(self) -> None:
        self._stopping = True
        held, self._held = self._held, []
        for waiting in held:
            self._launch_or_hold(waiting)  # reports it as not attempted
        if not self._started:
            return
        try:
            from distributed import Event

            # Running chunks stop before their next input; chunks still queued
            # stop before their first one and report nothing attempted.
            Event(f"pylo-stop-{self._token}", client=self._client).set()
        except Exception:
            logger.warning("could not signal the Dask workers to stop", exc_info=True)

    def shutdown(self, wait: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping = True
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
            ("free the job on the workers", lambda: client.run(_forget_job, self._token, on_error="ignore")),
            ("remove the stop event", lambda: Event(f"pylo-stop-{self._token}", client=client).clear()),
            ("remove the job", lambda: Variable(_job_name(self._token), client=client).delete()),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                logger.debug("could not %s of execution token %s", what, self._token, exc_info=True)
