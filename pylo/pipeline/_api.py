"""The pipeline methods of ``Pylo``: run, resume and read pipeline runs.

``Pylo`` inherits :class:`PipelineMethods`; the work happens in functions
below that import the coordinator lazily, so ``import pylo`` stays light.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pylo._codec import short_repr

if TYPE_CHECKING:
    from pylo._codec import Codec
    from pylo.execution import Pylo
    from pylo.pipeline._builder import Pipeline
    from pylo.pipeline._graph import Graph
    from pylo.pipeline._host import Host
    from pylo.pipeline._records import NodeRecord, PipelineRecord, PipelineStatus
    from pylo.pipeline._run_environment import RunEnvironment
    from pylo.stores.runs import NodeRow, RunRow

__all__ = ["PipelineMethods"]

logger = logging.getLogger(__name__)

# Ids of the runs this process is running now: a live run vs one left by a dead process with our pid.
_RUNNING_HERE: set[str] = set()
_RUNNING_LOCK = threading.Lock()


class PipelineMethods:
    """Pipeline runs on a ``Pylo``: the methods users call (see ``docs/pipelines.md``)."""

    def run_pipeline(
        self,
        pipeline: Pipeline | Sequence[Any],
        *,
        run_id: str | None = None,
        max_parallel: int | None = None,
        config: Any = None,
    ) -> str:
        """Run a pipeline (or a list of sinks) to its end, blocking; every node's outcome is durable.

        Args:
            pipeline: A pipeline, or a list of pipelines (several sinks; the
                result is then the list of their results).
            run_id: Your own id for the run (1-128 of ``[A-Za-z0-9._-]``), or None.
            max_parallel: Most nodes running at once (None: the Pylo's
                number of workers).
            config: The run's configuration, what ``with_context`` tasks
                read as ``context.config``: a mapping, a path (``.json``,
                ``.toml``, ``.yml``/``.yaml``, or a registered suffix), an
                ``env://PREFIX_`` or registered ``scheme://`` address, a
                ``Secret(...)``, or a list of them merged in order. It is
                stored with the run, secret values left out (see
                ``docs/task-environment.md``).

        Returns:
            The run id, also when the run failed (``get_pipeline_result``
            raises ``PipelineFailed`` then).

        Raises:
            PipelineCycleError: The dependencies form a cycle (nothing is recorded).
            PipelineValidationError: The pipeline cannot run as described,
                or its tasks' rate limits conflict (nothing is recorded).
            ConfigError: A configuration source cannot be loaded (nothing is recorded).
            PipelineExists: ``run_id`` is taken in this store.
            TypeError, ValueError: Bad arguments.
            KeyboardInterrupt, SystemExit: Re-raised after the outcomes so far
                are recorded and the run is marked ``interrupted``.
            StoreError: The store could not be written.
        """
        return _run(
            self._pylo_self(), pipeline, run_id=run_id, max_parallel=max_parallel, parent_id=None, config=config
        )

    def resume_pipeline(
        self,
        run_id: str,
        pipeline: Pipeline | Sequence[Any],
        *,
        new_run_id: str | None = None,
        max_parallel: int | None = None,
        config: Any = None,
    ) -> str:
        """Run the (fixed) pipeline again, rerunning only what did not finish in run ``run_id``.

        Nodes whose key was ``done`` in that run keep its result and do not
        run; every other node runs (softly failed and skipped ones too); a
        batch node resumes its execution, so only its unfinished inputs run.
        The old run is left as it was.

        The resume runs with the configuration stored with run ``run_id``
        (its secret sources loaded again), so the nodes that run again see
        what the finished ones saw. A ``config`` given here is only compared
        with it: what differs is logged as a warning and kept in the new
        run's :attr:`~pylo.pipeline.PipelineRecord.config_changes`.

        Returns:
            The new run's id (its ``parent_id`` is ``run_id``).

        Raises:
            PipelineNotFound: No run ``run_id``.
            PipelineNotResumable: It is still running in a live process here.
            ConfigError: A secret source of the run cannot be resolved again.
            And what :meth:`run_pipeline` raises.
        """
        return _run(
            self._pylo_self(), pipeline, run_id=new_run_id, max_parallel=max_parallel, parent_id=run_id, config=config
        )

    def get_pipeline(self, run_id: str) -> PipelineRecord:
        """Return a run's record: status, lineage, times and every node.

        Raises:
            PipelineNotFound: No such run.
            StoreError: The store cannot be read.
        """
        return _read_record(self._pylo_self(), run_id)

    def list_pipelines(self) -> list[PipelineRecord]:
        """Return every run in the store, oldest first.

        Node failures carry their text; their ``exception`` is a
        :class:`~pylo.errors.StoredTaskError` stand-in (``get_pipeline``
        rebuilds the exception objects).
        """
        return _list_records(self._pylo_self())

    def get_pipeline_result(self, run_id: str) -> Any:
        """Return a completed run's result: the sink's, or a list for several sinks and groups.

        A softly failed or skipped sink gives None.

        Raises:
            PipelineFailed: The run failed; ``.failures`` holds the failed nodes.
            PipelineNotCompleted: The run is running, interrupted or crashed.
            PipelineNotFound: No such run.
        """
        return _result(self._pylo_self(), run_id)

    def _pylo_self(self) -> Pylo:
        return self  # type: ignore[return-value]  # only Pylo inherits this mixin


# -- running --------------------------------------------------------------------


def _check_max_parallel(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_parallel must be an int >= 1, got {type(value).__name__} {short_repr(value)}")
    if value < 1:
        raise ValueError(f"max_parallel must be >= 1, got {value}")
    return value


def _run_name(graph: Graph) -> str:
    names: list[str] = []
    stack = [graph.shape]
    by_key = {node.key: node.node.task.display_name for node in graph.nodes}
    while stack and len(names) < 4:
        shape = stack.pop(0)
        if "node" in shape:
            names.append(by_key[shape["node"]])
        else:
            stack = list(shape["group"]) + stack
    if not names:
        return "empty pipeline"
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _run(
    pylo: Pylo,
    pipeline: Pipeline | Sequence[Any],
    *,
    run_id: str | None,
    max_parallel: int | None,
    parent_id: str | None,
    config: Any = None,
    child_of: dict[str, str] | None = None,
) -> str:
    from pylo.pipeline._graph import build_graph
    from pylo.pipeline._host import Host
    from pylo.pipeline._run_environment import RunEnvironment

    host = Host(pylo)
    if parent_id is not None:
        parent_id = host.check_id("run_id", parent_id)
    graph = build_graph(pipeline)  # validation and cycles: before anything is recorded
    limit = _check_max_parallel(max_parallel, host.workers)
    new_id = host.new_id() if run_id is None else host.check_id("run_id", run_id)
    runs = host.runs()
    codec = host.codec
    tasks = [node.node.task for node in graph.nodes]
    if parent_id is None:
        environment = RunEnvironment.fresh(tasks, config)
        rows = _fresh_rows(graph)
        values: list[Any] = [None] * len(rows)
        lineage: dict[int, str] = {}
    else:
        parent = runs.get_run(parent_id)
        if parent.status == "running" and not _is_gone(host, parent):
            from pylo.pipeline._errors import PipelineNotResumable

            if parent.host == socket.gethostname():
                raise PipelineNotResumable(
                    f"pipeline run {parent_id!r} is still running (process {parent.pid}); "
                    "wait for it to end or stop it before resuming"
                )
            logger.warning(
                "resuming pipeline run %s, marked running on host %s: make sure it is not", parent_id, parent.host
            )
        environment = RunEnvironment.resumed(tasks, parent.options.get("config"), config, parent_id)
        codec = host.codec_named(parent.codec, parent_id)
        rows, values, lineage = _resumed_rows(host, graph, parent, runs.read_nodes(parent_id), codec)
    now = time.time()
    from pylo.stores.runs import RunRow

    run = RunRow(
        id=new_id,
        parent_id=parent_id,
        name=_run_name(graph),
        status="running",
        created_at=now,
        updated_at=now,
        ended_at=None,
        codec=codec.name,
        pid=os.getpid(),
        host=socket.gethostname(),
        options={
            "max_parallel": limit,
            "flush": {"every": host.flush_every, "seconds": host.flush_seconds},
            "shape": graph.shape,
            "lineage": {graph.nodes[index].key: execution_id for index, execution_id in lineage.items()},
            "config": environment.stored_config,
            **({"config_changes": environment.changes} if environment.changes else {}),
            **({"child_of": child_of} if child_of else {}),
        },
    )
    with _RUNNING_LOCK:
        _RUNNING_HERE.add(new_id)
    try:
        with host.sigterm_as_system_exit():
            environment.open(new_id)  # its buckets: before the run is recorded, so a failure leaves no run
            runs.create_run(run, rows)
            _coordinate(host, new_id, graph, rows, values, lineage, limit, codec.name, environment)
    finally:
        environment.close()
        with _RUNNING_LOCK:
            _RUNNING_HERE.discard(new_id)
    return new_id


def _coordinate(
    host: Host,
    run_id: str,
    graph: Graph,
    rows: list[NodeRow],
    values: list[Any],
    lineage: dict[int, str],
    limit: int,
    codec_name: str,
    environment: RunEnvironment | None = None,
) -> None:
    from pylo.pipeline._coordinator import RunCoordinator

    RunCoordinator(
        host=host,
        runs=host.runs(),
        run_id=run_id,
        graph=graph,
        rows=rows,
        values=values,
        lineage=lineage,
        max_parallel=limit,
        codec_name=codec_name,
        environment=environment,
    ).run()


def _fresh_rows(graph: Graph) -> list[NodeRow]:
    from pylo.stores.runs import NodeRow

    nodes = graph.nodes
    return [
        NodeRow(
            key=node.key,
            seq=node.index,
            task_name=node.node.task.name,
            display_name=node.node.task.display_name,
            kind=node.node.kind,
            upstream=tuple(nodes[up].key for up in node.upstream),
        )
        for node in nodes
    ]


def _resumed_rows(
    host: Host, graph: Graph, parent: RunRow, parent_rows: list[NodeRow], codec: Codec
) -> tuple[list[NodeRow], list[Any], dict[int, str]]:
    """The new run's rows: the parent's ``done`` nodes copied (when all they wait for are too)."""
    import dataclasses

    from pylo.errors import StoreError
    from pylo.pipeline._batch import batch_execution_id, read_values
    from pylo.pipeline._builder import BATCH
    from pylo.pipeline._outcomes import recovered

    by_key = {row.key: row for row in parent_rows}
    past_lineage = dict(parent.options.get("lineage") or {})
    rows = _fresh_rows(graph)
    copied = [False] * len(rows)
    lineage: dict[int, str] = {}
    old_states = [by_key[n.key].state if n.key in by_key else "pending" for n in graph.nodes]
    # Kept as they ended: done nodes, pass-through skips (continue_if, exceptionally),
    # and failures an exceptionally recovered or return_exceptions made a value.
    keep = recovered(old_states, graph.nodes)
    for node in graph.nodes:
        index = node.index
        old = by_key.get(node.key)
        if (
            old is not None
            and (
                old.state == "done"
                or (old.state == "skipped" and old.result is not None)
                or (keep[index] and old.state in ("failed", "failed_dependency"))
            )
            and old.kind == node.node.kind
            and all(copied[up] for up in node.upstream)
        ):
            rows[index] = dataclasses.replace(
                old, seq=rows[index].seq, upstream=rows[index].upstream, task_name=rows[index].task_name,
                display_name=rows[index].display_name,
            )  # fmt: skip
            copied[index] = True
        elif old is not None and old.child_run_id is not None and old.result is not None:
            # Its task returned a pipeline that ran as a child run: resume that child, not the task.
            rows[index] = dataclasses.replace(rows[index], child_run_id=old.child_run_id, result=old.result)
        elif node.node.kind == BATCH:
            candidates = [
                batch_execution_id(parent.id, node.key),
                None if old is None else old.execution_id,
                past_lineage.get(node.key),
            ]
            for candidate in candidates:
                if candidate is not None and host.find_execution(candidate) is not None:
                    lineage[index] = candidate
                    break
    values: list[Any] = [None] * len(rows)
    for node in graph.nodes:
        index = node.index
        if copied[index] and not all(copied[d] for d in node.dependents):
            data = rows[index].result
            execution_id = rows[index].execution_id
            if rows[index].state in ("failed", "failed_dependency"):
                values[index] = _node_record(rows[index], codec).failure  # a recovered failure: its exception
                values[index] = None if values[index] is None else values[index].exception
                continue
            if data is None and execution_id is not None:
                values[index] = read_values(host, execution_id)  # a batch node's results
                continue
            try:
                values[index] = None if data is None else codec.decode_value(data)
            except Exception as exc:
                raise StoreError(
                    f"cannot decode the result of node {node.key!r} of pipeline run {parent.id!r} in the store "
                    f"at {host.location}: {type(exc).__name__}: {exc}"
                ) from exc
    return rows, values, lineage


# -- reading ----------------------------------------------------------------------


def _is_gone(host: Host, run: RunRow) -> bool:
    with _RUNNING_LOCK:
        here = run.id in _RUNNING_HERE
    return host.process_is_gone(run.pid, run.host, here)


def _status(host: Host, run: RunRow) -> PipelineStatus:
    from pylo.pipeline._records import PipelineStatus

    if run.status == "running" and _is_gone(host, run):
        return PipelineStatus.CRASHED
    try:
        return PipelineStatus(run.status)
    except ValueError:
        from pylo.errors import StoreError

        raise StoreError(
            f"pipeline run {run.id!r} in the store at {host.location} has unknown status {run.status!r}"
        ) from None


def _node_record(row: NodeRow, codec: Codec | None) -> NodeRecord:
    from pylo.errors import StoredTaskError
    from pylo.pipeline._records import NodeFailure, NodeRecord, TaskState
    from pylo.stores.base import utc_from_timestamp

    failure = None
    if row.exc_type is not None:
        exception: BaseException | None = None
        if row.exception is not None and codec is not None:
            try:
                exception = codec.decode_exception(row.exception)
            except Exception:
                logger.debug("cannot rebuild the stored %s of node %s", row.exc_type, row.key, exc_info=True)
        if exception is None:
            exception = StoredTaskError(row.exc_type, row.message or "", row.traceback or "")
        failure = NodeFailure(row.exc_type, row.message or "", row.traceback or "", exception, row.attempts)
    return NodeRecord(
        key=row.key,
        task_name=row.task_name,
        display_name=row.display_name,
        state=TaskState(row.state),
        attempts=row.attempts,
        started_at=utc_from_timestamp(row.started_at),
        ended_at=utc_from_timestamp(row.ended_at),
        failure=failure,
        execution_id=row.execution_id,
        child_run_id=row.child_run_id,
        kind=row.kind,
        upstream=tuple(row.upstream),
    )


def _record(host: Host, run: RunRow, rows: list[NodeRow], codec: Codec | None) -> PipelineRecord:
    from pylo.pipeline._records import PipelineRecord
    from pylo.stores.base import utc_from_timestamp

    created = utc_from_timestamp(run.created_at)
    assert created is not None
    return PipelineRecord(
        id=run.id,
        parent_id=run.parent_id,
        name=run.name,
        status=_status(host, run),
        created_at=created,
        ended_at=utc_from_timestamp(run.ended_at),
        nodes=[_node_record(row, codec) for row in rows],
        config=_stored_values(run),
        config_changes=tuple(str(line) for line in run.options.get("config_changes") or ()),
    )


def _stored_values(run: RunRow) -> dict[str, Any]:
    """The configuration stored with a run, secret values left out (a run from before configurations: {})."""
    stored = run.options.get("config")
    values = stored.get("values") if isinstance(stored, dict) else None
    return values if isinstance(values, dict) else {}


def _read_record(pylo: Pylo, run_id: str) -> PipelineRecord:
    from pylo.pipeline._host import Host

    host = Host(pylo)
    runs = host.runs()
    run = runs.get_run(host.check_id("run_id", run_id))
    codec = host.codec_named(run.codec, run.id)
    return _record(host, run, runs.read_nodes(run.id), codec)


def _list_records(pylo: Pylo) -> list[PipelineRecord]:
    from pylo.pipeline._host import Host

    host = Host(pylo)
    runs = host.runs()
    return [_record(host, run, runs.read_nodes(run.id, results=False), None) for run in runs.list_runs()]


def _result(pylo: Pylo, run_id: str, with_state: bool = False) -> Any:
    from pylo.errors import PipelineFailed, StoreError
    from pylo.pipeline._batch import read_values
    from pylo.pipeline._errors import PipelineNotCompleted
    from pylo.pipeline._graph import result_from_shape
    from pylo.pipeline._host import Host
    from pylo.pipeline._outcomes import unwrap_state
    from pylo.pipeline._records import PipelineStatus

    host = Host(pylo)
    runs = host.runs()
    run = runs.get_run(host.check_id("run_id", run_id))
    status = _status(host, run)
    codec = host.codec_named(run.codec, run.id)
    if status is PipelineStatus.FAILED:
        rows = runs.read_nodes(run.id)
        failed = [_node_record(row, codec) for row in rows if row.state == "failed"]
        raise PipelineFailed(run.id, failed)
    if status is not PipelineStatus.COMPLETED:
        raise PipelineNotCompleted(run.id, status.value)
    shape = run.options.get("shape")
    if not isinstance(shape, dict):
        raise StoreError(f"pipeline run {run.id!r} in the store at {host.location} has no result shape")
    by_key = {row.key: row for row in runs.read_nodes(run.id)}
    states: list[tuple[str, Any]] = []

    def value_of_key(key: str) -> Any:
        row = by_key.get(key)
        if row is None:
            raise StoreError(f"pipeline run {run.id!r} in the store at {host.location} has lost node {key!r}")
        if row.state == "failed":
            # A completed run keeps a failed sink only as a value: in_parallel(return_exceptions=True).
            return _node_record(row, codec).failure.exception  # type: ignore[union-attr]
        if row.state != "done" and (row.state != "skipped" or row.result is None):
            return None  # a softly failed or skipped sink (continue_if and exceptionally pass a value on)
        if row.result is None:
            # A batch node's results stay in its execution.
            return None if row.execution_id is None else read_values(host, row.execution_id)
        try:
            value, state = unwrap_state(codec.decode_value(row.result))
        except Exception as exc:
            raise StoreError(
                f"cannot decode the result of node {key!r} of pipeline run {run.id!r} in the store at "
                f"{host.location}: {type(exc).__name__}: {exc}"
            ) from exc

        states.append((row.display_name, state))
        return value

    result = result_from_shape(shape, value_of_key)
    if with_state:
        from pylo.pipeline._outcomes import merge_states

        return result, merge_states(states)
    return result
