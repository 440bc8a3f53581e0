"""The recording half of the run coordinator: changed rows, kept in order, written by the flush policy.

:class:`RunRecording` is mixed into ``RunCoordinator`` and runs on the
coordinator's thread only (the store's one writer for the run). ``_note``
keeps the latest version of each changed row, moved to the end, so an
update lists changes in the order outcomes were applied; ``_flush`` writes
them in one ``RunStore.record_run``, with the ``running`` rows of nodes
still running (a short node that ended before a flush costs one row, not
two). The coordinator's loop decides when (every N outcomes or T seconds,
and at the end).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from pylo.pipeline._batch import batch_execution_id
from pylo.pipeline._builder import BATCH
from pylo.stores.runs import NodeRow, RunUpdate

if TYPE_CHECKING:
    from pylo.pipeline._graph import Graph
    from pylo.stores.runs import RunStore

__all__ = ["RunRecording", "next_version", "with_state"]

_RUNNING = "running"


class RunRecording:
    """Rows changed since the last flush, and the flush (a mixin; see the module docstring)."""

    _graph: Graph
    _rows: list[NodeRow]
    _runs: RunStore
    _run_id: str
    _prefix: str
    _changed: dict[str, NodeRow]
    _started: dict[int, float]
    _unwritten_starts: int
    _outcomes_since_flush: int
    _last_flush: float
    _flush_seconds: float

    def _flush_due_by_time(self) -> bool:
        """True when rows wait to be written and ``flush_seconds`` have passed since the last flush."""
        return (
            bool(self._changed or self._unwritten_starts) and time.monotonic() - self._last_flush >= self._flush_seconds
        )

    def _note(self, index: int, row: NodeRow) -> None:
        self._rows[index] = row
        # Latest version only, moved to the end: the update lists changes in order.
        self._changed.pop(row.key, None)
        self._changed[row.key] = row

    def _flush(self, status: str | None = None, ended_at: float | None = None) -> None:
        for index, started_at in self._started.items():
            row = self._rows[index]
            if row.state != _RUNNING:
                node = self._graph.nodes[index].node
                execution_id = batch_execution_id(self._prefix, row.key) if node.kind == BATCH else None
                running = with_state(row, _RUNNING, started_at, None)
                self._note(index, dataclasses.replace(running, execution_id=execution_id, attempts=0))
        update = RunUpdate(nodes=list(self._changed.values()), status=status, ended_at=ended_at)
        self._runs.record_run(self._run_id, update)
        self._changed.clear()
        self._unwritten_starts = 0
        self._outcomes_since_flush = 0
        self._last_flush = time.monotonic()


def with_state(row: NodeRow, state: str, started_at: float | None, ended_at: float | None) -> NodeRow:
    """``row`` in a new state, without its result or failure (a node that did not end ``done``).

    A node that started a child run keeps it, and its pickled pipeline, so a resume resumes the child.
    """
    result = row.result if row.child_run_id else None
    return next_version(
        row, state, row.attempts, started_at, ended_at, result, None, None, None, None, row.execution_id
    )


def next_version(
    row: NodeRow,
    state: str,
    attempts: int,
    started_at: float | None,
    ended_at: float | None,
    result: bytes | None,
    exc_type: str | None,
    message: str | None,
    traceback: str | None,
    exception: bytes | None,
    execution_id: str | None,
) -> NodeRow:
    """``row`` with what a run changes; what ``create_run`` fixed (key, seq, names, kind, upstream) kept.

    Built by position: made once per node, where keywords and ``dataclasses.replace`` cost more.
    """
    return NodeRow(
        row.key, row.seq, row.task_name, row.display_name, row.kind, row.upstream, state, attempts,
        started_at, ended_at, result, exc_type, message, traceback, exception, execution_id, row.child_run_id,
    )  # fmt: skip
