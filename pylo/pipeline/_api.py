"""The pipeline methods of ``Pylo``: run, resume and read pipeline runs.

``Pylo`` inherits :class:`PipelineMethods`; the work happens in functions
below that import the coordinator lazily, so ``import pylo`` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pylo._codec import short_repr
from pylo.pipeline._reading import (
    list_records,
    read_record,
    read_result,
    run_is_gone,
    running_here,
)

if TYPE_CHECKING:
    from pylo._codec import Codec
    from pylo.execution import Pylo
    from pylo.pipeline._builder import Pipeline
    from pylo.pipeline._graph import Graph
    from pylo.pipeline._host import Host
    from pylo.pipeline._records import PipelineRecord
    from pylo.pipeline._run_environment import RunEnvironment
    from pylo.stores.runs import NodeRow, RunRow

__all__ = ["PipelineMethods"]

logger = logging.getLogger(__name__)


class PipelineMethods:
    """Pipeline runs on a ``Pylo``: the methods users call (see ``docs/pipelines.md``)."""

    def run_pipeline(
        self,
        pipeline: Pipeline | Sequence[Any],
        *,
        run_id: str | None = None,
        max_parallel: int | None = None,
        config: Any = None,
        hooks: Sequence[Any] = (),
    ) -> str:
        """Run a pipeline (or a list of sinks) to its end, blocking; every node's outcome is durable.

        Args:
            pipeline: A pipeline, or a list of pipelines (several sinks; the
                result is then the list of their results).
            run_id: Your own id for the run (1-128 of ``[A-Za-z0-9._-]``), or None.
            max_parallel: Most nodes running at once (None: the Pylo's
                number of workers).
            hooks: Objects told about the run as it goes (see
                :mod:`pylo.pipeline.hooks`); one that raises cancels the run.
            config: The run's configuration, what ``with_context`` tasks
                read as ``context.config``: a mapping, a path (``.json``,
                ``.toml``, ``.yml``/``.yaml``, or a registered suffix), an
                ``env://PREFIX_`` or registered ``scheme://`` address, a
                ``Secret(...)``, or a list of them merged in order. It is
                stored with the run, secret values left out (see
                ``docs/task-environment.md``).

        Returns:
            The run id, also when the run failed, was paused or cancelled (``get_pipeline_result``
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
            self._pylo_self(), pipeline, run_id=run_id, max_parallel=max_parallel, parent_id=None, config=config,
            hooks=hooks,
        )  # fmt: skip

    def resume_pipeline(
        self,
        run_id: str,
        pipeline: Pipeline | Sequence[Any],
        *,
        new_run_id: str | None = None,
        max_parallel: int | None = None,
        config: Any = None,
        hooks: Sequence[Any] = (),
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
            self._pylo_self(), pipeline, run_id=new_run_id, max_parallel=max_parallel, parent_id=run_id, config=config,
            hooks=hooks,
        )  # fmt: skip

    def pause_pipeline(self, run_id: str) -> None:
        """Ask a running run to pause, from any thread or process; returns at once.

        Its coordinator starts nothing more, lets running nodes finish (a
        batch node stops taking inputs, resumably), and ends the run
        ``paused``; ``run_pipeline`` returns. Pausing a paused run does nothing.

        Raises:
            PipelineControlError: The run is neither running nor paused.
            PipelineNotFound: No such run.
        """
        from pylo.pipeline._control import request

        request(self._pylo_self(), run_id, "pause")

    def unpause_pipeline(
        self, run_id: str, pipeline: Pipeline | Sequence[Any], *, max_parallel: int | None = None,
        hooks: Sequence[Any] = (),
    ) -> str:  # fmt: skip
        """Run a paused run on, under the same id, with the pipeline it was started with; blocking.

        Returns:
            ``run_id``.

        Raises:
            PipelineControlError: The run is not paused.
            PipelineValidationError: ``pipeline`` does not have the run's nodes.
        """
        from pylo.pipeline._control import unpause

        return unpause(self._pylo_self(), run_id, pipeline, max_parallel, hooks)

    def cancel_pipeline(
        self, run_id: str, pipeline: Pipeline | Sequence[Any] | None = None, *, hooks: Sequence[Any] = ()
    ) -> None:
        """Cancel a running or paused run, from any thread or process.

        A running run: the request is recorded and this returns at once;
        its coordinator starts nothing new but ``finally_do`` nodes, running
        batch nodes stop taking inputs, every node that did not end is
        ``cancelled`` and the run ends ``cancelled``.

        A paused run has no coordinator. With no ``finally_do`` left to run
        it is cancelled here and now. With one, give ``pipeline`` (the one
        the run was started with, as for ``unpause_pipeline``): this call
        then runs the run on under its id, blocking, starting only its
        ``finally_do`` nodes (each once; ``hooks`` hear it), and the run
        ends ``cancelled``. The same finishes a cancel whose process died
        while ``finally_do`` ran (the run is ``crashed`` or ``interrupted``):
        a ``finally_do`` recorded ``done`` does not run again.

        Args:
            run_id: The run.
            pipeline: The run's pipeline; needed only to cancel a paused run
                that has a ``finally_do`` (ignored for a running run).
            hooks: Told about the run while a cancel runs its ``finally_do``.

        Raises:
            PipelineControlError: The run is neither running nor paused (nor
                a cancel under way), or it is paused with a ``finally_do`` to
                run and no ``pipeline`` was given.
            PipelineValidationError: ``pipeline`` does not have the run's nodes.
            PipelineNotFound: No such run.
        """
        from pylo.pipeline._control import request

        request(self._pylo_self(), run_id, "cancel", pipeline, hooks)

    def get_pipeline(self, run_id: str) -> PipelineRecord:
        """Return a run's record: status, lineage, times and every node.

        Raises:
            PipelineNotFound: No such run.
            StoreError: The store cannot be read.
        """
        return read_record(self._pylo_self(), run_id)

    def list_pipelines(self) -> list[PipelineRecord]:
        """Return every run in the store, oldest first.

        Node failures carry their text; their ``exception`` is a
        :class:`~pylo.errors.StoredTaskError` stand-in (``get_pipeline``
        rebuilds the exception objects).
        """
        return list_records(self._pylo_self())

    def get_pipeline_result(self, run_id: str) -> Any:
        """Return a completed run's result: the sink's, or a list for several sinks and groups.

        A softly failed or skipped sink gives None.

        Raises:
            PipelineFailed: The run failed; ``.failures`` holds the failed nodes.
            PipelineNotCompleted: The run is running, interrupted or crashed.
            PipelineNotFound: No such run.
        """
        return read_result(self._pylo_self(), run_id)

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
    hooks: Sequence[Any] = (),
    inherit: RunEnvironment | None = None,
    parent_halt: Callable[[], str | None] | None = None,
) -> str:
    from pylo.pipeline._builder import FINALLY
    from pylo.pipeline._graph import build_graph
    from pylo.pipeline._host import Host
    from pylo.pipeline._run_environment import RunEnvironment
    from pylo.pipeline.hooks import HookDispatcher

    host = Host(pylo)
    HookDispatcher(hooks)  # a bad hook is refused before anything is recorded
    if parent_id is not None:
        parent_id = host.check_id("run_id", parent_id)
    graph = build_graph(pipeline)  # validation and cycles: before anything is recorded
    limit = _check_max_parallel(max_parallel, host.workers)
    new_id = host.new_id() if run_id is None else host.check_id("run_id", run_id)
    runs = host.runs()
    codec = host.codec
    tasks = [node.node.task for node in graph.nodes]
    if parent_id is None:
        environment = RunEnvironment.fresh(tasks, config) if inherit is None else inherit.for_child(tasks)
        rows = _fresh_rows(graph)
        values: list[Any] = [None] * len(rows)
        lineage: dict[int, str] = {}
    else:
        parent = runs.get_run(parent_id)
        if parent.status == "running" and not run_is_gone(host, parent):
            from pylo.pipeline._errors import PipelineNotResumable

            if parent.host == socket.gethostname():
                raise PipelineNotResumable(
                    f"pipeline run {parent_id!r} is still running (process {parent.pid}); "
                    "wait for it to end or stop it before resuming"
                )
            logger.warning(
                "resuming pipeline run %s, marked running on host %s: make sure it is not", parent_id, parent.host
            )
        if inherit is None:
            environment = RunEnvironment.resumed(tasks, parent.options.get("config"), config, parent_id)
        else:  # a child run resumed by its parent's resume: the parent's environment, as a new child's
            environment = inherit.for_child(tasks)
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
            # finally_do nodes: a cancel of the run while no coordinator holds it must run them.
            "finally": [node.key for node in graph.nodes if node.node.handler == FINALLY],
            **({"config_changes": environment.changes} if environment.changes else {}),
            **({"child_of": child_of} if child_of else {}),
        },
    )
    with running_here(new_id):
        try:
            with host.sigterm_as_system_exit():
                environment.open(new_id)  # its buckets: before the run is recorded, so a failure leaves no run
                runs.create_run(run, rows)
                _coordinate(
                    host, new_id, graph, rows, values, lineage, limit, codec.name, environment,
                    hooks=hooks, name=run.name,
                    parent_trace=None if parent_id is None else parent.options.get("trace"),
                    parent_halt=parent_halt, fresh=True,
                )  # fmt: skip
        finally:
            environment.close()
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
    *,
    execution_prefix: str | None = None,
    hooks: Sequence[Any] = (),
    name: str = "",
    parent_trace: Any = None,
    parent_halt: Callable[[], str | None] | None = None,
    fresh: bool = False,
) -> None:
    from pylo.pipeline._control import CONTROL_SECONDS, cancel_here, forget, reader
    from pylo.pipeline._coordinator import RunCoordinator
    from pylo.pipeline._tracing import chain, start_run_tracer
    from pylo.pipeline.hooks import HookDispatcher, RunEvents
    from pylo.stores.runs import RunUpdate

    runs = host.runs()
    dispatcher = HookDispatcher(hooks, on_failure=lambda: cancel_here(runs, run_id))
    tracer = start_run_tracer(run_id, name or run_id, rows, parent_trace, host.find_execution)
    if tracer is not None and tracer.ids is not None:
        runs.record_run(run_id, RunUpdate(options={"trace": tracer.ids}))
        if environment is not None:
            environment.trace_id = tracer.trace_id  # reaches with_context tasks as TaskContext.trace_id
    events = RunEvents(dispatcher, run_id, rows, None if tracer is None else tracer.trace_id) if hooks else None

    coordinator = RunCoordinator(
        host=host,
        runs=runs,
        run_id=run_id,
        graph=graph,
        rows=rows,
        values=values,
        lineage=lineage,
        max_parallel=limit,
        codec_name=codec_name,
        on_event=chain(tracer, events),
        control=_control_of(lambda in_store: read_control(in_store), parent_halt),
        control_seconds=CONTROL_SECONDS,
        execution_prefix=execution_prefix,
        priorities=lambda: _priorities(runs, graph),
        environment=environment,
        node_context=_node_context(graph, tracer, events),
        hooks=tuple(hooks),
        fresh=fresh,
    )
    read_control = reader(runs, run_id, coordinator.stop)
    if events is not None:
        events.run_event("pipeline_started", "running")
    status = None
    try:
        status = coordinator.run()
    finally:
        forget(run_id)
        if tracer is not None:
            tracer.end("interrupted" if status is None else status.value)
        dispatcher.close()
    if dispatcher.error is not None:
        error = dispatcher.error
        runs.record_run(run_id, RunUpdate(options={"hook_error": f"{type(error).__name__}: {error}"}))
    if coordinator.halt is not None and dispatcher.error is None:
        runs.request_control(run_id, None)  # taken up: an unpause starts clean
    if events is not None:
        events.run_event("pipeline_status_changed", status.value)
        events.run_event("pipeline_finished", status.value)
        dispatcher.close()


