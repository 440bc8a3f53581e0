"""How one plain node call runs, on each kind of workers.

The coordinator hands each started node to a thread of its node pool (at
most ``max_parallel`` of them). That thread runs the call where the Pylo's
workers are: in itself (threads), in a worker process, on the Dask cluster,
or, for an ``async def`` task, on the run's event loop thread. A batch node
runs its execution from that thread too, so it blocks a node slot, not the
coordinator.

:func:`execute_call` does one call with its retry policy and timeout and
describes the outcome; it is a module-level function so it can run in
another process or on a cluster worker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pylo._codec import get_codec, short_repr
from pylo._tracebacks import describe_exception, safe_str
from pylo.errors import ResultSerializationError, TaskTimeout, WorkerCrashed
from pylo.pipeline._builder import Pipeline

if TYPE_CHECKING:
    from pylo.pipeline._task import Task

__all__ = ["CallRunner", "Outcome", "describe_failure", "execute_call", "finish_call"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: a message made once per node, and frozen init is 6x slower
class Outcome:
    """What one node call came to (a message from a node thread to the coordinator; never changed).

    Attributes:
        ok: True when the task returned.
        value: Its result (only when ``ok``).
        encoded: The result, encoded by the run's codec (only when ``ok``).
        exc_type, message, traceback, exception: The failure (when not ``ok``);
            ``exception`` is the codec-encoded exception or None.
        error: The exception object itself, when it is at hand.
        attempts: Attempts made (retries included).
        started, ended: POSIX times.
        interrupt: A KeyboardInterrupt/SystemExit the task raised: the
            coordinator re-raises it.
        execution_id: The execution a batch node ran.
        stopped: A batch node stopped part way on a pause or cancel (not a
            failure: its execution is resumable).
    """

    ok: bool
    value: Any = None
    encoded: bytes | None = None
    exc_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    exception: bytes | None = None
    error: BaseException | None = None
    attempts: int = 1
    started: float = 0.0
    ended: float = 0.0
    interrupt: BaseException | None = None
    execution_id: str | None = None
    #: The task returned a pipeline: it, pickled, to run as a child run.
    child: bytes | None = None
    stopped: bool = False


def describe_failure(exc: BaseException, codec_name: str, attempts: int, started: float, **extra: Any) -> Outcome:
    """An Outcome for a call that raised ``exc``."""
    exc_type, message, text, encoded = describe_exception(exc, get_codec(codec_name))
    return Outcome(
        ok=False,
        exc_type=exc_type,
        message=message,
        traceback=text,
        exception=encoded,
        error=exc,
        attempts=attempts,
        started=started,
        ended=time.time(),
        **extra,
    )


def _attempts_of(retrying: Any) -> int:
    return int(retrying.statistics.get("attempt_number", 1)) if retrying is not None else 1


def _unwrap_retry_error(exc: BaseException) -> BaseException:
    from tenacity import RetryError

    if isinstance(exc, RetryError) and exc.last_attempt.failed:
        cause = exc.last_attempt.exception()
        if cause is not None:
            return cause
    return exc


def finish_call(value: Any, codec_name: str, attempts: int, started: float) -> Outcome:
    if isinstance(value, Pipeline):
        from pylo.pipeline._dynamic import encode_child

        try:
            child = encode_child(value)
        except Exception as exc:
            unstorable = TypeError(f"the task returned a pipeline that cannot be stored to run as a child run: {exc}")
            return describe_failure(unstorable, codec_name, attempts, started)
        return Outcome(ok=True, child=child, attempts=attempts, started=started, ended=time.time())
    codec = get_codec(codec_name)
    try:
        encoded = codec.encode_value(value)
    except Exception as exc:
        problem = ResultSerializationError(
            f"the task returned {type(value).__qualname__} {short_repr(value)}, which cannot be stored with "
            f"the {codec.name} codec: {safe_str(exc)}"
        )
        return describe_failure(problem, codec_name, attempts, started)
    return Outcome(ok=True, value=value, encoded=encoded, attempts=attempts, started=started, ended=time.time())


def _call_sync(
    function: Callable[..., Any], retry: Any, args: tuple[Any, ...], kwargs: dict[str, Any], attempts: list[int]
) -> Any:
    """Call with the retry policy; ``attempts[0]`` says how many attempts were made, however it ends."""
    if retry is None:
        return function(*args, **kwargs)
    retrying = retry.copy()  # tenacity keeps per-call state on the object
    try:
        return retrying(function, *args, **kwargs)
    finally:
        attempts[0] = _attempts_of(retrying)


def execute_call(
    function: Callable[..., Any],
    retry: Any,
    timeout: float | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    codec_name: str,
) -> Outcome:
    """Call a plain function with its retry policy and timeout; never raises an ``Exception``.

    With a timeout the call runs in a thread of its own, abandoned (it
    cannot be stopped) when the time is up; the outcome is a TaskTimeout.
    """
    started = time.time()
    attempts = [1]
    try:
        if timeout is None:
            value = _call_sync(function, retry, args, kwargs, attempts)
        else:
            value = _call_with_timeout(function, retry, timeout, args, kwargs, attempts)
    except Exception as exc:
        return describe_failure(_unwrap_retry_error(exc), codec_name, attempts[0], started)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: the run is interrupted
        return Outcome(ok=False, interrupt=exc, started=started, ended=time.time())
    return finish_call(value, codec_name, attempts[0], started)


def _call_with_timeout(
    function: Callable[..., Any],
    retry: Any,
    timeout: float,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    attempts: list[int],
) -> Any:
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, _call_sync(function, retry, args, kwargs, attempts)))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=target, name="pylo-node-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        raise TaskTimeout(f"the task ran past its timeout of {timeout:g} seconds (its thread was abandoned)")
    ok, payload = box[0]
    if not ok:
        raise payload
    return payload


async def _call_async(
    function: Callable[..., Any],
    retry: Any,
    timeout: float | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    attempts: list[int],
) -> Any:
    async def attempt() -> Any:
        if retry is None:
            return await function(*args, **kwargs)
        retrying = retry.copy()
        try:
            return await retrying(function, *args, **kwargs)
        finally:
            attempts[0] = _attempts_of(retrying)

    if timeout is None:
        return await attempt()
    try:
        return await asyncio.wait_for(attempt(), timeout)
    except asyncio.TimeoutError:
        raise TaskTimeout(f"the task ran past its timeout of {timeout:g} seconds (it was cancelled)") from None


class _LoopThread:
    """An event loop in a daemon thread, where a run's ``async def`` tasks run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pylo-pipeline-loop", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Cancel the tasks still running, let them end, then stop the loop and its thread.

        A run ends with tasks still running only when it was interrupted:
        they are cancelled (their own clean-up runs, as ``asyncio.run``
        does on Ctrl-C), which also lets go the node threads waiting for
        them. A task that does not end within :data:`_CANCEL_SECONDS` of
        its cancellation is left behind with the loop.
        """
        try:
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(_CANCEL_SECONDS + 1.0)
        except Exception:  # the loop is stopped already, or a task would not end
            logger.debug("could not cancel the async tasks of an ended run", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()


#: How long an ended run waits for its cancelled async tasks to end.
_CANCEL_SECONDS = 2.0


async def _cancel_all() -> None:
    """Cancel every task of the running loop but this one, and wait (a while) for them to end."""
    tasks = [other for other in asyncio.all_tasks() if other is not asyncio.current_task()]
    for other in tasks:
        other.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=_CANCEL_SECONDS)


def _execute_pickled(payload: bytes, codec_name: str) -> Outcome:
    """:func:`execute_call` in another process: the call arrives pickled (cloudpickle when needed)."""
    import pickle

    function, retry, timeout, args, kwargs = pickle.loads(payload)
    outcome = execute_call(function, retry, timeout, args, kwargs, codec_name)
    # The value travels back encoded; the live error may not pickle.
    return _portable(outcome)


def _portable(outcome: Outcome) -> Outcome:
    """The outcome as it can travel back from a worker process: no live value or error.

    An interrupt the task raised travels as itself when it pickles, else
    as a stand-in of its kind naming it (as an execution's worker processes
    send theirs), so the caller gets the ``KeyboardInterrupt`` or
    ``SystemExit`` the task raised.
    """
    from dataclasses import replace

    from pylo.workers._process_wire import decode_interrupt, encode_interrupt

    interrupt = None if outcome.interrupt is None else decode_interrupt(encode_interrupt(outcome.interrupt))
    return replace(outcome, value=None, error=None, interrupt=interrupt)


class CallRunner:
    """Runs plain node calls where the Pylo's workers are; one per run, used from node threads.

    Args:
        kind: ``"threads"``, ``"processes"``, ``"asyncio"`` or ``"dask"``.
        workers: Size of the process pool (processes).
        backend_options: The Pylo's worker options (start method; Dask client and no_workers_timeout).
        codec_name: The run's codec.
    """

    def __init__(self, kind: str, workers: int, backend_options: dict[str, Any], codec_name: str) -> None:
        self._kind = kind
        self._workers = workers
        self._options = backend_options
        self._codec_name = codec_name
        self._lock = threading.Lock()
        self._loop: _LoopThread | None = None
        self._pool: Any = None

    def call(
        self,
        task: Task,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        prepared: tuple[Callable[..., Any], Any] | None = None,
    ) -> Outcome:
        """Run one call of ``task`` to its outcome, blocking this (node) thread.

        ``prepared`` is ``(function, retry)`` to run in place of the task's
        own (its function with a context or a rate limit; see ``_run_environment.py``).
        """
        timeout = task.options.timeout
        function: Callable[..., Any]
        function, retry = (task.function, task.options.retry) if prepared is None else prepared
        if task.is_async:
            return self._call_on_loop(function, retry, timeout, args, kwargs)
        # The Task travels, not its function: a decorated module-level
        # function pickles by reference only through its Task (a prepared
        # function wraps the Task for the same reason).
        sent = task if prepared is None else function
        if self._kind == "processes":
            return self._call_remote(self._process_pool().submit, sent, retry, timeout, args, kwargs)
        if self._kind == "dask":
            from pylo.workers._dask_watchdog import WatchedFuture

            client, no_workers_timeout = self._options["client"], self._options["no_workers_timeout"]

            def submit(fn: Callable[..., Any], *fn_args: Any) -> Any:
                # A cluster left with no workers fails the node instead of holding it for ever.
                return WatchedFuture(client, client.submit(fn, *fn_args, pure=False), no_workers_timeout)

            return self._call_remote(submit, sent, retry, timeout, args, kwargs)
        return execute_call(function, retry, timeout, args, kwargs, self._codec_name)

    def _call_on_loop(self, function: Callable[..., Any], retry: Any, timeout: float | None,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:  # fmt: skip
        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread()
            loop = self._loop.loop
        started = time.time()
        attempts = [1]
        future = asyncio.run_coroutine_threadsafe(_call_async(function, retry, timeout, args, kwargs, attempts), loop)
        try:
            value = future.result()
        except Exception as exc:
            return describe_failure(_unwrap_retry_error(exc), self._codec_name, attempts[0], started)
        except BaseException as exc:
            return Outcome(ok=False, interrupt=exc, started=started, ended=time.time())
        return finish_call(value, self._codec_name, attempts[0], started)

    def _call_remote(self, submit: Callable[..., Any], function: Callable[..., Any], retry: Any,
                     timeout: float | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:  # fmt: skip
        from pylo.workers._pickling import dumps

        started = time.time()
        try:
            payload = dumps((function, retry, timeout, args, kwargs))
        except TypeError as exc:
            problem = TypeError(f"the task call cannot be sent to {self._kind} workers: {exc}")
            return describe_failure(problem, self._codec_name, 0, started)
        try:
            outcome: Outcome = submit(_execute_pickled, payload, self._codec_name).result()
        except Exception as exc:  # the worker died, or the cluster lost it
            from concurrent.futures.process import BrokenProcessPool

            if isinstance(exc, BrokenProcessPool):
                self._drop_broken_pool()
                crashed = WorkerCrashed(
                    f"the worker process running the node died without a word ({exc}); "
                    "its pool is replaced for the nodes that follow"
                )
                return describe_failure(crashed, self._codec_name, 1, started)
            return describe_failure(exc, self._codec_name, 1, started)
        if outcome.ok and outcome.child is None:  # a child pipeline stays pickled: the coordinator runs it
            assert outcome.encoded is not None
            from dataclasses import replace

            return replace(outcome, value=get_codec(self._codec_name).decode_value(outcome.encoded))
        return outcome

    def _drop_broken_pool(self) -> None:
        """A dead worker process breaks the whole pool: the next call makes a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _process_pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                method = self._options.get("start_method")
                context = multiprocessing.get_context(method) if method else None
                self._pool = ProcessPoolExecutor(max_workers=self._workers, mp_context=context)
            return self._pool

    def close(self, wait: bool = True) -> None:
        """Stop the event loop thread and the process pool, if they were started.

        ``wait=False`` (an interrupted run): the pool's processes still in a
        node are killed, as an execution's worker processes are, rather than
        left to finish a node nobody waits for; the interpreter would
        otherwise wait for them at exit.
        """
        with self._lock:
            loop, self._loop = self._loop, None
            pool, self._pool = self._pool, None
        if loop is not None:
            loop.close()
        if pool is not None:
            if not wait:
                _kill_workers(pool)
            pool.shutdown(wait=wait, cancel_futures=True)


def _kill_workers(pool: Any) -> None:
    """Kill the worker processes of a ``ProcessPoolExecutor`` (its ``kill_workers`` from Python 3.14 on)."""
    kill = getattr(pool, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.kill()
        except (OSError, ValueError):  # ended already, or closed
            pass
