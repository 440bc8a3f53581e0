"""What ``pylo run`` and ``pylo resume`` print when the execution ends, and why it stopped.

The summary is text for people (counts, failures by type, the commands to
see the failures and to resume) or, with ``--json-summary``, one JSON
document for scripts. Both say why an execution that did not complete
ended: the reason its run recorded with its end (see ``pylo._stops``), so
``pylo show`` can say it too for any execution, whoever ran it.
"""

from __future__ import annotations

import json
import re
from typing import Any, TextIO

from pylo import _stops
from pylo._cli_common import (
    StoreChoice,
    count_types,
    format_count,
    format_duration,
    group_failures,
    record_json,
    run_seconds,
)
from pylo._stops import Stop
from pylo.errors import PyloError
from pylo.execution import Pylo
from pylo.stores.base import ExecutionRecord, ExecutionStatus

__all__ = ["Interrupt", "print_summary", "stop_json", "stop_reason", "summary_json"]

#: What interrupted a run, when the command knows: ``"ctrl-c"`` or ``"sigterm"``.
Interrupt = str


#: Options as the recorded details name them, and the flags that set them.
_FLAGS = re.compile(r"\b(max_failures|max_worker_failures)=")
#: What the command saw interrupt a run, in words.
_INTERRUPTS = {"ctrl-c": "Ctrl-C", "sigterm": "SIGTERM"}


def stop_reason(record: ExecutionRecord, interrupt: Interrupt | None = None) -> Stop | None:
    """Why ``record`` stopped early, in the command line's words; None when it completed, runs or never started.

    The reason is the one its run recorded with its end (``Pylo``'s readers
    derive one for a crashed execution, and for one recorded by a pylo that
    kept none); the options it names become the flags that set them.

    Args:
        record: The execution, as ``Pylo`` reads it.
        interrupt: What the command saw interrupt the run, when it did:
            it names an interrupt the record could not.
    """
    if record.stop_reason is None:
        return None
    detail = record.stop_detail or record.stop_reason
    if detail == _stops.UNRECORDED_INTERRUPT:
        detail = _INTERRUPTS.get(interrupt or "", detail)
    return Stop(record.stop_reason, _FLAGS.sub(lambda found: "--" + found[1].replace("_", "-") + " ", detail))


def stop_json(record: ExecutionRecord, interrupt: Interrupt | None = None) -> dict[str, str | None]:
    """``stop_reason`` and ``stop_detail`` as JSON keys (both null when it did not stop early)."""
    reason = stop_reason(record, interrupt)
    if reason is None:
        return {"stop_reason": None, "stop_detail": None}
    return {"stop_reason": reason.code, "stop_detail": reason.detail}


# -- the summary ------------------------------------------------------------------------


def print_summary(
    pylo: Pylo,
    store: StoreChoice,
    execution_id: str,
    out: TextIO,
    *,
    as_json: bool = False,
    interrupt: Interrupt | None = None,
) -> int:
    """Print what an execution did and what to do next: text, or one JSON document.

    Returns:
        The exit status: 0 when every input finished, 1 otherwise.
    """
    try:
        record = pylo.get_execution(execution_id)
    except PyloError:
        if as_json:
            print(json.dumps(_not_created(execution_id, interrupt)), file=out)
        else:
            print(f"execution {execution_id} was not created: nothing ran", file=out)
        return 1
    status = 0 if record.inputs_complete and record.unfinished == 0 else 1
    if as_json:
        print(json.dumps(summary_json(pylo, store, record, interrupt), ensure_ascii=False), file=out)
        return status
    if not record.inputs_complete:
        print(
            f"execution {record.id} {record.status} while reading its inputs "
            f"({format_count(record.total)} recorded, none ran): it has no inputs to resume; "
            f"run the command again (with --id {record.id} it replaces this execution), "
            f"or delete it: pylo rm {record.id}{store.flag()}",
            file=out,
        )
        return status
    reason = stop_reason(record, interrupt)
    why = f": {reason.detail}" if reason is not None else ""
    print(f"execution {record.id} {record.status} after {format_duration(run_seconds(record))}{why}", file=out)
    if record.unfinished == 0:
        print(f"  all {format_count(record.total)} inputs finished", file=out)
        return status
    print(
        f"  {format_count(record.finished)} finished, {format_count(record.failed)} failed, "
        f"{format_count(record.pending)} pending, of {format_count(record.total)} inputs",
        file=out,
    )
    by_type = _failures_by_type(pylo, record)
    if by_type:
        print("  failures by type:", file=out)
        width = len(format_count(by_type[0]["count"]))
        for kind in by_type:
            others = kind["other_messages"]
            more = f"  (+{others} other message{'s' if others > 1 else ''})" if others else ""
            print(f"    {format_count(kind['count']):>{width}}  {kind['title']}{more}", file=out)
        print(f"  details: pylo failures {record.id}{store.flag()}", file=out)
    print(f"  resume:  pylo resume {record.id}{store.flag()}", file=out)
    return status


def _failures_by_type(pylo: Pylo, record: ExecutionRecord) -> list[dict[str, Any]]:
    """Per exception type, most failures first: its count and its most common message shape."""
    rows = pylo.store.read_failures(record.id)
    groups = group_failures((row.position, row.exc_type, row.message) for row in rows)
    shown = []
    for kind, count, largest in count_types(groups):
        shown.append(
            {
                "exception_type": kind,
                "count": count,
                "message": largest.shape,
                "example_message": largest.example,
                "other_messages": sum(1 for g in groups if g.exception_type == kind) - 1,
                "title": largest.title,
            }
        )
    return shown


def summary_json(
    pylo: Pylo, store: StoreChoice, record: ExecutionRecord, interrupt: Interrupt | None
) -> dict[str, Any]:
    """The ``--json-summary`` document (documented keys in docs/cli.md: keep them)."""
    by_type = [{k: v for k, v in kind.items() if k != "title"} for kind in _failures_by_type(pylo, record)]
    resumable = record.inputs_complete and record.unfinished > 0
    return {
        **record_json(record),
        **stop_json(record, interrupt),
        "failures_by_type": by_type,
        "failures_command": f"pylo failures {record.id}{store.flag()}" if by_type else None,
        "resume_command": f"pylo resume {record.id}{store.flag()}" if resumable else None,
    }


def _not_created(execution_id: str, interrupt: Interrupt | None) -> dict[str, Any]:
    """The summary's keys for an execution that was never recorded: null but the id."""
    blank = ExecutionRecord(execution_id, None, execution_id, ExecutionStatus.ABORTED, 0.0, 0.0, None, "", "")
    keys = [*record_json(blank), "stop_reason", "stop_detail", "failures_by_type", "failures_command", "resume_command"]
    document: dict[str, Any] = dict.fromkeys(keys)
    document.update(id=execution_id, failures_by_type=[])
    if interrupt is not None:
        document.update(stop_reason="interrupted", stop_detail="interrupted before its inputs were recorded")
    return document
