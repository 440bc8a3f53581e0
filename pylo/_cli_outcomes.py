"""``pylo inputs ID --outcomes``: one row per input saying how it ended, like GNU parallel's joblog.

A row is the input's position, its state (finished, failed or pending) and
the input itself; a failed input's row adds its exception type, message,
attempts, the worker that ran it and when it failed. Rows are CSV with a
header, or one JSON object per line with ``--json``. Inputs stream from the
store a batch at a time; the execution's failure records are read once,
whole (a run that failed millions of inputs holds them in memory).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from pylo._cli_common import CliError
from pylo._codec import short_repr
from pylo._reader import read_inputs
from pylo.stores.base import FAILED, FINISHED, PENDING, ExecutionRecord, FailureRow, Store

__all__ = ["OUTCOME_COLUMNS", "failure_rows", "matches_type", "write_outcomes"]

#: The columns of ``--outcomes``, in order (documented in docs/cli.md: keep them).
OUTCOME_COLUMNS = ("position", "state", "exception_type", "message", "attempts", "worker", "failed_at", "input")
_STATE_NAMES = {PENDING: "pending", FINISHED: "finished", FAILED: "failed"}


def matches_type(exception_type: str | None, name: str) -> bool:
    """``--type NAME``: the qualified type name, or its last part (``HTTPError``)."""
    kind = exception_type or ""
    return kind == name or kind.endswith("." + name)


def failure_rows(store: Store, record: ExecutionRecord, type_name: str | None) -> dict[int, FailureRow]:
    """The execution's failure records by position, only those of ``type_name`` when given."""
    rows = store.read_failures(record.id)
    return {row.position: row for row in rows if type_name is None or matches_type(row.exc_type, type_name)}


def _outcomes(
    store: Store, record: ExecutionRecord, wanted: Iterable[int], failures: dict[int, FailureRow], only_failures: bool
) -> Iterator[dict[str, Any]]:
    for position, state, item in read_inputs(store, record, frozenset(wanted)):
        failure = failures.get(position) if state == FAILED else None
        if only_failures and failure is None:
            continue  # a failure of another type
        yield {
            "position": position,
            "state": _STATE_NAMES.get(state, str(state)),
            "exception_type": failure.exc_type if failure else None,
            "message": failure.message if failure else None,
            "attempts": failure.attempts if failure else None,
            "worker": failure.worker if failure else None,
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
