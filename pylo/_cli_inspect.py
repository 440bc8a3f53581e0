"""``pylo list``, ``show``, ``failures`` and ``inputs``: read executions, never change them.

Each command opens an existing store (none is created just to say it is
empty) and reads what the last flush wrote, so they work while another
process runs the execution.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from pylo import _stops
from pylo._cli_common import (
    CliError,
    StoreChoice,
    describe_recorded_retry,
    format_count,
    format_duration,
    format_time,
    group_failures,
    record_json,
    resolve_execution_id,
    run_seconds,
)
from pylo._cli_outcomes import failure_rows, matches_type, write_outcomes
from pylo._cli_summary import stop_json, stop_reason
from pylo._codec import short_repr
from pylo._reader import read_inputs
from pylo.execution import Failure, Pylo
from pylo.stores.base import FAILED, FINISHED, PENDING, ExecutionRecord, ExecutionStatus

__all__ = ["failures_command", "inputs_command", "list_command", "show_command"]

# Example inputs shown per failure group.
_EXAMPLES = 3


def _table(rows: list[list[str]], right: set[int], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        print("  ".join(cells).rstrip(), file=out)


def list_command(args: argparse.Namespace, store: StoreChoice) -> int:
    """``pylo list``: one line per execution, oldest first."""
    labels = dict(args.labels)
    with store.open(must_exist=True) as pylo:
        records = pylo.list_executions(labels=labels)
    if args.status is not None:
        records = [record for record in records if str(record.status) == args.status]
    if args.last is not None:
        records = records[-args.last :]
    if args.json:
        print(json.dumps([{**record_json(record), **stop_json(record)} for record in records], ensure_ascii=False))
        return 0
    if not records:
        which = " labelled " + _format_labels(labels) if labels else ""
        print(f"no executions{which} in the store at {store.value}")
        return 0
    labelled = any(record.labels for record in records)
    rows = [["ID", "PARENT", "STATUS", "STARTED", "DURATION", "FINISHED", "FAILED", "PENDING", "TASK"]]
    if labelled:
        rows[0].append("LABELS")
    for record in records:
        rows.append(
            [
                record.id,
                record.parent_id or "-",
                status_text(record),
                format_time(record.created_at),
                format_duration(run_seconds(record)),
                format_count(record.finished),
                format_count(record.failed),
                format_count(record.pending),
                record.task_name,
                *([_format_labels(record.labels) or "-"] if labelled else []),
            ]
        )
    _table(rows, {5, 6, 7}, sys.stdout)
    return 0


def _format_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _new_work(record: ExecutionRecord, parent: ExecutionRecord | None) -> int:
    """Inputs this execution attempted itself (a resume inherits its parent's finished ones)."""
    inherited = parent.finished if parent is not None else 0
    return max(0, record.finished - inherited) + record.failed


def _options(record: ExecutionRecord) -> str:
    shown = []
    for key, value in record.options.items():
        if key == "retry_policy":
            continue
        if key == "retry":
            # tenacity's repr is long and full of addresses; say what matters.
            retry = describe_recorded_retry(record.options)
            if retry is not None:
                shown.append(retry)
        elif key == "initializer" and isinstance(value, dict):
            shown.append(f"initializer={value.get('name')}")  # its path and initargs: show --json
        elif value is not None:
            shown.append(f"{key}={value}")
    return " ".join(shown) or "-"


def _status(record: ExecutionRecord) -> str:
    """The status, and why it stopped when the status alone does not say."""
    reason = stop_reason(record)
    if reason is None or reason.detail == _stops.UNRECORDED_INTERRUPT:
        return str(record.status)
    return f"{record.status} ({reason.detail})"


def _throughput(work: int, seconds: float) -> str:
    if not seconds:
        return "-"
    rate = work / seconds
    shown = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
    return f"{shown} inputs/s ({format_count(work)} attempted in this execution)"


def show_command(args: argparse.Namespace, store: StoreChoice) -> int:
    """``pylo show ID``: one execution in detail, with its lineage and throughput."""
    with store.open(must_exist=True) as pylo:
        record = pylo.get_execution(resolve_execution_id(pylo, args.execution_id))
        chain = pylo.lineage(record.id)
        children = [r for r in pylo.list_executions() if r.parent_id == record.id]
        location = pylo.store.location
    ancestors = list(reversed(chain[: [r.id for r in chain].index(record.id)]))  # the parent first
    if args.json:
        shown = {
            **record_json(record),
            **stop_json(record),
            "parents": [r.id for r in ancestors],
            "children": [r.id for r in children],
            "store": location,
        }
        print(json.dumps(shown, ensure_ascii=False))
        return show_status(record)
    seconds = run_seconds(record)
    work = _new_work(record, ancestors[0] if ancestors else None)
    lines = [
        ("execution", record.id),
        ("status", _status(record)),
        ("task", record.task_name),
        ("store", location),
        ("started", format_time(record.created_at)),
        ("ended", format_time(record.ended_at)),
        ("duration", format_duration(seconds)),
        ("inputs", _inputs_line(record, store)),
        ("throughput", _throughput(work, seconds)),
        ("process", f"pid {record.pid} on {record.host}" if record.pid is not None else "-"),
        ("options", _options(record)),
    ]
    if record.labels:
        lines.append(("labels", _format_labels(record.labels)))
    if ancestors:
        lines.append(("parents", " <- ".join(f"{r.id} ({r.status})" for r in ancestors)))
    if children:
        lines.append(("children", ", ".join(f"{r.id} ({r.status})" for r in children)))
    if record.failed:
        lines.append(("failures", f"pylo failures {record.id}{store.flag()}"))
    if record.unfinished and not unrecorded(record):
        lines.append(("resume", f"pylo resume {record.id}{store.flag()}"))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")
    return show_status(record)


def unrecorded(record: ExecutionRecord) -> bool:
    """True for an execution that ended before all its inputs were recorded: it ran nothing."""
    return not record.inputs_complete and record.status is not ExecutionStatus.RUNNING


def status_text(record: ExecutionRecord) -> str:
    """The status as ``pylo list`` shows it: one that ran nothing says its inputs are incomplete."""
    return f"{record.status} (inputs incomplete)" if unrecorded(record) else str(record.status)


def _inputs_line(record: ExecutionRecord, store: StoreChoice) -> str:
    if unrecorded(record):
        return (
            f"{format_count(record.total)} recorded before reading them stopped: incomplete, none ran, "
            f"nothing to resume (run again with --id {record.id} to replace it, or pylo rm {record.id}{store.flag()})"
        )
    return (
        f"{format_count(record.total)}: {format_count(record.finished)} finished, "
        f"{format_count(record.failed)} failed, {format_count(record.pending)} pending"
    )


#: ``pylo show``'s exit status for an execution that is still running.
RUNNING_STATUS = 3


def show_status(record: ExecutionRecord) -> int:
    """0 when every input finished, 3 while it runs, 1 when it ended with unfinished inputs."""
    if record.status is ExecutionStatus.RUNNING:
        return RUNNING_STATUS
    return 0 if record.inputs_complete and record.unfinished == 0 else 1


def failures_command(args: argparse.Namespace, store: StoreChoice) -> int:
    """``pylo failures ID``: failures grouped by type and message shape, with example inputs."""
    with store.open(must_exist=True) as pylo:
        record = pylo.get_execution(resolve_execution_id(pylo, args.execution_id))
        failures = pylo.get_failures(record.id)
    if args.type:
        failures = [f for f in failures if matches_type(f.exception_type, args.type)]
    if args.json:
        print(json.dumps(_failures_json(record, failures), ensure_ascii=False, default=short_repr))
        return 0
    if not failures:
        which = f" of type {args.type}" if args.type else ""
        print(f"execution {record.id} has no failures{which}")
        return 0
    by_position = {f.position: f for f in failures}
    groups = group_failures((f.position, f.exception_type, f.message) for f in failures)
    print(
        f"execution {record.id}: {format_count(len(failures))} failed input{'s' if len(failures) != 1 else ''} "
        f"in {len(groups)} group{'s' if len(groups) != 1 else ''}"
    )
    for group in groups:
        first = by_position[group.positions[0]]
        print()
        print(f"{format_count(len(group.positions))} x {group.title}")
        if group.example is not None and group.example != group.shape:
            print(f"  message:  {group.example}")
        examples = ", ".join(f"#{p} {short_repr(by_position[p].input)}" for p in group.positions[:_EXAMPLES])
        more = len(group.positions) - _EXAMPLES
        print(f"  inputs:   {examples}{f' (+{format_count(more)} more)' if more > 0 else ''}")
        print(f"  attempts: {first.attempts}, worker {first.worker}, at {format_time(first.time.timestamp())}")
        if args.traceback and first.traceback:
            print(f"  traceback of input #{first.position}:")
            for line in first.traceback.rstrip("\n").splitlines():
                print(f"    {line}")
    return 0


def _failures_json(record: ExecutionRecord, failures: list[Failure]) -> dict[str, Any]:
    by_position = {f.position: f for f in failures}
    groups = group_failures((f.position, f.exception_type, f.message) for f in failures)
    return {
        "execution": record.id,
        "failed": len(failures),
        "groups": [
            {
                "exception_type": group.exception_type,
                "message": group.shape,
                "example_message": group.example,
                "count": len(group.positions),
                "positions": list(group.positions),
            }
            for group in groups
        ],
        "failures": [
            {
                "position": f.position,
                "input": f.input,
                "exception_type": f.exception_type,
                "message": f.message,
                "attempts": f.attempts,
                "worker": f.worker,
                "time": f.time.timestamp(),
            }
            for f in sorted(by_position.values(), key=lambda f: f.position)
        ],
    }


# -- inputs --------------------------------------------------------------------------------

_WANTED = {
    None: frozenset({PENDING, FINISHED, FAILED}),
    "finished": frozenset({FINISHED}),
    "failed": frozenset({FAILED}),
    "unfinished": frozenset({PENDING, FAILED}),
}


def _stream_inputs(pylo: Pylo, record: ExecutionRecord, wanted: frozenset[int]) -> Iterator[tuple[int, Any]]:
    """``(position, input)`` of the wanted states, one stored batch in memory at a time."""
    for position, _, item in read_inputs(pylo.store, record, wanted):
        yield position, item


def _json(value: Any, what: str, position: int | None = None) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        where = "" if position is None else f" #{position}"
        raise CliError(f"{what}{where} {short_repr(value)} cannot be written as JSON ({exc}); drop --json") from None


def _check_inputs_flags(args: argparse.Namespace) -> None:
    if args.results and args.state not in (None, "finished"):
        raise CliError(f"--results prints finished inputs and their results; it cannot be combined with --{args.state}")
    if args.results and args.outcomes:
        raise CliError("--results and --outcomes cannot be combined: --outcomes prints how each input ended")
    if args.type is not None and args.state != "failed":
        raise CliError(
            f"--type filters failed inputs by exception type; add --failed: "
            f"pylo inputs {args.execution_id} --failed --type {args.type}"
        )


def inputs_command(args: argparse.Namespace, store: StoreChoice) -> int:
    """``pylo inputs ID``: the execution's inputs, one per line, for scripts."""
    _check_inputs_flags(args)
    out = sys.stdout
    with store.open(must_exist=True) as pylo:
        record = pylo.get_execution(resolve_execution_id(pylo, args.execution_id))
        if args.outcomes:
            try:
                write_outcomes(out, pylo.store, record, _WANTED[args.state], type_name=args.type, as_json=args.json)
            except UnicodeEncodeError as exc:
                raise CliError(
                    f"an input of execution {record.id} cannot be printed: {exc.reason} "
                    f"({exc.object[exc.start : exc.end]!r}); try --json"
                ) from None
            return 0
        if args.type is not None:
            matching = failure_rows(pylo.store, record, args.type)
            for position, item in _stream_inputs(pylo, record, _WANTED["failed"]):
                if position in matching:
                    line = _json(item, "input", position) if args.json else str(item)
                    _write_line(out, line, f"input #{position} of execution {record.id}")
            return 0
        if args.results:
            # Results come back as one list (the lineage's results are merged
            # by position); inputs stream batch by batch.
            for item, result in pylo.get_results(record.id):
                line = _json([item, result], "the pair") if args.json else f"{item}\t{result}"
                _write_line(out, line, f"a finished input of execution {record.id}")
            return 0
        for position, item in _stream_inputs(pylo, record, _WANTED[args.state]):
            line = _json(item, "input", position) if args.json else str(item)
            _write_line(out, line, f"input #{position} of execution {record.id}")
    return 0


def _write_line(out: TextIO, line: str, what: str) -> None:
    try:
        out.write(line + "\n")
    except UnicodeEncodeError as exc:
        # A lone surrogate (stored by an older pylo, or from Python) is no text.
        raise CliError(
            f"{what} cannot be printed: {exc.reason} ({exc.object[exc.start : exc.end]!r}); try --json"
        ) from None
