"""``pylo rm`` and ``pylo prune``: delete executions that are no longer needed.

Both commands check every execution before deleting any, with the rules of
:mod:`pylo._deleting`: a running execution, a batch node's execution of a
pipeline run, and an execution that a resume still reads are kept. ``rm``
refuses the whole command when one id is refused (one line per problem);
``prune`` deletes what its filters select and says what it kept and why.
Executions go newest lineage first, so a resume goes before the execution
it resumed.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence

from pylo import _deleting
from pylo._cli_common import CliError, StoreChoice, resolve_execution_id
from pylo.errors import DamagedExecutions, ExecutionInUse, ExecutionNotFound
from pylo.execution import Pylo
from pylo.stores.base import ExecutionRecord, ExecutionStatus

__all__ = ["add_housekeeping_parser", "kept_reasons", "parse_age", "prune_command", "rm_command"]

#: ``pylo rm``'s exit status when it refused ids (and deleted nothing).
EXIT_REFUSED = 1

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_age(text: str) -> float:
    """``30s``, ``15m``, ``12h``, ``7d`` or ``2w`` in seconds (an argparse type)."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"must be a number and a unit (s, m, h, d, w), such as 7d or 12h; got {text!r}"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def add_housekeeping_parser(
    command: Callable[[str, str], argparse.ArgumentParser],
    labels_option: Callable[[argparse.ArgumentParser, str], None],
) -> None:
    """Add ``pylo rm`` and ``pylo prune``.

    Args:
        command: Makes a top-level subcommand parser (name, summary).
        labels_option: Adds the repeatable ``--label KEY=VALUE`` (with a help text).
    """
    rm = command("rm", "delete executions (a resume before the execution it resumed)")
    rm.add_argument("execution_ids", metavar="ID", nargs="+", help="execution ids, or last for the newest")
    rm.add_argument("--dry-run", action="store_true", help="only say what would be deleted")

    prune = command("prune", "delete the executions a status and an age select")
    prune.add_argument(
        "--status",
        dest="statuses",
        action="append",
        default=[],
        choices=[str(s) for s in ExecutionStatus if s is not ExecutionStatus.RUNNING],
        help="only executions with this status (repeatable: any of them)",
    )
    prune.add_argument(
        "--older-than",
        type=parse_age,
        metavar="AGE",
        help="only executions that ended (or last wrote, if they never ended) more than AGE ago: 30m, 12h, 7d, 2w",
    )
    labels_option(prune, "only executions with this label (repeatable: all of them)")
    prune.add_argument("--dry-run", action="store_true", help="only list what would be deleted, and what is kept")


# -- what may go --------------------------------------------------------------------


def _records(pylo: Pylo) -> list[ExecutionRecord]:
    """Every execution that can be read (a damaged one is left to `pylo rm ID`)."""
    try:
        return pylo.list_executions()
    except DamagedExecutions as exc:
        return exc.executions


def _dependents(record: ExecutionRecord, records: Sequence[ExecutionRecord], going: set[str]) -> list[str]:
    """Executions not going that resumed ``record`` and still read it."""
    return [
        other.id
        for other in records
        if other.id != record.id and other.id not in going and record.id in (other.parent_id, other.input_source)
    ]


def kept_reasons(
    pylo: Pylo, chosen: Sequence[ExecutionRecord], records: Sequence[ExecutionRecord], flag: str
) -> dict[str, str]:
    """``id -> why it is kept`` for the chosen executions that may not go, all going together.

    An execution whose resume is kept is kept too, so this repeats until
    nothing changes.
    """
    kept: dict[str, str] = {}
    owners = _deleting.pipeline_owners(pylo.store, [record.id for record in chosen])
    for record in chosen:
        problem = _deleting.running_problem(record)
        if problem is not None and record.host == socket.gethostname():
            problem += f"; stop it first (Ctrl-C where it runs, or kill {record.pid})"
        owner = owners.get(record.id)
        if problem is None and owner is not None:
            problem = _deleting.owned_problem(owner)
        if problem is not None:
            kept[record.id] = problem
    changed = True
    while changed:
        changed = False
        going = {record.id for record in chosen if record.id not in kept}
        for record in chosen:
            if record.id in kept:
                continue
            users = _dependents(record, records, going)
            if users:
                one = len(users) == 1
                kept[record.id] = (
                    f"{'execution' if one else 'executions'} {', '.join(users)} resumed it and still "
                    f"{'reads' if one else 'read'} its inputs; delete {'it' if one else 'them'} first, "
                    f"or together: pylo rm {' '.join(users)} {record.id}{flag}"
                )
                changed = True
    return kept


