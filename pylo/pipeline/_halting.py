"""The pause-and-cancel half of the run coordinator: what a halt changes in how nodes start and end.

:class:`HaltRules` is mixed into ``RunCoordinator`` and runs on the
coordinator's thread. A control request (see :mod:`pylo.pipeline._control`)
is looked at every wake (``_look_at_control``); once taken up
(``request_halt``), ``halt`` says ``"pause"`` or ``"cancel"`` and the run's
stop event is set, so running batch nodes stop taking inputs. Then:

- pause: nothing new starts (``_dispatch_halted``); the run ends ``paused``
  while a node is not final (``_final_status``). A node waiting for a
  ``.wait()`` node that ended in this session asks for the pause itself
  (``_waits_for_a_pause``).
- cancel: queued nodes end ``cancelled`` at once (``_cancel_unstarted``),
  and so does every node released later (``_release`` in the coordinator),
  except ``finally_do`` nodes (``_always_runs``): they are queued and start,
  with the run's ``PipelineCancelled`` as what they receive when nothing
  failed before them. Nodes still not final at the end end ``cancelled``.

A child run (a task returned a pipeline) also ends when its parent run is
interrupted: its control then says :data:`PARENT_INTERRUPTED`, which stops
its batch nodes at once and ends the run ``interrupted`` at the
coordinator's next turn (``RunEnded``), as a Ctrl-C in it would.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pylo.pipeline._builder import FINALLY
from pylo.pipeline._outcomes import is_failed_run
from pylo.pipeline._recording import with_state
from pylo.pipeline._records import PipelineStatus, TaskState
from pylo.stores.runs import RunUpdate

if TYPE_CHECKING:
    from pylo.pipeline._graph import Graph
    from pylo.stores.runs import NodeRow, RunStore

__all__ = ["PARENT_INTERRUPTED", "HaltRules"]

#: What a child run's control says once its parent run was interrupted: the child ends interrupted too.
PARENT_INTERRUPTED = "parent_interrupted"

logger = logging.getLogger(__name__)

_CANCELLED = TaskState.CANCELLED.value
_FINAL = frozenset(
    state.value
    for state in (
        TaskState.DONE,
        TaskState.FAILED,
        TaskState.FAILED_SOFTLY,
        TaskState.FAILED_DEPENDENCY,
        TaskState.SKIPPED,
        TaskState.CANCELLED,
    )
)


class HaltRules:
    """Pause and cancel on the coordinator's thread (a mixin; see the module docstring)."""

    _graph: Graph
    _rows: list[NodeRow]
    _states: list[str]
    _runs: RunStore
    _run_id: str
    _ready: collections.deque[int]
    _group_waiting: list[collections.deque[int]]
    _running: int
    _max_parallel: int
    _hard_failures: int
    _ended_here: set[int]
    _control: Callable[[bool], str | None] | None
    _control_seconds: float
    _next_control: float
    _on_event: Callable[[str, int], None] | None
    halt: str | None
    stop: threading.Event
    parent_interrupted: bool

    # Given by the coordinator (_note by RunRecording, _admit_anyway by GroupLimits: before this class in its bases).
    def _note(self, index: int, row: NodeRow) -> None:
        raise NotImplementedError

    def _start(self, index: int) -> None:
        raise NotImplementedError

    def _admit_anyway(self, index: int) -> None:
        raise NotImplementedError

    def _end_unstarted(self, index: int, verdict: str, ended: list[int]) -> None:
        raise NotImplementedError

    def _cascade(self, ended: list[int]) -> None:
        raise NotImplementedError

    def request_halt(self, action: str) -> None:
        """Pause or cancel from the coordinator's thread (a cancel overrides a pause)."""
        if self.halt == "cancel" or self.halt == action:
            return
        logger.info("pipeline run %s: %s requested", self._run_id, action)
        self.halt = action
        self.stop.set()
        # Say it is taken up: readers (and tests) can tell a request seen from one on its way.
        self._runs.record_run(self._run_id, RunUpdate(options={"halt": action}))
        if action == "cancel":
            self._cancel_unstarted()

    def _cancel_unstarted(self) -> None:
        """End every queued node ``cancelled`` now, but those that always run (they are released)."""
        queued = list(self._ready)
        self._ready.clear()
        for waiting in self._group_waiting:
            queued.extend(waiting)
            waiting.clear()
        ended: list[int] = []
        for index in queued:
            if self._always_runs(index):
                self._ready.append(index)
            else:
                self._end_unstarted(index, _CANCELLED, ended)
        self._cascade(ended)

    def _look_at_control(self, force: bool = False) -> None:
        if self._control is None or self.halt == "cancel":
            return
        now = time.monotonic()
        in_store = force or now >= self._next_control
        if in_store:
            self._next_control = now + self._control_seconds
        action = self._control(in_store)
        if action == PARENT_INTERRUPTED:
            # A child run whose parent run was interrupted: batch nodes stop
            # taking inputs now (this may be the keeper's thread), and the
            # coordinator's loop ends the run interrupted at its next turn.
            self.parent_interrupted = True
            self.stop.set()
        elif action is not None:
            self.request_halt(action)

    def _always_runs(self, index: int) -> bool:
        """Nodes that still start after a cancel: ``finally_do`` nodes (the builder's ``handler=FINALLY``)."""
        return self._graph.nodes[index].node.handler == FINALLY

    def _final_status(self) -> PipelineStatus:
        """The run's status once nothing runs: paused nodes stay pending, cancelled ones end ``cancelled``."""
        if self.halt == "cancel":
            for index, state in enumerate(self._states):
                if state not in _FINAL:
                    self._states[index] = _CANCELLED
                    self._note(index, with_state(self._rows[index], _CANCELLED, None, time.time()))
                    if self._on_event is not None:
                        self._on_event("end", index)
            return PipelineStatus.CANCELLED
        if self.halt == "pause" and any(state not in _FINAL for state in self._states):
            return PipelineStatus.PAUSED
        failed = self._hard_failures and is_failed_run(self._states, self._graph.nodes)
        return PipelineStatus.FAILED if failed else PipelineStatus.COMPLETED

    def _waits_for_a_pause(self, index: int) -> bool:
        """True when a node it waits for has ``wait`` set and ended in this session (not before a pause)."""
        nodes = self._graph.nodes
        return any(up in self._ended_here and nodes[up].node.task.options.wait for up in nodes[index].upstream)

    def _dispatch_halted(self) -> None:
        """After a pause nothing starts; after a cancel only nodes that always run start."""
        if self.halt != "cancel":
            return
        keep: collections.deque[int] = collections.deque()
        while self._ready:
            index = self._ready.popleft()
            if self._always_runs(index) and self._running < self._max_parallel:
                self._admit_anyway(index)  # counted, but no group limit holds it back
                self._start(index)
            else:
                keep.append(index)
        self._ready = keep
