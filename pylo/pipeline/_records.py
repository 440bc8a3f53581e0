"""What users read about pipeline runs: states, statuses and records.

These are decoded views of the rows a run store keeps
(:mod:`pylo.stores.runs`); the store holds plain values, these hold enums,
datetimes and rebuilt exceptions.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NodeFailure", "NodeRecord", "PipelineRecord", "PipelineStatus", "TaskState"]


class TaskState(str, enum.Enum):
    """Where one node of a run is.

    ``DONE``, ``FAILED``, ``FAILED_SOFTLY``, ``FAILED_DEPENDENCY``, ``SKIPPED``
    and ``CANCELLED`` are final for the run; a resume reruns every node that
    is not ``DONE``.
    """

    #: Not started yet.
    PENDING = "pending"
    #: Started, not ended.
    RUNNING = "running"
    #: Its task returned; its result is stored.
    DONE = "done"
    #: Its task raised (after retries).
    FAILED = "failed"
    #: Its task raised with ``fail_softly=True``, or an upstream node failed
    #: softly and ``propagate_soft_failures=True`` (it did not run).
    FAILED_SOFTLY = "failed_softly"
    #: An upstream node failed; it did not run.
    FAILED_DEPENDENCY = "failed_dependency"
    #: Its task raised with ``skippable=True`` (result None), or a rule
    #: skipped it; downstream nodes run.
    SKIPPED = "skipped"
    #: The run was cancelled before the node ended.
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """True for every state but ``PENDING`` and ``RUNNING``."""
        return self not in (TaskState.PENDING, TaskState.RUNNING)


class PipelineStatus(str, enum.Enum):
    """Where a run is in its life.

    ``CRASHED`` is never written: it is reported for a ``RUNNING`` run whose
    process on this machine is known to be gone.
    """

    RUNNING = "running"
    #: No node is ``failed`` or ``failed_dependency``.
    COMPLETED = "completed"
    #: Some node is ``failed`` or ``failed_dependency``.
    FAILED = "failed"
    #: Paused on request: no node runs; it can be unpaused.
    PAUSED = "paused"
    #: Cancelled on request.
    CANCELLED = "cancelled"
    #: Ctrl-C, SIGTERM, SystemExit or another BaseException ended it early.
    INTERRUPTED = "interrupted"
    #: Its process died without a word (for example SIGKILL); derived on read.
    CRASHED = "crashed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class NodeFailure:
    """Why a node failed.

    Attributes:
        exception_type: Qualified name of the exception type.
        message: ``str()`` of the exception.
        traceback: The formatted traceback text.
        exception: The exception object when it could be stored and rebuilt,
            else a :class:`~pylo.errors.StoredTaskError` standing in for it.
        attempts: How many times the task was attempted.
    """

    exception_type: str
    message: str
    traceback: str
    exception: BaseException | None
    attempts: int


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node (task call) of a run.

    Attributes:
        key: Stable across runs of the same pipeline: the task's ``task_id``,
            or derived from the task's name and its place in the graph.
        task_name: Qualified name of the task function (``module:qualname``).
        display_name: The task's ``display_name``, or its function's name.
        state: See :class:`TaskState`.
        attempts: How many times its task was attempted (retries included).
        started_at: When it started (aware UTC), or None.
        ended_at: When it ended (aware UTC), or None.
        failure: Why it failed, or None.
        execution_id: For a batch node (``task.map``), the pylo execution it
            ran; ``pylo failures ID`` and ``Pylo.get_failures`` read it.
        child_run_id: For a node whose task returned a pipeline, the child run.
        kind: ``"call"`` or ``"batch"``.
        upstream: Keys of the nodes it waited for.
    """

    key: str
    task_name: str
    display_name: str
    state: TaskState
    attempts: int
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    failure: NodeFailure | None
    execution_id: str | None = None
    child_run_id: str | None = None
    kind: str = "call"
    upstream: tuple[str, ...] = ()

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, or None while either is unknown."""
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True, slots=True)
class PipelineRecord:
    """One pipeline run.

    Attributes:
        id: The run id.
        parent_id: The run this one resumed, or None.
        name: The run's name.
        status: See :class:`PipelineStatus`.
        created_at: When it was created (aware UTC).
        ended_at: When it ended (aware UTC), or None.
        nodes: Its nodes, in a stable topological order.
        config: The configuration stored with the run (``run_pipeline(config=...)``;
            a resume's is its parent's), secret values left out.
        config_changes: For a resume given ``config=``: how that differed
            from the run's own configuration, one line per key (secret
            values never shown); empty otherwise.
    """

    id: str
    parent_id: str | None
    name: str
    status: PipelineStatus
    created_at: dt.datetime
    ended_at: dt.datetime | None
    nodes: list[NodeRecord] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    config_changes: tuple[str, ...] = ()

    def node(self, key: str) -> NodeRecord:
        """Return the node with this key.

        Raises:
            KeyError: The run has no node ``key``.
        """
        for node in self.nodes:
            if node.key == key:
                return node
        raise KeyError(f"run {self.id!r} has no node {key!r}; its keys: {', '.join(n.key for n in self.nodes)}")
