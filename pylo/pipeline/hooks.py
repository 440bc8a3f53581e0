"""Hooks: objects told about a run as it goes (``run_pipeline(..., hooks=[...])``).

A hook implements any of these methods, each taking one :class:`PipelineEvent`:

``pipeline_started``, ``pipeline_status_changed``, ``node_started``,
``node_retried``, ``node_progress``, ``node_finished``, ``node_skipped``,
``pipeline_finished``.

``node_progress`` is a batch node's inputs as its execution goes: when it
starts (with the inputs a resume found finished), then at most every
``PROGRESS_SECONDS`` while inputs finish, and once more when it ends, each
event with ``inputs_done`` (finished or failed) and ``inputs_failed`` out of
``inputs_total``.

Hooks are called in event order on one thread of their own, fed by the
coordinator through a queue: a slow hook never stalls the coordinator, its
writes or the nodes. It does stall the hooks after it, and ``run_pipeline``
(which returns once every event was handed to every hook). A hook that
raises cancels the run (as ``cancel_pipeline`` would); its error is recorded
under the run's ``options["hook_error"]`` and logged, and later events still
reach the other hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["HOOK_METHODS", "PROGRESS_SECONDS", "HookDispatcher", "PipelineEvent"]

#: Least time between two ``node_progress`` events of a batch node (but its first and last).
PROGRESS_SECONDS = 0.1

logger = logging.getLogger(__name__)

#: The methods a hook may implement, each called with one PipelineEvent.
HOOK_METHODS = (
    "pipeline_started",
    "pipeline_status_changed",
    "node_started",
    "node_retried",
    "node_progress",
    "node_finished",
    "node_skipped",
    "pipeline_finished",
)


@dataclasses.dataclass(frozen=True, slots=True)
class PipelineEvent:
    """One thing that happened in a run.

    Attributes:
        kind: The hook method it is for (``"node_finished"``...).
        run_id: The run.
        status: The run's status (``"running"``, ``"paused"``, ``"completed"``...).
        node_key: The node's key (None for a run event).
        task_name: The node's task (``module:qualname``), or None.
        display_name: The node's display name, or None.
        state: The node's state (a ``TaskState`` value), or None.
        attempt: Attempts the node made so far (retries included).
        duration: Seconds the node ran, once it ended (None otherwise).
        error: ``"Type: message"`` of a failed node, or None.
        trace_id: The run's trace id (hex) when tracing, else None.
        child_run_id: A child run the node started, or None.
        inputs_done: ``node_progress``: the batch node's inputs that finished
            (succeeded or failed), those a resume found finished included.
        inputs_failed: ``node_progress``: of those, the ones that failed.
        inputs_total: ``node_progress``: the batch node's inputs.
    """

    kind: str
    run_id: str
    status: str
    node_key: str | None = None
    task_name: str | None = None
    display_name: str | None = None
    state: str | None = None
    attempt: int = 0
    duration: float | None = None
    error: str | None = None
    trace_id: str | None = None
    child_run_id: str | None = None
    inputs_done: int | None = None
    inputs_failed: int | None = None
    inputs_total: int | None = None


class HookDispatcher:
    """Hands events to hooks in order on one thread; remembers the first error a hook raised.

    Args:
        hooks: The hook objects; each needs at least one of ``HOOK_METHODS``.
        on_failure: Called (on the hooks' thread) when a hook first raises.
    """

    def __init__(self, hooks: Sequence[Any], on_failure: Callable[[], None] | None = None) -> None:
        hooks = list(hooks)
        for hook in hooks:
            if not any(callable(getattr(hook, name, None)) for name in HOOK_METHODS):
                raise TypeError(
                    f"a hook must implement at least one of {', '.join(HOOK_METHODS)}; got {type(hook).__name__}"
                )
        self._hooks = hooks
        self._queue: queue.SimpleQueue[PipelineEvent | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.failed = threading.Event()
        self._on_failure = on_failure

    def emit(self, event: PipelineEvent) -> None:
        """Queue an event (from the coordinator's thread); returns at once."""
        if not self._hooks:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pylo-hooks", daemon=True)
            self._thread.start()
        self._queue.put(event)

    def close(self, timeout: float | None = None) -> None:
        """Wait until every queued event reached every hook."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            for hook in self._hooks:
                method = getattr(hook, event.kind, None)
                if method is None:
                    continue
                try:
                    method(event)
                except Exception as exc:
                    logger.error("pipeline hook %r raised on %s; cancelling run %s", hook, event.kind, event.run_id,
                                 exc_info=True)  # fmt: skip
                    if self.error is None:
                        self.error = exc
                        self.failed.set()
                        if self._on_failure is not None:
                            try:
                                self._on_failure()
                            except Exception:
                                logger.exception("could not cancel run %s after a hook raised", event.run_id)


class RunEvents:
    """Turns the coordinator's ``(event, index)`` calls into :class:`PipelineEvent` s for a dispatcher.

    ``rows`` is the coordinator's own list of node rows (updated in place
    before each ``"end"``), so an event says what the store will hold.
    """

    def __init__(self, dispatcher: HookDispatcher, run_id: str, rows: list[Any], trace_id: str | None = None) -> None:
        self._dispatcher = dispatcher
        self._run_id = run_id
        self._rows = rows
        self.trace_id = trace_id

    def run_event(self, kind: str, status: str) -> None:
        self._dispatcher.emit(PipelineEvent(kind, self._run_id, status, trace_id=self.trace_id))

    def __call__(self, event: str, index: int) -> None:
        row = self._rows[index]
        base = {
            "run_id": self._run_id,
            "status": "running",
            "node_key": row.key,
            "task_name": row.task_name,
            "display_name": row.display_name,
            "trace_id": self.trace_id,
            "child_run_id": row.child_run_id,
        }
        emit = self._dispatcher.emit
        if event == "start":
            emit(PipelineEvent("node_started", state="running", attempt=0, **base))
            return
        for attempt in range(1, row.attempts):
            emit(PipelineEvent("node_retried", state="running", attempt=attempt, **base))
        duration = None
        if row.started_at is not None and row.ended_at is not None:
            duration = max(0.0, row.ended_at - row.started_at)
        error = None if row.exc_type is None else f"{row.exc_type}: {row.message or ''}"
        kind = "node_skipped" if row.state == "skipped" or row.started_at is None else "node_finished"
        emit(PipelineEvent(kind, state=row.state, attempt=row.attempts, duration=duration, error=error, **base))

    @contextlib.contextmanager
    def progress_context(self, index: int) -> Iterator[None]:
        """In a batch node's thread, around its work: its execution's inputs become ``node_progress`` events."""
        from pylo._progress import INPUT_PROGRESS

        token = INPUT_PROGRESS.set(_BatchProgress(self, index))
        try:
            yield
        finally:
            INPUT_PROGRESS.reset(token)

    def progress(self, index: int, done: int, failed: int, total: int) -> None:
        row = self._rows[index]
        self._dispatcher.emit(
            PipelineEvent(
                "node_progress", self._run_id, "running", node_key=row.key, task_name=row.task_name,
                display_name=row.display_name, state="running", trace_id=self.trace_id,
                inputs_done=done, inputs_failed=failed, inputs_total=total,
            )
        )  # fmt: skip


class _BatchProgress:
    """An execution's progress (``pylo._progress.InputProgress``) as a batch node's ``node_progress`` events."""

    def __init__(self, events: RunEvents, index: int) -> None:
        self._events = events
        self._index = index
        self._total: int | None = None
        self._done = self._failed = 0
        self._told = (-1, -1)
        self._next = 0.0

    def start(self, execution_id: str, total: int, finished: int) -> None:
        self._total, self._done = total, finished
        self._tell(force=True)

    def update(self, finished: int, failed: int) -> None:
        self._done += finished + failed
        self._failed += failed
        self._tell(force=False)

    def close(self) -> None:
        self._tell(force=True)

    def _tell(self, force: bool) -> None:
        now = time.monotonic()
        if self._total is None or (not force and now < self._next) or self._told == (self._done, self._failed):
            return
        self._next = now + PROGRESS_SECONDS
        self._told = (self._done, self._failed)
        self._events.progress(self._index, self._done, self._failed, self._total)
