"""Running one execution on behalf of the facade: the moments around the coordinator.

:func:`run_execution` records the inputs (through ``prepare``), shows the
progress bar, runs the :class:`~pylo._engine.Coordinator`, and makes sure
that whatever ends the run, at whatever moment, the execution gets a final
status. It also keeps the set of executions running in this process, which
tells a live run from a record left behind by a dead process with our pid.

Several executions may run at once, from different threads. Signal handling
is where Python allows it: only the main thread can install a handler, so
SIGTERM becomes ``SystemExit`` only for an execution started from the main
thread (and only when the application has no SIGTERM handler of its own).
Ctrl-C raises ``KeyboardInterrupt`` in the main thread only; an execution in
another thread is interrupted when that thread is (for example when the
application, on Ctrl-C, makes its tasks raise).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module under signal (no stubs)
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pylo import _engine, _stops
from pylo._codec import Codec
from pylo._liveness import pid_is_gone
from pylo._options import RunOptions
from pylo._plan import Plan, record_end
from pylo._progress import INPUT_PROGRESS, ProgressBar, wants_progress
from pylo.stores.base import ExecutionRecord, ExecutionStatus, Store
from pylo.workers.base import Backend

__all__ = ["process_is_gone", "run_execution"]

logger = logging.getLogger(__name__)

# Ids of the executions this process is running right now, to tell a live
# run from a record left behind by an earlier process that had our pid.
_RUNNING_HERE: set[str] = set()
_RUNNING_LOCK = threading.Lock()


def process_is_gone(record: ExecutionRecord) -> bool:
    """True when a RUNNING execution's process is known to be dead."""
    if record.status is not ExecutionStatus.RUNNING or record.pid is None:
        return False

    def running_here() -> bool:
        with _RUNNING_LOCK:
            return record.id in _RUNNING_HERE

    return pid_is_gone(record.pid, record.host, running_here=running_here)


@contextlib.contextmanager
def _sigterm_as_system_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit(143) (``_stops.Terminated``, which records it as SIGTERM) while an execution runs.

    Python's default for SIGTERM kills the process on the spot, losing the
    outcomes since the last flush and leaving the execution marked running.
    As SystemExit, it interrupts the run like Ctrl-C does: outcomes are
    flushed, the execution is marked interrupted, and the process still
    exits non-zero (128 + 15). Only the main thread can set handlers, and a
    handler the application installed itself is left alone.
    """
    # The C-level calls: the public signal module turns every handler it
    # returns into its enum, and a function is not one (an exception, caught,
    # at each call). Install, check and restore took about 10 us that way,
    # twice a pipeline run; the handlers are the same either way.
    if threading.current_thread() is not threading.main_thread() or _signal.getsignal(_signal.SIGTERM) not in (
        _signal.SIG_DFL,
        None,
    ):
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        raise _stops.Terminated(128 + signum)

    previous = _signal.signal(_signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        _signal.signal(_signal.SIGTERM, previous)


def run_execution(
    store: Store,
    backend: Backend,
    options: RunOptions,
    execution_id: str,
    prepare: Callable[[], Plan],
    function: Callable[[Any], Any],
    codec: Codec,
) -> None:
    """Create the execution with ``prepare``, run it, and give it a final status whatever happens.

    Raises:
        BaseException: Whatever ended the run early, once its end is recorded.
    """
    with _RUNNING_LOCK:
        _RUNNING_HERE.add(execution_id)
    bar: ProgressBar | None = None
    listener = INPUT_PROGRESS.get()
    try:
        with _sigterm_as_system_exit():
            coordinator: _engine.Coordinator | None = None
            try:
                plan = prepare()
                if wants_progress(options.progress):
                    bar = ProgressBar(execution_id, plan.total, plan.finished)
                on_progress: Callable[[int, int], None] | None = None if bar is None else bar.update
                if listener is not None:
                    listener.start(execution_id, plan.total, plan.finished)
                    on_progress = listener.update if bar is None else _both(bar.update, listener.update)
                coordinator = _engine.Coordinator(
                    store,
                    backend,
                    execution_id,
                    plan,
                    options,
                    codec,
                    on_progress=on_progress,
                )
                coordinator.run(function)
            except BaseException as exc:
                # The coordinator records the end of what it ran; this covers the moments
                # before (or an interrupt cutting its own ending short).
                if coordinator is None or not coordinator.ended:
                    _mark_ended(store, execution_id, exc, before_running=coordinator is None)
                raise
    finally:
        if bar is not None:
            bar.close()
        if listener is not None:
            listener.close()
        with _RUNNING_LOCK:
            _RUNNING_HERE.discard(execution_id)


def _both(first: Callable[[int, int], None], second: Callable[[int, int], None]) -> Callable[[int, int], None]:
    def both(finished: int, failed: int) -> None:
        first(finished, failed)
        second(finished, failed)

    return both


def _mark_ended(store: Store, execution_id: str, exc: BaseException, *, before_running: bool) -> None:
    """Give an execution a final status when it ended before its coordinator could (or while it did)."""
    from pylo.errors import ExecutionExists

    if isinstance(exc, ExecutionExists):
        return  # not ours
    try:
        store.get_execution(execution_id)
    except BaseException:
        return  # never created
    status = ExecutionStatus.ABORTED if isinstance(exc, Exception) else ExecutionStatus.INTERRUPTED
    record_end(store, execution_id, status, _stops.ended_by(exc, before_running=before_running))
