"""``pylo inputs ID --outcomes``: one row per input saying how it ended, like GNU parallel's joblog.

A row is the input's position, its state (finished, failed or pending) and
the input itself; a failed input's row adds its exception type, message,
attempts, the worker that ran it and when it failed; a finished input's row
names the worker that ran it, from the store's chunk rows (one per chunk,
looked up by bisection). Every attempted input's row names the execution
that ran it: a resume's inherited finished inputs ran in an earlier
execution of its lineage, the oldest one, going back from its parent, in
which they are still finished; their worker comes from that execution's
chunk rows. Rows are CSV with a header, or one JSON object per line with
``--json``. Inputs stream from the store a batch at a time; the execution's
failure records and chunk rows are read once, whole (a run that failed
millions of inputs holds them in memory), and so are, for a resume, the
state bytes of its ancestors (one byte per input each) and their chunk rows.
"""

from __future__ import annotations

import bisect
import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from pylo._cli_common import CliError
from pylo._codec import short_repr
from pylo._reader import ancestors, read_inputs, read_layout
from pylo.stores.base import FAILED, FINISHED, PENDING, ChunkRow, ExecutionRecord, FailureRow, Store

__all__ = ["OUTCOME_COLUMNS", "failure_rows", "matches_type", "write_outcomes"]

#: The columns of ``--outcomes``, in order (documented in docs/cli.md: keep them).
OUTCOME_COLUMNS = (
    "position",
    "state",
    "exception_type",
    "message",
    "attempts",
    "worker",
    "failed_at",
    "input",
    "execution",
)
_STATE_NAMES = {PENDING: "pending", FINISHED: "finished", FAILED: "failed"}


def matches_type(exception_type: str | None, name: str) -> bool:
    """``--type NAME``: the qualified type name, or its last part (``HTTPError``).

    Built-in types are stored bare (``TimeoutError``, as tracebacks print
    them), so ``builtins.TimeoutError`` names them too, and either spelling
    matches a type stored either way.
    """
    kind = _unprefixed(exception_type or "")
    name = _unprefixed(name)
    return kind == name or kind.endswith("." + name)


def _unprefixed(type_name: str) -> str:
    """A type name without the ``builtins.`` module that Python leaves implicit."""
    return type_name.removeprefix("builtins.")


def failure_rows(store: Store, record: ExecutionRecord, type_name: str | None) -> dict[int, FailureRow]:
    """The execution's failure records by position, only those of ``type_name`` when given."""
    rows = store.read_failures(record.id)
    return {row.position: row for row in rows if type_name is None or matches_type(row.exc_type, type_name)}


class _Workers:
    """The worker that ran a position, from an execution's chunk rows (sorted, not overlapping)."""

    def __init__(self, rows: list[ChunkRow]) -> None:
        self._rows = rows
        self._firsts = [row.first_position for row in rows]

    def of(self, position: int) -> int | None:
        index = bisect.bisect_right(self._firsts, position) - 1
        if index < 0 or self._rows[index].last_position < position:
            return None  # ran before chunk rows were kept
        return self._rows[index].worker


class _Lineage:
    """Which execution of a resume's lineage finished the inputs it inherited, and the worker there.

    An input finished in an execution stays finished in every resume after
    it, and a resume runs only unfinished inputs: so the execution that ran
    an inherited input is the oldest of the run of ancestors, going back
    from the parent, in which that input is finished.
    """

    def __init__(self, store: Store, record: ExecutionRecord) -> None:
        self._store = store
        self._ancestors = ancestors(store, record)[1:]  # the parent first
        self._states = [b"".join(batch.states for batch in read_layout(store, a)) for a in self._ancestors]
        self._workers: dict[str, _Workers] = {}

    def finisher(self, position: int) -> tuple[str, int | None] | None:
        """``(execution id, worker)`` that ran an inherited input; None when the parent had not finished it."""
        found: ExecutionRecord | None = None
        for ancestor, states in zip(self._ancestors, self._states, strict=True):
            if position >= len(states) or states[position] != FINISHED:
                break
            found = ancestor
        if found is None:
            return None
        workers = self._workers.get(found.id)
        if workers is None:
            workers = self._workers[found.id] = _Workers(self._store.read_chunks(found.id))
        return found.id, workers.of(position)


def _outcomes(
    store: Store, record: ExecutionRecord, wanted: Iterable[int], failures: dict[int, FailureRow], only_failures: bool
) -> Iterator[dict[str, Any]]:
    wanted = frozenset(wanted)
    workers = _Workers([] if only_failures else store.read_chunks(record.id))
    # Failures are never inherited: only finished inputs may have run in an earlier execution.
    lineage = None if only_failures or record.parent_id is None or FINISHED not in wanted else _Lineage(store, record)
    for position, state, item in read_inputs(store, record, wanted):
        failure = failures.get(position) if state == FAILED else None
        if only_failures and failure is None:
            continue  # a failure of another type
        # A failed input's worker is on its failure record; a finished one's on a chunk row.
        finished = state == FINISHED
        worker = failure.worker if failure is not None else workers.of(position) if finished else None
        execution = None if state == PENDING else record.id
        inherited = lineage.finisher(position) if lineage is not None and finished else None
        if inherited is not None:
            execution, worker = inherited
        yield {
            "position": position,
            "state": _STATE_NAMES.get(state, str(state)),
            "exception_type": failure.exc_type if failure else None,
            "message": failure.message if failure else None,
            "attempts": failure.attempts if failure else None,
            "worker": worker,
            "failed_at": failure.failed_at if failure else None,
            "input": item,
            "execution": execution,
        }


def write_outcomes(
    out: TextIO,
    store: Store,
    record: ExecutionRecord,
    wanted: Iterable[int],
    *,
    type_name: str | None,
    as_json: bool,
) -> None:
    """Write one row per wanted input: CSV with a header, or JSON Lines with ``as_json``.

    Raises:
        CliError: An input cannot be written as JSON (with ``as_json``).
    """
    failures = failure_rows(store, record, type_name)
    rows = _outcomes(store, record, wanted, failures, only_failures=type_name is not None)
    if as_json:
        for row in rows:
            try:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            except (TypeError, ValueError) as exc:
                raise CliError(
                    f"input #{row['position']} {short_repr(row['input'])} cannot be written as JSON ({exc}); "
                    "drop --json for CSV"
                ) from None
        return
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(OUTCOME_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[column] is None else row[column] for column in OUTCOME_COLUMNS])
