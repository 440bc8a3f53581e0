"""Deleting executions, and the rules that keep what is still in use.

An execution is kept (:class:`~pylo.errors.ExecutionInUse`) while:

* it runs: its status is ``running`` and its process is alive (or on
  another machine, where pylo cannot tell);
* a resume of it runs: the resume holds a claim on it (:mod:`pylo._claims`),
  and so does a delete while it deletes, so neither starts during the other;
* an execution that resumed it exists: a resume reads its inputs from the
  first execution of its lineage and its results through its ancestors, so
  the newest execution of a lineage goes first (the store refuses
  otherwise, see :meth:`~pylo.stores.base.Store.delete_execution`);
* a pipeline run owns it: a batch node's execution holds the node's results,
  which the run's result is read from, and a resume of the run resumes it.

:func:`replace_unrecorded` lets a new execution take the id of one that
never finished recording its inputs (Ctrl-C while they were being read).
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pylo._claims import hold_claim
from pylo._running import process_is_gone
from pylo.errors import ExecutionInUse, ExecutionNotFound, PyloError, StoreError
from pylo.stores.base import Claim, ExecutionRecord, ExecutionStatus, Store

__all__ = [
    "PipelineOwner",
    "delete_execution",
    "deletion_order",
    "pipeline_owners",
    "replace_unrecorded",
    "running_problem",
]

logger = logging.getLogger(__name__)

#: A batch node's execution id holds at most this much of its run's id (see pylo.pipeline._batch).
_RUN_ID_KEPT = 111


@dataclass(frozen=True, slots=True)
class PipelineOwner:
    """The pipeline run and node whose batch an execution is."""

    run_id: str
    node_key: str


def running_problem(record: ExecutionRecord) -> str | None:
    """Why a running execution cannot be deleted now, or None when it is not running."""
    if record.status is not ExecutionStatus.RUNNING or process_is_gone(record):
        return None
    if record.host == socket.gethostname():
        return f"it is running (process {record.pid})"
    return (
        f"it is marked running on host {record.host}, where pylo cannot tell from here whether its "
        f"process {record.pid} is alive; delete it from {record.host}, or once it has ended"
    )


def pipeline_owners(store: Store, execution_ids: Iterable[str]) -> dict[str, PipelineOwner]:
    """Which of ``execution_ids`` are batch nodes of pipeline runs, and of which.

    Only runs whose id starts the execution id (batch executions are named
    ``<run id>.<node key>``) have their nodes read.
    """
    from pylo.pipeline._batch import batch_execution_id

    wanted = set(execution_ids)
    if not wanted:
        return {}
    try:
        runs = store.runs()
        rows = runs.list_runs()
    except (StoreError, NotImplementedError):
        return {}  # a store that keeps no runs: no execution belongs to one
    found: dict[str, PipelineOwner] = {}
    for run in rows:
        prefixes = (f"{run.id}.", f"{run.id[:_RUN_ID_KEPT]}.")
        if not any(execution_id.startswith(prefixes) for execution_id in wanted):
            continue
        for node in runs.read_nodes(run.id, results=False):
            if node.kind != "batch":
                continue
            # The derived id too: a run killed before its node row named the
            # execution still resumes it.
            for execution_id in (node.execution_id, batch_execution_id(run.id, node.key)):
                if execution_id in wanted:
                    found.setdefault(execution_id, PipelineOwner(run.id, node.key))
    return found


def owned_problem(owner: PipelineOwner) -> str:
    """Why a batch node's execution is kept, in words for any interface."""
    return (
        f"it is batch node {owner.node_key!r} of pipeline run {owner.run_id}, whose result and resume read it; "
        "it is kept as long as the run is"
    )


def deletion_order(records: Iterable[ExecutionRecord]) -> list[ExecutionRecord]:
    """``records`` ordered so that every execution comes before the one it resumed (newest lineage first)."""
    chosen = {record.id: record for record in records}
    depth: dict[str, int] = {}

    def generation(record: ExecutionRecord) -> int:
        # How many of its ancestors are chosen too: deeper ones go first.
        found = depth.get(record.id)
        if found is None:
            parent = chosen.get(record.parent_id) if record.parent_id is not None else None
            found = depth[record.id] = 0 if parent is None or parent.id == record.id else generation(parent) + 1
        return found

    return sorted(chosen.values(), key=lambda record: (-generation(record), -record.created_at, record.id))


def delete_execution(store: Store, execution_id: str) -> None:
    """Delete one execution, unless it is in use (see the module docstring).

    Raises:
        ExecutionNotFound: No such execution.
        ExecutionInUse: It runs, is being resumed, was resumed, or a
            pipeline run owns it; nothing is deleted.
        StoreError: The store cannot be written, or cannot delete executions.
    """
    try:
        _delete(store, store.get_execution(execution_id))
    except NotImplementedError:
        raise StoreError(f"the store at {store.location} ({type(store).__name__}) cannot delete executions") from None


def _delete(store: Store, record: ExecutionRecord) -> None:
    """:func:`delete_execution`, with a store that cannot delete left as NotImplementedError."""
    execution_id = record.id
    problem = running_problem(record)
    if problem is None:
        owner = pipeline_owners(store, [execution_id]).get(execution_id)
        problem = None if owner is None else owned_problem(owner)
    if problem is not None:
        raise ExecutionInUse(execution_id, f"execution {execution_id!r} cannot be deleted: {problem}", reason=problem)
    with hold_claim(store, execution_id, f"delete-{secrets.token_hex(6)}", _being_resumed):
        store.delete_execution(execution_id)


def _being_resumed(current: Claim) -> PyloError:
    reason = f"it is being resumed by execution {current.claimant} (process {current.pid} on {current.host})"
    return ExecutionInUse(
        current.execution_id,
        f"execution {current.execution_id!r} cannot be deleted: {reason}; wait for the resume to end",
        dependents=[current.claimant],
        reason=reason,
    )


def replace_unrecorded(store: Store, execution_id: str) -> bool:
    """Delete ``execution_id`` if it ended (or died) before all its inputs were recorded.

    Such an execution ran no task and cannot be resumed, so a new execution
    may take its id. Anything else under that id is left alone (creating
    the new execution then fails with ``ExecutionExists``).

    Returns:
        True when an execution was replaced.
    """
    try:
        record = store.get_execution(execution_id)
    except ExecutionNotFound:
        return False
    if record.inputs_complete or running_problem(record) is not None:
        return False
    try:
        _delete(store, record)
    except (ExecutionNotFound, ExecutionInUse, NotImplementedError):
        # Another process replaced it first, a pipeline run owns it, or the
        # store cannot delete: creating the new execution decides.
        return False
    logger.info("replacing execution %s, whose inputs were never all recorded", execution_id)
    return True
