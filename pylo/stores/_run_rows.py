"""Checks and conversions shared by the run stores (not part of the public API).

Both run stores validate what they are given the same way and refuse the
same kinds of damage when they read rows back, so that happens here once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pylo.pipeline._records import PipelineStatus, TaskState
from pylo.stores._common import dump_options
from pylo.stores.runs import NodeRow, RunRow, RunUpdate

__all__ = [
    "MAX_KEY_LENGTH",
    "check_new_run",
    "check_update",
    "last_change_per_key",
    "node_problem",
    "run_problem",
]

#: Longest node key a store accepts. Portable for a key that is part of a
#: primary key with a 255-character run id (MySQL's 3,072-byte index limit
#: at 4 bytes a character); keys derived from the graph stay far shorter.
MAX_KEY_LENGTH = 512

_WRITTEN_STATUSES = frozenset(status.value for status in PipelineStatus if status is not PipelineStatus.CRASHED)
_STATES = frozenset(state.value for state in TaskState)


def _check_status(run_id: str, status: str) -> None:
    if status == PipelineStatus.CRASHED.value:
        raise ValueError(f"pipeline run {run_id!r}: status 'crashed' is derived on read and never written")
    if status not in _WRITTEN_STATUSES:
        valid = ", ".join(sorted(_WRITTEN_STATUSES))
        raise ValueError(f"pipeline run {run_id!r}: unknown status {status!r}; valid statuses: {valid}")


def _check_state(run_id: str, node: NodeRow) -> None:
    if node.state not in _STATES:
        valid = ", ".join(sorted(_STATES))
        raise ValueError(
            f"node {node.key!r} of pipeline run {run_id!r} has an unknown state {node.state!r}; valid states: {valid}"
        )
    if node.attempts < 0:
        raise ValueError(f"node {node.key!r} of pipeline run {run_id!r} has negative attempts ({node.attempts})")


def check_new_run(run: RunRow, nodes: Sequence[NodeRow]) -> str:
    """Reject a run that a store could not keep, before anything is written; return its options as JSON text.

    Raises:
        ValueError: Two nodes share a key or a ``seq``; a key is empty or
            longer than :data:`MAX_KEY_LENGTH`; a ``seq`` is negative; a
            state or status is unknown, or the status is the derived
            ``crashed``.
        TypeError: The options are not JSON-serializable.
    """
    if not run.id:
        raise ValueError("pipeline run id must not be empty")
    _check_status(run.id, run.status)
    options = dump_options(run.id, run.options, owner="pipeline run")
    keys: set[str] = set()
    seqs: set[int] = set()
    for node in nodes:
        if not node.key or len(node.key) > MAX_KEY_LENGTH:
            raise ValueError(
                f"node key {node.key[:40]!r} of pipeline run {run.id!r} must have 1 to {MAX_KEY_LENGTH} "
                f"characters, it has {len(node.key)}"
            )
        if node.key in keys:
            raise ValueError(f"pipeline run {run.id!r} has two nodes with the key {node.key!r}; keys must be unique")
        if node.seq < 0 or node.seq in seqs:
            raise ValueError(
                f"pipeline run {run.id!r}: node {node.key!r} has seq {node.seq}, which is negative or "
                "taken by another node; seqs must be unique and >= 0"
            )
        _check_state(run.id, node)
        keys.add(node.key)
        seqs.add(node.seq)
    return options


def check_update(run_id: str, update: RunUpdate) -> None:
    """Reject an update that asks for something a store never records.

    Raises:
        ValueError: A node state or the status is unknown, or the status is
            the derived ``crashed``.
        TypeError: The options are not JSON-serializable.
    """
    if update.status is not None:
        _check_status(run_id, update.status)
    if update.options is not None:
        dump_options(run_id, update.options, owner="pipeline run")
    for node in update.nodes:
        _check_state(run_id, node)


def last_change_per_key(nodes: Iterable[NodeRow]) -> list[NodeRow]:
    """The last version of each node, in the order keys first changed.

    Applying changes in order leaves each node as its last change says, so
    a store may write just that one.
    """
    return list({node.key: node for node in nodes}.values())


def run_problem(run: RunRow) -> str | None:
    """Why a run read back from a store cannot be right, or None when it can."""
    if run.status not in _WRITTEN_STATUSES:
        return f"an unknown status {run.status!r}"
    return None


def node_problem(node: NodeRow) -> str | None:
    """Why a node read back from a store cannot be right, or None when it can."""
    if node.state not in _STATES:
        return f"node {node.key!r} has an unknown state {node.state!r}"
    if node.attempts < 0 or node.seq < 0:
        return f"node {node.key!r} has a negative seq or attempts count"
    if not all(isinstance(key, str) for key in node.upstream):
        return f"node {node.key!r} has upstream keys that are not text"
    return None
