"""``pylo inputs ID --outcomes``: one row per input saying how it ended, like GNU parallel's joblog.

A row is the input's position, its state (finished, failed or pending) and
the input itself; a failed input's row adds its exception type, message,
attempts, the worker that ran it and when it failed; a finished input's row
names the worker that ran it, from the store's chunk rows (one per chunk,
looked up by bisection). Rows are CSV with a header, or one JSON object per
line with ``--json``. Inputs stream from the store a batch at a time; the
execution's failure records and chunk rows are read once, whole (a run that
failed millions of inputs holds them in memory).
"""

from __future__ import annotations

import bisect
import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from pylo._cli_common import CliError
from pylo._codec import short_repr
from pylo._reader import read_inputs
from pylo.stores.base import FAILED, FINISHED, PENDING, ChunkRow, ExecutionRecord, FailureRow, Store

__all__ = ["OUTCOME_COLUMNS", "failure_rows", "matches_type", "write_outcomes"]

#: The columns of ``--outcomes``, in order (documented in docs/cli.md: keep them).
OUTCOME_COLUMNS = ("position", "state", "exception_type", "message", "attempts", "worker", "failed_at", "input")
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
            return None  # ran in an earlier execution of a resume, or before chunk rows were kept
        return self._rows[index].worker


def _outcomes(
    store: Store, record: ExecutionRecord, wanted: Iterable[int], failures: dict[int, FailureRow], only_failures: bool
) -> Iterator[dict[str, Any]]:
    workers = _Workers([] if only_failures else store.read_chunks(record.id))
    for position, state, item in read_inputs(store, record, frozenset(wanted)):
        failure = failures.get(position) if state == FAILED else None
        if only_failures and failure is None:
            continue  # a failure of another type
        # A failed input's worker is on its failure record; a finished one's on a chunk row.
        finished = state == FINISHED
        worker = failure.worker if failure is not None else workers.of(position) if finished else None
        yield {
            "position": position,
            "state": _STATE_NAMES.get(state, str(state)),
            "exception_type": failure.exc_type if failure else None,
            "message": failure.message if failure else None,
            "attempts": failure.attempts if failure else None,
            "worker": worker,
            "failed_at": failure.failed_at if failure else None,
            "input": item,
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
