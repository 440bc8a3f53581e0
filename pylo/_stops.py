"""Why an execution ended before every input was attempted: the reason recorded with its end.

The coordinator knows why it stops taking inputs (a failure budget, a
requested stop, an interrupt, an error it cannot go on after), so it
records a short code and a detail in words with the final status, in the
same flush (``Flush.stop_reason``, ``Flush.stop_detail``); readers find them
on ``ExecutionRecord``. Two kinds of record carry none: a ``crashed``
execution (its process died before it could say anything; the status is
derived on read) and one recorded by a pylo that did not keep reasons. For
those, :func:`observed` derives a reason from the status, the counts and
the options, by the rules the coordinator stops by.

Details name options as Python does (``max_failures=3``); the ``pylo``
command says them in its flags' words (``_cli_summary``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pylo._tracebacks import qualified_name, safe_str
from pylo.errors import InitializerFailed, StoreError
from pylo.stores.base import ExecutionRecord, ExecutionStatus

__all__ = [
    "ABORTED",
    "CODES",
    "CRASHED",
    "INTERRUPTED",
    "MAX_FAILURES",
    "MAX_WORKER_FAILURES",
    "STOP_REQUESTED",
    "UNRECORDED_INTERRUPT",
    "Stop",
    "Terminated",
    "ended_by",
    "observed",
    "stopped",
]

#: ``max_failures`` failures were seen: the execution stopped taking inputs.
MAX_FAILURES = "max_failures"
#: Every worker saw ``max_worker_failures`` failures: none takes inputs any more.
MAX_WORKER_FAILURES = "max_worker_failures"
#: Its pipeline run asked it to stop (pausing or cancelling the run).
STOP_REQUESTED = "stop_requested"
#: Ctrl-C, SIGTERM, SystemExit or another ``BaseException``.
INTERRUPTED = "interrupted"
#: pylo could not go on: a worker initializer raised, the store refused a write...
ABORTED = "aborted"
#: Its process died without a word (never recorded: derived on read).
CRASHED = "crashed"
#: Every code, for the documentation's sake and for checks.
CODES = frozenset({MAX_FAILURES, MAX_WORKER_FAILURES, STOP_REQUESTED, INTERRUPTED, ABORTED, CRASHED})

#: The derived detail of an interrupt recorded by a pylo that did not say which.
UNRECORDED_INTERRUPT = "an interrupt (Ctrl-C, SIGTERM or an exit; which one was not recorded)"

#: Longest detail kept: an exception's message can be a page long (the error raised to the caller has it all).
_MAX_DETAIL = 500


@dataclass(frozen=True, slots=True)
class Stop:
    """A stop reason: one of :data:`CODES` and the same in words."""

    code: str
    detail: str


class Terminated(SystemExit):
    """SIGTERM, raised while an execution runs (see ``pylo._running``): a ``SystemExit(143)`` that says so."""


def stopped(code: str | None, failed: int, max_failures: int | None, max_worker_failures: int) -> Stop:
    """Why an execution ended ``stopped``, given why it stopped taking inputs.

    Args:
        code: :data:`MAX_FAILURES` or :data:`STOP_REQUESTED` when one of
            those ended the feeding of inputs, None when it ran dry because
            every worker's budget was spent.
        failed: Its failed inputs at the end (a resume inherits none).
        max_failures: The execution's budget, or None.
        max_worker_failures: Each worker's budget.
    """
    if code == MAX_FAILURES:
        return Stop(MAX_FAILURES, f"{_failures(failed)} reached max_failures={max_failures}")
    if code == STOP_REQUESTED:
        return Stop(STOP_REQUESTED, "a stop was requested (its pipeline run was pausing or cancelling)")
    return Stop(
        MAX_WORKER_FAILURES,
        f"every worker reached max_worker_failures={max_worker_failures}, with {_failures(failed)} in all",
    )


def ended_by(exc: BaseException, *, before_running: bool = False, by_task: bool = False) -> Stop:
    """Why an execution that ``exc`` cut short ended: ``interrupted`` or ``aborted``.

    Args:
        exc: What ended it.
        before_running: It came before any input ran (while the inputs
            were recorded, or the workers made ready).
        by_task: A task raised it (workers never see a Ctrl-C or SIGTERM:
            the coordinator's thread takes them, and worker processes
            ignore them), so it is named as the task's, not as a signal.
    """
    if by_task and not isinstance(exc, Exception):
        return Stop(INTERRUPTED, _bounded(f"the task raised {_described(exc)}"))
    if isinstance(exc, Exception):
        if isinstance(exc, InitializerFailed):
            said = f"the initializer {exc.initializer} failed in {exc.worker}: {exc.type_name}: {exc.error_message}"
        elif isinstance(exc, StoreError):
            said = f"the store failed: {safe_str(exc)}"
        else:
            said = _described(exc)
        when = "before any input ran: " if before_running else ""
        return Stop(ABORTED, _bounded(when + said))
    if isinstance(exc, Terminated):
        return Stop(INTERRUPTED, "SIGTERM")
    if isinstance(exc, KeyboardInterrupt):
        return Stop(INTERRUPTED, "Ctrl-C")  # what raises KeyboardInterrupt
    if isinstance(exc, SystemExit):
        return Stop(INTERRUPTED, _bounded(f"SystemExit({exc.code!r})") if exc.code is not None else "SystemExit")
    return Stop(INTERRUPTED, _bounded(_described(exc)))


def observed(record: ExecutionRecord) -> ExecutionRecord:
    """``record`` with a stop reason when it ended early without a recorded one, else ``record`` itself."""
    if record.stop_reason is not None and record.status is not ExecutionStatus.CRASHED:
        return record
    stop = _derived(record)
    if stop is None:
        return record
    return dataclasses.replace(record, stop_reason=stop.code, stop_detail=stop.detail)


def _derived(record: ExecutionRecord) -> Stop | None:
    """A reason read from the status, counts and options (the rules the coordinator stops by)."""
    status = record.status
    if status is ExecutionStatus.STOPPED:
        limit = record.options.get("max_failures")
        per_worker = record.options.get("max_worker_failures")
        per_worker = per_worker if isinstance(per_worker, int) else 0
        if isinstance(limit, int) and record.failed >= limit:
            return stopped(MAX_FAILURES, record.failed, limit, per_worker)
        if per_worker and record.failed >= per_worker:
            return stopped(None, record.failed, None, per_worker)
        return stopped(STOP_REQUESTED, record.failed, None, per_worker)
    if status is ExecutionStatus.INTERRUPTED:
        return Stop(INTERRUPTED, UNRECORDED_INTERRUPT)
    if status is ExecutionStatus.ABORTED:
        if not record.inputs_complete:
            return Stop(ABORTED, "its inputs could not be read; nothing ran")
        return Stop(
            ABORTED,
            "pylo could not go on (a worker initializer raised, the Dask cluster lost a chunk or had no workers, "
            "or the store refused a write; see the error)",
        )
    if status is ExecutionStatus.CRASHED:
        return Stop(CRASHED, "its process died without a word (killed, or out of memory)")
    return None


def _failures(count: int) -> str:
    return f"{count:,} failure{'s' if count != 1 else ''}"


def _described(exc: BaseException) -> str:
    message = safe_str(exc)
    return f"{qualified_name(type(exc))}: {message}" if message else qualified_name(type(exc))


def _bounded(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"
