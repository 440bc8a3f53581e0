"""Pause, unpause and cancel: control requests recorded in the store, taken up by the coordinator.

A request is one small write next to the run (``RunStore.request_control``)
that any thread or process may make; the run's coordinator, its one writer,
looks at it every ``CONTROL_SECONDS`` while nodes run (it wakes for that;
never a busy loop; a read of the store costs far more than starting a
node, so not before every start). A request made in the process that runs
the run is seen before the next node starts. Once taken up, the run's
``options["halt"]`` says so. Then:

- pause: starts nothing more; running call nodes finish, running batch nodes
  stop taking inputs (their execution ends ``stopped``, resumable) and go
  back to ``pending``; the run ends ``paused`` and ``run_pipeline`` returns.
  :func:`unpause` runs the same run id on from there.
- cancel: the same, but every node that did not end is ``cancelled``, nodes
  that always run (``finally_do``) still start, and the run ends ``cancelled``.

A paused run has no coordinator. Cancelling it is written directly when it
has no ``finally_do`` left to run (the run's ``options["finally"]`` names
them); otherwise the canceller must give the pipeline, and runs the run on
under the same id with the cancel already taken up (:func:`cancel_paused`),
so only the ``finally_do`` nodes start. The ``halt`` is recorded before
anything starts: if that process dies, the run (``crashed`` or
``interrupted``, with a cancel under way) can be cancelled again the same
way, and a ``finally_do`` recorded ``done`` does not run again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pylo.execution import Pylo
    from pylo.pipeline._builder import Pipeline
    from pylo.stores.runs import RunStore

__all__ = ["CONTROL_SECONDS", "cancel_here", "forget", "owner_of", "reader", "request", "unpause"]

_FINAL = frozenset({"done", "failed", "failed_softly", "failed_dependency", "skipped", "cancelled"})

logger = logging.getLogger(__name__)

#: Longest time between two looks of a running coordinator at its control request.
CONTROL_SECONDS = 0.2


def owner_of(options: Any) -> tuple[int | None, str | None] | None:
    """The process an unpaused run runs in (``options["owner"]``), or None for its creator."""
    owner = options.get("owner") if hasattr(options, "get") else None
    if not isinstance(owner, dict):
        return None
    pid, host = owner.get("pid"), owner.get("host")
    return (pid if isinstance(pid, int) else None, host if isinstance(host, str) else None)


# Requests for runs this process runs: seen at the coordinator's next round
# of starts, not after the next look in the store (they are recorded there too).
# A request made here also sets the run's stop event at once, so running
# batch nodes stop taking inputs without waiting for the coordinator to wake.
_HERE: dict[str, str] = {}
_STOPS: dict[str, threading.Event] = {}
_HERE_LOCK = threading.Lock()


def _note_here(run_id: str, action: str | None) -> None:
    with _HERE_LOCK:
        if action is None:
            _HERE.pop(run_id, None)
        elif _HERE.get(run_id) != "cancel":
            _HERE[run_id] = action
            stop = _STOPS.get(run_id)
            if stop is not None:
                stop.set()


def reader(runs: RunStore, run_id: str, stop: threading.Event | None = None) -> Callable[[bool], str | None]:
    """The coordinator's look at its control request: a store error is logged, not fatal.

    ``stop`` (the coordinator's stop event) is set at once by a request made
    in this process.
    """
    _note_here(run_id, None)
    if stop is not None:
        with _HERE_LOCK:
            _STOPS[run_id] = stop

    def read(in_store: bool) -> str | None:
        with _HERE_LOCK:
            here = _HERE.get(run_id)
        if here is not None or not in_store:
            return here
        try:
            return runs.read_control(run_id)
        except Exception:
            logger.warning("cannot read the control request of pipeline run %s", run_id, exc_info=True)
            return None

    return read


def request(
    pylo: Pylo, run_id: str, action: str, pipeline: Pipeline | Sequence[Any] | None = None, hooks: Any = ()
) -> None:
    """Pause or cancel a running or paused run (see ``Pylo.pause_pipeline``, ``Pylo.cancel_pipeline``)."""
    from pylo.pipeline._errors import PipelineControlError
    from pylo.pipeline._host import Host
    from pylo.pipeline._reading import _status
    from pylo.pipeline._records import PipelineStatus
    from pylo.stores.runs import RunUpdate

    host = Host(pylo)
    runs = host.runs()
    run_id = host.check_id("run_id", run_id)
    run = runs.get_run(run_id)
    status = _status(host, run)
    # A cancel whose process died (crashed, interrupted) while finally_do nodes ran: finished the same way.
    under_way = (
        action == "cancel"
        and status in (PipelineStatus.CRASHED, PipelineStatus.INTERRUPTED)
        and run.options.get("halt") == "cancel"
    )
    if status not in (PipelineStatus.RUNNING, PipelineStatus.PAUSED) and not under_way:
        raise PipelineControlError(run_id, action, status.value)
    if status is PipelineStatus.PAUSED or under_way:
        if action == "pause":
            return
        stored = runs.read_nodes(run_id, results=False)
        ended = {row.key for row in stored if row.state in _FINAL}
        cleanups = [key for key in run.options.get("finally") or () if key not in ended]
        if pipeline is not None or cleanups:
            if pipeline is None:
                raise PipelineControlError(
                    run_id,
                    action,
                    status.value,
                    detail=f"pipeline run {run_id!r} is {status.value} and its finally_do ({', '.join(cleanups)}) "
                    "must still run: give the pipeline it was started with, cancel_pipeline(run_id, pipeline), "
                    "and the cancel runs it",
                )
            cancel_paused(pylo, run_id, pipeline, hooks)
            return
        # Nothing left that always runs: every node that did not end is cancelled here.
        import dataclasses

        now = time.time()
        rows = [
            dataclasses.replace(row, state="cancelled", ended_at=now, started_at=None)
            for row in stored
            if row.state in ("pending", "running")
        ]
        runs.record_run(run_id, RunUpdate(nodes=rows, status="cancelled", ended_at=now))
        runs.request_control(run_id, None)
        return
    runs.request_control(run_id, action)
    from pylo.pipeline._reading import _RUNNING_HERE, _RUNNING_LOCK

    with _RUNNING_LOCK:
        here = run_id in _RUNNING_HERE
    if here:
        _note_here(run_id, action)


def cancel_here(runs: RunStore, run_id: str) -> None:
    """Cancel a run this process runs (a hook raised): seen at its next round of starts, and recorded."""
    _note_here(run_id, "cancel")
    runs.request_control(run_id, "cancel")


def forget(run_id: str) -> None:
    """The run's coordinator ended: drop the requests noted for it in this process."""
    _note_here(run_id, None)
    with _HERE_LOCK:
        _STOPS.pop(run_id, None)


def unpause(pylo: Pylo, run_id: str, pipeline: Pipeline | Sequence[Any], max_parallel: int | None, hooks: Any) -> str:
    """Run a paused run on under the same id (see ``Pylo.unpause_pipeline``)."""
    from pylo.pipeline._errors import PipelineControlError
    from pylo.pipeline._host import Host
    from pylo.pipeline._reading import _status
    from pylo.pipeline._records import PipelineStatus

    host = Host(pylo)
    run_id = host.check_id("run_id", run_id)
    status = _status(host, host.runs().get_run(run_id))
    if status is not PipelineStatus.PAUSED:
        raise PipelineControlError(run_id, "unpause", status.value)
    return _run_on(pylo, run_id, pipeline, max_parallel, hooks, cancel=False)


def cancel_paused(pylo: Pylo, run_id: str, pipeline: Pipeline | Sequence[Any], hooks: Any) -> None:
    """Cancel a run no coordinator holds (paused, or a cancel under way whose process died); blocking.

    The run runs on under its id with the cancel taken up from the start:
    nodes that ended stay as they are, every other node ends ``cancelled``
    but ``finally_do`` nodes, which run (receiving the failure before them,
    else the run's ``PipelineCancelled``); the run ends ``cancelled``.
    """
    _run_on(pylo, run_id, pipeline, None, hooks, cancel=True)


def _run_on(
    pylo: Pylo, run_id: str, pipeline: Pipeline | Sequence[Any], max_parallel: int | None, hooks: Any, *, cancel: bool
) -> str:
    """Run a run no coordinator holds on under the same id: an unpause, or a cancel that runs finally_do."""
    import dataclasses

    from pylo.pipeline._api import _check_max_parallel, _coordinate, _resumed_rows
    from pylo.pipeline._graph import build_graph
    from pylo.pipeline._host import Host
    from pylo.pipeline._reading import _running_here
    from pylo.pipeline._run_environment import RunEnvironment
    from pylo.pipeline.hooks import HookDispatcher
    from pylo.stores.runs import RunUpdate

    host = Host(pylo)
    HookDispatcher(hooks)
    runs = host.runs()
    run = runs.get_run(run_id)
    graph = build_graph(pipeline)
    stored = runs.read_nodes(run_id)
    if [row.key for row in stored] != [node.key for node in graph.nodes]:
        from pylo.errors import PipelineValidationError

        action = "cancel" if cancel else "unpause"
        raise PipelineValidationError(
            f"cannot {action} pipeline run {run_id!r} with this pipeline: its nodes are not the run's "
            f"({action} it with the pipeline it was started with"
            + ("" if cancel else ", or resume it with resume_pipeline")
            + ")"
        )
    limit = _check_max_parallel(max_parallel, int(run.options.get("max_parallel") or host.workers))
    codec = host.codec_named(run.codec, run_id)
    rows, values, lineage = _resumed_rows(host, graph, run, stored, codec)
    if cancel:
        # The same run, not a resume: what ended stays as it ended (a failure stays what finally_do receives).
        for index, old in enumerate(stored):
            if old.state in _FINAL and rows[index].state != old.state:
                rows[index] = dataclasses.replace(old, seq=rows[index].seq, upstream=rows[index].upstream)
                values[index] = None
    epoch = int(run.options.get("epoch") or 0) + 1
    environment = RunEnvironment.resumed(
        [node.node.task for node in graph.nodes], run.options.get("config"), None, run_id
    )  # the run's own configuration, its secrets loaded again
    runs.request_control(run_id, "cancel" if cancel else None)
    runs.record_run(
        run_id,
        RunUpdate(
            status="running",
            options={
                "owner": {"pid": os.getpid(), "host": socket.gethostname()},
                "epoch": epoch,
                "halt": "cancel" if cancel else None,
            },
        ),
    )
    with _running_here(run_id):
        try:
            with host.sigterm_as_system_exit():
                environment.open(run_id)
                _coordinate(
                    host, run_id, graph, rows, values, lineage, limit, codec.name, environment,
                    execution_prefix=f"{run_id}.u{epoch}", hooks=hooks, name=run.name,
                    parent_trace=run.options.get("trace"),
                )  # fmt: skip
        finally:
            environment.close()
    return run_id