def _delete(pylo: Pylo, records: Sequence[ExecutionRecord], *, dry_run: bool, command: str) -> int:
    """Delete (or list) ``records`` newest lineage first; a refusal found only now is one line."""
    status = 0
    for record in _deleting.deletion_order(records):
        if dry_run:
            print(f"would delete {record.id}")
            continue
        try:
            pylo.delete_execution(record.id)
        except (ExecutionInUse, ExecutionNotFound) as exc:  # it changed since we looked
            print(f"pylo {command}: {' '.join(str(exc).split())}", file=sys.stderr)
            status = EXIT_REFUSED
            continue
        print(f"deleted {record.id}", flush=True)
    return status


# -- the commands ---------------------------------------------------------------------


def rm_command(args: argparse.Namespace, store: StoreChoice) -> int:
    """``pylo rm ID...``: delete these executions, or none of them when one is refused."""
    with store.open(must_exist=True) as pylo:
        records = _records(pylo)
        by_id = {record.id: record for record in records}
        chosen: dict[str, ExecutionRecord] = {}
        problems: list[str] = []
        for given in args.execution_ids:
            execution_id = resolve_execution_id(pylo, given)
            record = by_id.get(execution_id)
            if record is None:
                try:
                    record = pylo.store.get_execution(execution_id)  # damaged, yet its record reads
                except ExecutionNotFound:
                    problems.append(f"no execution {execution_id} in the store at {pylo.store.location}")
                    continue
            chosen[record.id] = record
        kept = kept_reasons(pylo, list(chosen.values()), records, store.flag())
        problems += [f"cannot delete {execution_id}: {why}" for execution_id, why in kept.items()]
        if problems:
            for problem in problems:
                print(f"pylo rm: {problem}", file=sys.stderr)
            print("pylo rm: nothing was deleted", file=sys.stderr)
            return EXIT_REFUSED
        return _delete(pylo, list(chosen.values()), dry_run=args.dry_run, command="rm")


def prune_command(args: argparse.Namespace, store: StoreChoice) -> int:
    """``pylo prune --status S --older-than AGE``: delete what the filters select, keeping what is in use."""
    if not args.statuses and args.older_than is None and not args.labels:
        raise CliError(
            "pylo prune needs --status STATUS, --older-than AGE or --label KEY=VALUE: without a filter it "
            "would delete every execution; to delete given ones, use pylo rm ID..."
        )
    labels = dict(args.labels)
    now = time.time()
    with store.open(must_exist=True) as pylo:
        records = _records(pylo)
        chosen = [
            record
            for record in records
            if (not args.statuses or str(record.status) in args.statuses)
            and (args.older_than is None or now - _last_written(record) > args.older_than)
            and all(record.labels.get(key) == value for key, value in labels.items())
        ]
        kept = kept_reasons(pylo, chosen, records, store.flag())
        for execution_id, why in kept.items():
            print(f"pylo prune: kept {execution_id}: {why}", file=sys.stderr)
        going = [record for record in chosen if record.id not in kept]
        status = _delete(pylo, going, dry_run=args.dry_run, command="prune")
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(going)} execution{'' if len(going) == 1 else 's'}, kept {len(kept)} in use", file=sys.stderr)
    return status


def _last_written(record: ExecutionRecord) -> float:
    """When the execution ended, or wrote last if it never ended (it crashed)."""
    return record.ended_at if record.ended_at is not None else record.updated_at
