"""The run store protocol: how pipeline runs and their nodes are persisted.

A pipeline run is one :class:`RunRow` and a fixed set of :class:`NodeRow`\\ s,
one per task call of the pipeline, created together when the run starts.
Like executions, runs have exactly one writer (the pipeline coordinator of
the process that runs them) and any number of readers, in any process.

Every :class:`~pylo.stores.base.Store` hands out its run store through
:meth:`~pylo.stores.base.Store.runs`; the run store lives in the same
database or directory as the executions, so a batch node's execution and the
node that wraps it are kept side by side.

The rows hold only plain values: states are the ``str`` values of
``pylo.pipeline.TaskState`` and ``PipelineStatus``, results and exceptions
are opaque codec-encoded ``bytes``. Decoding is the pipeline layer's job.

Every run store must pass ``tests/stores/test_runs_contract.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONTROL_ACTIONS", "NodeRow", "RunRow", "RunStore", "RunUpdate"]

#: The control requests a run store keeps for a running run's coordinator.
CONTROL_ACTIONS = frozenset({"pause", "cancel"})


@dataclass(frozen=True, slots=True)
class RunRow:
    """One pipeline run, as kept by a store.

    Attributes:
        id: The run id (unique among the store's runs; runs and executions
            have separate namespaces).
        parent_id: The run this one resumed, or None.
        name: A human name for the run (the sink task's display name, or
            what the user gave).
        status: A ``PipelineStatus`` value (``"running"``, ``"completed"``...).
            ``"crashed"`` is never written: it is derived on read.
        created_at: POSIX time the run was created.
        updated_at: POSIX time of its last write (a heartbeat while running).
        ended_at: POSIX time it ended, or None while running or paused.
        codec: Name of the codec that encoded its results and exceptions.
        pid: Process id of the coordinator that runs or ran it.
        host: Host name of that process.
        options: JSON-serializable settings and metadata of the run
            (``max_parallel``, flush policy; later issues add configuration,
            trace ids and control requests under their own keys).
    """

    id: str
    parent_id: str | None
    name: str
    status: str
    created_at: float
    updated_at: float
    ended_at: float | None
    codec: str
    pid: int | None = None
    host: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


# Not frozen: a run makes two of these per node (created, then ended), and a
# frozen dataclass's __init__ costs several times a plain one's (each field
# goes through object.__setattr__), as much as a no-op node's whole call.
# Treated as immutable all the same: a change is a new row (dataclasses.replace),
# never an assignment, since the coordinator's pending update shares its rows.
@dataclass(slots=True, unsafe_hash=True)
class NodeRow:
    """One node (task call) of a run, as kept by a store; never changed in place (make a new one).

    Attributes:
        key: The node's key, unique within its run and stable across runs of
            the same pipeline (a resume matches nodes by key).
        seq: The node's place in the run's stable topological order, from 0.
        task_name: Qualified name of the task function (``module:qualname``).
        display_name: The task's ``display_name``, or its function's name.
        kind: ``"call"`` (one task call), ``"batch"`` (a task mapped over
            inputs: a pylo execution) or another kind a later layer adds.
        upstream: Keys of the nodes this node waits for, data and ordering
            dependencies alike, in declaration order.
        state: A ``TaskState`` value (``"pending"``, ``"done"``...).
        attempts: How many times its task was attempted (retries included).
        started_at: POSIX time it started, or None.
        ended_at: POSIX time it ended, or None.
        result: Codec-encoded result when ``state == "done"``, else None.
            A batch node keeps none: its results are its execution's
            (``execution_id``), not copied here. A node with a
            ``child_run_id`` that is not ``done`` keeps its child pipeline
            here (pickled), so a resume can resume the child run.
        exc_type: Qualified name of the failure's exception type, or None.
        message: ``str()`` of the exception, or None.
        traceback: Formatted traceback text, or None.
        exception: Codec-encoded exception object, or None when it could not
            be encoded (or there was no failure).
        execution_id: For a batch node, the id of the execution it ran.
        child_run_id: For a node whose task returned a pipeline, the child run.
    """

    key: str
    seq: int
    task_name: str
    display_name: str
    kind: str = "call"
    upstream: tuple[str, ...] = ()
    state: str = "pending"
    attempts: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    result: bytes | None = None
    exc_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    exception: bytes | None = None
    execution_id: str | None = None
    child_run_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunUpdate:
    """Everything one flush of a run makes durable, applied in one transaction.

    Attributes:
        nodes: New versions of the nodes that changed, in the order their
            changes happened. Each replaces the stored node with the same key
            whole (``seq``, ``task_name``, ``display_name``, ``kind`` and
            ``upstream`` never change after :meth:`RunStore.create_run`).
        status: A new run status, or None to keep the current one.
        ended_at: The end time to record with a final status, or None.
        options: Keys to merge into the run's ``options`` (None: no change).
    """

    nodes: Sequence[NodeRow] = ()
    status: str | None = None
    ended_at: float | None = None
    options: Mapping[str, Any] | None = None


class RunStore(abc.ABC):
    """Where pipeline runs are persisted, next to a store's executions.

    Safe to use from several threads and processes at once, with a single
    writer per run. Methods raise :class:`~pylo.errors.StoreError` (naming the
    store's location) when the storage is damaged, foreign or cannot be
    written; never a bare driver, OS or ``KeyError`` exception. Reading a
    store that holds no runs yet (for example one written before pipelines
    existed) returns nothing and writes nothing.
    """

    #: Human-readable location (path or URL without password) for messages.
    location: str

    @abc.abstractmethod
    def create_run(self, run: RunRow, nodes: Sequence[NodeRow]) -> None:
        """Create a run and all of its nodes, atomically.

        Raises:
            PipelineExists: A run with ``run.id`` exists, even when another
                process created it a moment ago.
            ValueError: Two nodes share a key or a ``seq``.
        """

    @abc.abstractmethod
    def record_run(self, run_id: str, update: RunUpdate) -> None:
        """Apply one update atomically: node rows, then status, end time, options.

        Also sets ``updated_at`` to now. After a crash at any point a reader
        sees all of the update or none of it.

        Raises:
            PipelineNotFound: No such run.
            StoreError: A node key in the update is not one of the run's.
        """

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunRow:
        """Return the run's row as of its last completed write.

        Raises:
            PipelineNotFound: No such run.
        """

    @abc.abstractmethod
    def list_runs(self) -> list[RunRow]:
        """Return every run, oldest (by ``created_at``, then id) first."""

    @abc.abstractmethod
    def read_nodes(self, run_id: str, *, results: bool = True) -> list[NodeRow]:
        """Return the run's nodes in ``seq`` order.

        Args:
            run_id: The run.
            results: When False, ``result`` and ``exception`` are None in the
                rows returned (cheap: states and failure text only).

        Raises:
            PipelineNotFound: No such run.
        """

    # -- control requests (pause, cancel) -------------------------------------------

    def request_control(self, run_id: str, action: str | None) -> None:
        """Record a control request for the run's coordinator, from any thread or process.

        The request replaces an earlier one (``cancel`` after ``pause``
        wins); ``None`` clears it (the coordinator does, when it takes a
        run up again). It is not one of the run's writes: the coordinator
        stays the one writer of rows and status, and only reads this.

        The default keeps it under the ``"control"`` key of the run's
        ``options`` (one read-modify-write transaction); a store whose
        writes cannot come from two processes at once overrides both methods.

        Raises:
            PipelineNotFound: No such run.
            ValueError: ``action`` is not ``"pause"``, ``"cancel"`` or None.
        """
        check_control(action)
        self.record_run(run_id, RunUpdate(options={"control": action}))

    def read_control(self, run_id: str) -> str | None:
        """The pending control request of the run (``"pause"``, ``"cancel"``), or None; cheap.

        Raises:
            PipelineNotFound: No such run.
        """
        action = self.get_run(run_id).options.get("control")
        return action if action in CONTROL_ACTIONS else None

    # -- statistics -----------------------------------------------------------------

    def node_durations(self, keys: Sequence[str], *, recent: int = 5) -> dict[str, list[float]]:
        """Seconds that nodes with these keys took when they ended ``done``, newest run first.

        Reads only the ``recent`` most recently created runs (bounded, not
        every run's every node); a key absent from them is absent here.
        The default lists the runs and reads their nodes without results;
        a store that can select by key in one query overrides it.
        """
        wanted = frozenset(keys)
        found: dict[str, list[float]] = {}
        if not wanted or recent <= 0:
            return found
        for run in reversed(self.list_runs()[-recent:]):
            _durations_from(self.read_nodes(run.id, results=False), wanted, found)
        return found


def check_control(action: str | None) -> None:
    """Raise ValueError unless ``action`` is a control request or None."""
    if action is not None and action not in CONTROL_ACTIONS:
        raise ValueError(f"control request must be one of {sorted(CONTROL_ACTIONS)} or None, got {action!r}")


def _durations_from(rows: Sequence[NodeRow], wanted: frozenset[str], found: dict[str, list[float]]) -> None:
    for row in rows:
        if row.key in wanted and row.state == "done" and row.started_at is not None and row.ended_at is not None:
            found.setdefault(row.key, []).append(max(0.0, row.ended_at - row.started_at))
