"""Reading pipeline runs back: their status, records and result, from the store.

What ``get_pipeline``, ``list_pipelines`` and ``get_pipeline_result`` return,
and the status every control and resume decision reads: a run recorded
``running`` whose process is gone reads ``crashed`` (the runs this process
runs now, :func:`_running_here`, tell a live run from one left by a dead
process that had our pid). Stored failures are rebuilt by the run's codec
(a :class:`~pylo.errors.StoredTaskError` when they cannot be), and a
completed run's result is rebuilt from its stored shape, node by node.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pylo._codec import Codec
    from pylo.execution import Pylo
    from pylo.pipeline._host import Host
    from pylo.pipeline._records import NodeRecord, PipelineRecord, PipelineStatus
    from pylo.stores.runs import NodeRow, RunRow

__all__ = ["_is_gone", "_list_records", "_node_record", "_read_record", "_result", "_running_here", "_status"]

logger = logging.getLogger(__name__)

# Ids of the runs this process is running now: a live run vs one left by a dead process with our pid.
_RUNNING_HERE: set[str] = set()
_RUNNING_LOCK = threading.Lock()


@contextlib.contextmanager
def _running_here(run_id: str) -> Iterator[None]:
    with _RUNNING_LOCK:
        _RUNNING_HERE.add(run_id)
    try:
        yield
    finally:
        with _RUNNING_LOCK:
            _RUNNING_HERE.discard(run_id)


def _is_gone(host: Host, run: RunRow) -> bool:
    from pylo.pipeline._control import owner_of

    with _RUNNING_LOCK:
        here = run.id in _RUNNING_HERE
    pid, where = owner_of(run.options) or (run.pid, run.host)
    return host.process_is_gone(pid, where, here)


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
    if status is PipelineStatus.CANCELLED:
        from pylo.pipeline._errors import PipelineCancelled

        raise PipelineCancelled(run.id)
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
        if row.state in ("failed", "failed_dependency"):
            # A completed run keeps a failed sink only as a value: in_parallel(return_exceptions=True).
            from pylo.pipeline._api import _kept_failure

            value, state = unwrap_state(_kept_failure(row, codec))
            states.append((row.display_name, state))
            return value
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
