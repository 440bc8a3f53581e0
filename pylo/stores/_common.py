"""Helpers shared by the store implementations (not part of the public API).

Both stores validate the same arguments and keep ``options`` as JSON text,
so they live here once instead of twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pylo.stores.base import FAILED, FINISHED, PENDING, BatchRecord, ExecutionRecord, ExecutionStatus, Flush

__all__ = [
    "batches_problem",
    "check_batches",
    "check_flush",
    "counts_problem",
    "dump_options",
    "labels_match",
    "load_options",
    "make_private_dirs",
    "record_fields",
]

logger = logging.getLogger(__name__)


def dump_options(owner_id: str, options: Mapping[str, Any], *, owner: str = "execution") -> str:
    """Serialize the options of an execution (or of another ``owner``, a pipeline run) as JSON text.

    Raises:
        TypeError: The options are not JSON-serializable.
    """
    try:
        # sort_keys makes the stored text stable, which keeps stores diffable.
        return json.dumps(dict(options), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"options of {owner} {owner_id!r} must be JSON-serializable: {exc}") from exc


def load_options(text: str) -> dict[str, Any]:
    """Parse options stored by :func:`dump_options`.

    Raises:
        ValueError: The text is not JSON or not a JSON object.
    """
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"options must be a JSON object, got {type(value).__name__}")
    return value


def check_batches(execution_id: str, batches: Sequence[BatchRecord]) -> None:
    """Reject batches whose shape is inconsistent before anything is written.

    Raises:
        ValueError: A batch's states do not have ``size`` bytes, or a number
            is negative.
    """
    for batch in batches:
        if batch.batch_no < 0 or batch.first_position < 0 or batch.size < 0:
            raise ValueError(
                f"batch {batch.batch_no} of execution {execution_id!r} has a negative "
                f"batch_no, first_position or size: {batch!r}"
            )
        if len(batch.states) != batch.size:
            raise ValueError(
                f"batch {batch.batch_no} of execution {execution_id!r} has {len(batch.states)} "
                f"state bytes for size {batch.size}; they must be equal"
            )


def counts_problem(total: int, finished: int, failed: int) -> str | None:
    """Why stored counts cannot be an execution's, or None when they can.

    Stores read counts back from disk, where anything may have happened to
    them; a negative one would make every later answer wrong, so readers
    refuse it as damage. (Counts are the coordinator's to keep consistent
    with the states; a store only persists them.)
    """
    if total < 0 or finished < 0 or failed < 0:
        return f"negative counts (total {total}, finished {finished}, failed {failed})"
    return None


#: Translating states with this deletes the valid state bytes: what is left is invalid.
_VALID_STATES = bytes([PENDING, FINISHED, FAILED])


def batches_problem(batches: Sequence[BatchRecord], total: int | None = None) -> str | None:
    """Why batches read back from a store cannot be right, or None when they can.

    Checks what a reader relies on and is cheap to check (C-speed byte
    operations, a Python loop over batches, never over inputs): one state
    byte per input, each a known state, and at least ``total`` inputs (the
    count the execution's record holds, read before the batches or with
    them: batches are only ever added). A hand-edited or damaged store must
    give a StoreError, not a ``zip()`` error or an answer that silently
    leaves inputs out.
    """
    held = 0
    for batch in batches:
        if len(batch.states) != batch.size:
            return f"{len(batch.states)} state bytes for the {batch.size} inputs of batch {batch.batch_no}"
        if batch.states.translate(None, _VALID_STATES):
            return f"an unknown state byte in batch {batch.batch_no}"
        held += batch.size
    if total is not None and held < total:
        numbers = {batch.batch_no for batch in batches}
        gaps = [number for number in range(len(batches) + 1) if number not in numbers][:3]
        return (
            f"batches holding {held:,} inputs while its record counts {total:,}: batches are missing "
            f"(the first numbers missing: {', '.join(map(str, gaps))})"
        )
    return None


def check_flush(execution_id: str, flush: Flush) -> None:
    """Reject a flush that asks for something a store never records.

    Raises:
        ValueError: The flush sets the derived ``CRASHED`` status, a stop
            reason without a status, or a stop detail without a reason.
    """
    if flush.status is not None and ExecutionStatus(flush.status) is ExecutionStatus.CRASHED:
        raise ValueError(f"execution {execution_id!r}: status 'crashed' is derived on read and never written")
    if flush.stop_reason is not None and flush.status is None:
        raise ValueError(
            f"execution {execution_id!r}: a stop reason ({flush.stop_reason!r}) is recorded with the status it "
            "explains; the flush sets none"
        )
    if flush.stop_detail is not None and flush.stop_reason is None:
        raise ValueError(
            f"execution {execution_id!r}: a stop detail needs a stop reason, got only {flush.stop_detail!r}"
        )


def record_fields(record: ExecutionRecord) -> dict[str, Any]:
    """An execution record as plain, JSON- and SQL-ready values (``options`` excluded).

    Both stores write these fields under these names; keeping the mapping
    here keeps their layouts from drifting apart.
    """
    return {
        "id": record.id,
        "parent_id": record.parent_id,
        "input_source": record.input_source,
        "status": ExecutionStatus(record.status).value,
        "created_at": float(record.created_at),
        "updated_at": float(record.updated_at),
        "ended_at": None if record.ended_at is None else float(record.ended_at),
        "task_name": record.task_name,
        "codec": record.codec,
        "total": record.total,
        "finished": record.finished,
        "failed": record.failed,
        "inputs_complete": bool(record.inputs_complete),
        "pid": record.pid,
        "host": record.host,
    }


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and every missing parent with mode 0o700, whatever the umask.

    ``Path.mkdir(parents=True)`` gives the parents it creates the umask's
    default mode (0o777 under ``umask 000``); a snapshot's inputs are
    nobody else's business, so every directory pylo makes is private.
    Directories that already exist keep their mode.

    Raises:
        OSError: A directory cannot be created (or ``path`` is a file:
            ``FileExistsError``).
    """
    missing: list[Path] = []
    cursor = path
    while not cursor.is_dir():
        if os.path.lexists(cursor):
            raise FileExistsError(f"{cursor} exists and is not a directory")
        missing.append(cursor)
        if cursor.parent == cursor:
            break
        cursor = cursor.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # another process made it a moment ago
        # mkdir's mode is masked by the umask; say exactly what we mean.
        os.chmod(directory, 0o700)


def labels_match(record: ExecutionRecord, labels: Mapping[str, str]) -> bool:
    """True when the record carries every one of ``labels``."""
    return all(record.labels.get(key) == value for key, value in labels.items())