def _control_of(
    read_control: Callable[[bool], str | None], parent_halt: Callable[[], str | None] | None
) -> Callable[[bool], str | None]:
    """A run's control: its own requests; a child run's also follows its parent run.

    A child run is cancelled with its parent run and ends interrupted when
    its parent was interrupted (``PARENT_INTERRUPTED``); a parent's pause
    lets it end, as any running node.
    """
    if parent_halt is None:
        return read_control

    def control(in_store: bool) -> str | None:
        from pylo.pipeline._halting import PARENT_INTERRUPTED

        parent = parent_halt()
        if parent == "interrupt":
            return PARENT_INTERRUPTED
        return read_control(in_store) or ("cancel" if parent == "cancel" else None)

    return control


def _node_context(graph: Graph, tracer: Any, events: Any) -> Any:
    """What each node's thread enters around its work: the node's span, and a batch node's input progress."""
    from pylo.pipeline._builder import BATCH

    batch = set() if events is None else {node.index for node in graph.nodes if node.node.kind == BATCH}
    if not batch:
        return None if tracer is None else tracer.node_context

    def context(index: int) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if tracer is not None:
            stack.enter_context(tracer.node_context(index))
        if index in batch:
            stack.enter_context(events.progress_context(index))
        return stack

    return context


def _priorities(runs: Any, graph: Graph) -> list[float] | None:
    from pylo.pipeline._priority import priorities

    return priorities(runs, graph)


def _fresh_rows(graph: Graph) -> list[NodeRow]:
    from pylo.stores.runs import NodeRow

    nodes = graph.nodes
    rows = []
    for node in nodes:
        task = node.node.task
        upstream = tuple([nodes[up].key for up in node.upstream]) if node.upstream else ()
        rows.append(NodeRow(node.key, node.index, task.name, task.display_name, node.node.kind, upstream))
    return rows


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
                values[index] = _kept_failure(rows[index], codec)  # a recovered failure: its exception
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


def _kept_failure(row: NodeRow, codec: Codec) -> Any:
    """A kept failure's value: its exception as the run built it, with the state it carried beside it."""
    from pylo.pipeline._outcomes import member_exception, unwrap_state, wrap_state

    if row.exc_type is None:
        return None
    value = member_exception(row.exc_type, row.message, row.traceback, row.exception, codec)
    state = None
    if row.result is not None and row.child_run_id is None:
        try:
            state = unwrap_state(codec.decode_value(row.result))[1]
        except Exception:
            state = None
    return wrap_state(value, state)


# -- reading ----------------------------------------------------------------------
