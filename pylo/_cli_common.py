"""What every ``pylo`` command shares: errors, the store, task imports and formatting.

The command line is a thin layer over :class:`~pylo.execution.Pylo`: it turns
flags into constructor arguments and records into text. Everything here is
about the boundary with the user: names they type (``tasks:process``, a
store directory, a URL) and text they read (durations, counts, failure
groups).
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pylo._retry_spec import CUSTOM
from pylo.execution import Pylo
from pylo.stores import SQLITE_FILE, is_store_url, open_store
from pylo.stores.base import ExecutionRecord, ExecutionStatus

__all__ = [
    "DEFAULT_STORE",
    "STORE_ENV",
    "CliError",
    "FailureGroup",
    "StoreChoice",
    "count_types",
    "describe_recorded_retry",
    "format_count",
    "format_duration",
    "format_time",
    "group_failures",
    "import_task",
    "normalize_message",
    "recorded_retry",
    "record_json",
    "resolve_execution_id",
    "run_seconds",
]

#: Store used when neither ``--store`` nor :data:`STORE_ENV` says otherwise.
DEFAULT_STORE = ".pylo"
#: Environment variable naming the store (a directory or a SQLAlchemy URL).
STORE_ENV = "PYLO_STORE"
# The file store's format marker; a directory holding it (and no SQLite
# database) is read as a files store, so snapshots written with
# store="files" from Python can be inspected too.
_FILES_MARKER = "pylo-files.json"


class CliError(Exception):
    """A problem the user can fix; shown as one line, exit status 2."""


# -- the store ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreChoice:
    """Which store a command uses, and how to name it in printed commands.

    Attributes:
        value: A directory or a SQLAlchemy URL, as given.
        explicit: True when it came from ``--store`` or :data:`STORE_ENV`,
            so printed commands must repeat it to mean the same store.
    """

    value: str
    explicit: bool

    @classmethod
    def resolve(cls, flag: str | None) -> StoreChoice:
        """``--store`` wins over :data:`STORE_ENV`, which wins over :data:`DEFAULT_STORE`."""
        if flag:
            return cls(flag, True)
        from_env = os.environ.get(STORE_ENV, "")
        if from_env:
            return cls(from_env, True)
        return cls(DEFAULT_STORE, False)

    @property
    def is_url(self) -> bool:
        """True for a store URL (``files:///...`` or a SQLAlchemy URL), False for a directory."""
        return is_store_url(self.value)

    def flag(self) -> str:
        """``--store VALUE`` for printed commands, or "" for the default store.

        A password in a URL is shown as ``***``: summaries end up in logs.
        """
        if not self.explicit:
            return ""
        shown = self.value
        if self.is_url and not shown.startswith("files://"):
            from sqlalchemy.engine import make_url

            try:
                shown = make_url(shown).render_as_string(hide_password=True)
            except Exception:  # not a URL SQLAlchemy can parse: opening it reported that already
                pass
        return f" --store {shlex.quote(shown)}"

    def open(self, *, must_exist: bool) -> Pylo:
        """Open the store as a :class:`Pylo` for reading.

        Args:
            must_exist: Refuse a directory that holds no store, instead of
                creating an empty one just to report that it is empty.

        Raises:
            CliError: No store where one must exist.
            StoreError: The store is damaged or foreign.
        """
        kind = self.pylo_arguments(must_exist=must_exist)["store"]
        # Reading never creates or writes a store (not even pylo's tables
        # in an empty database or file): the store is opened with create=False.
        opened = open_store(kind, None if self.is_url else self.value, create=not must_exist)
        return Pylo.local_multithread(None, 1, store=opened)

    def pylo_arguments(self, *, must_exist: bool) -> dict[str, Any]:
        """The ``store=`` argument for a Pylo constructor (whose first argument is :attr:`value`)."""
        if self.is_url:
            return {"store": self.value}
        root = Path(self.value)
        has_sqlite = (root / SQLITE_FILE).exists()
        has_files = (root / _FILES_MARKER).exists()
        if must_exist and not (has_sqlite or has_files):
            where = "the directory does not exist" if not root.exists() else f"it holds no {SQLITE_FILE}"
            raise CliError(
                f"no pylo store at {self.value} ({where}); run `pylo run` first, "
                f"or name the store with --store DIR|URL or {STORE_ENV}"
            )
        return {"store": "files" if has_files and not has_sqlite else "sqlite"}


# -- task functions -------------------------------------------------------------

_SPEC = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<function>[A-Za-z_][\w.]*)")


def import_attribute(spec: str, what: str = "FUNCTION", example: str = "tasks:process") -> tuple[Any, str]:
    """Import ``MODULE:ATTR`` from the current directory or ``PYTHONPATH``; return it and ``ATTR``.

    ``ATTR`` may be a dotted path (``Class.method``, ``obj.attr``).

    Raises:
        CliError: ``spec`` is malformed, the module cannot be imported, or
            the attribute is missing.
    """
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise CliError(f"{spec!r} is not MODULE:{what} (for example {example}, or my.package.{example})")
    module_name, path = match.group("module"), match.group("function")
    # A console script's sys.path starts with its own bin directory, not the
    # directory it runs in; users expect `pylo run tasks:f` next to tasks.py.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(
                f"cannot import module {module_name!r}: no module named {exc.name!r} in the current "
                "directory or on PYTHONPATH"
            ) from exc
        raise CliError(f"importing module {module_name!r} failed: {_one_line(exc)}") from exc
    except BaseException as exc:  # SyntaxError, an error at import time, even sys.exit()
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise CliError(f"importing module {module_name!r} failed: {_one_line(exc)}") from exc
    for part in path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {path!r}") from None
    return target, path


def import_task(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION`` (see :func:`import_attribute`).

    Raises:
        CliError: ``spec`` is malformed, the module cannot be imported, the
            attribute is missing or not callable.
    """
    target, _ = import_attribute(spec)
    if not callable(target):
        raise CliError(f"{spec} is a {type(target).__name__}, not a function")
    return target


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- retry policies -------------------------------------------------------------


def recorded_retry(options: Mapping[str, Any]) -> dict[str, Any] | str | None:
    """The retry policy an execution ran with, as data (see :mod:`pylo._retry_spec`).

    None for no retries, ``"custom"`` for a policy that cannot be made again
    from the record (made in Python; records older than ``retry_policy``).
    """
    if "retry_policy" in options:
        policy: dict[str, Any] | str | None = options["retry_policy"]
        return policy
    return None if options.get("retry") is None else CUSTOM


def describe_recorded_retry(options: Mapping[str, Any]) -> str | None:
    """``retries=3`` (attempts after the first), ``retry=custom tenacity policy``, or None for no retries."""
    policy = recorded_retry(options)
    if policy is None:
        return None
    if isinstance(policy, dict):
        return f"retries={int(policy['attempts']) - 1}"
    return "retry=custom tenacity policy"


def record_json(record: ExecutionRecord) -> dict[str, Any]:
    """An execution as the JSON object of ``--json`` output (documented keys: keep them)."""
    return {
        "id": record.id,
        "parent_id": record.parent_id,
        "input_source": record.input_source,
        "status": str(record.status),
        "task": record.task_name,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "ended_at": record.ended_at,
        "duration_seconds": run_seconds(record),
        "total": record.total,
        "finished": record.finished,
        "failed": record.failed,
        "pending": record.pending,
        "inputs_complete": record.inputs_complete,
        "pid": record.pid,
        "host": record.host,
        "options": dict(record.options),
        "labels": dict(record.labels),
    }


#: The id that names the newest execution on the command line.
LAST = "last"


def resolve_execution_id(pylo: Pylo, execution_id: str) -> str:
    """``last`` as the id of the newest execution (unless one is called ``last``); other ids as they are.

    Raises:
        CliError: ``last`` and the store has no executions.
    """
    if execution_id != LAST:
        return execution_id
    records = pylo.list_executions()  # oldest first
    if any(record.id == LAST for record in records):
        return LAST
    if not records:
        raise CliError(f"no executions in the store at {pylo.store.location}: `last` names none")
    return records[-1].id


# -- formatting -----------------------------------------------------------------


def format_count(value: int) -> str:
    """``1234567`` as ``1,234,567``."""
    return f"{value:,}"


def format_time(timestamp: float | None) -> str:
    """A POSIX time as local ``YYYY-MM-DD HH:MM:SS``, or ``-``."""
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    """``0.42s``, ``14.2s``, ``3m05s``, ``1h02m`` or ``2d03h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def run_seconds(record: ExecutionRecord) -> float:
    """How long an execution ran: to its end, its last heartbeat if it crashed, or now."""
    if record.ended_at is not None:
        end = record.ended_at
    elif record.status is ExecutionStatus.CRASHED:
        end = record.updated_at
    else:
        end = time.time()
    return max(0.0, end - record.created_at)


# -- failure groups -------------------------------------------------------------

# The parts of a message that vary from input to input, replaced in this
# order: quoted values first (so the digits inside them do not each become a
# `#`), then UUIDs, hex ids and numbers. A part must stand alone: `x1`,
# `v2`, `utf8` and `can't` are words, not values.
_QUOTED = re.compile(r"(?<!\w)(?:'[^'\n]*'|\"[^\"\n]*\")(?!\w)")
_WHOLLY_QUOTED = re.compile(r"\s*(?:'[^'\n]*'|\"[^\"\n]*\")\s*")
_UUID = re.compile(r"(?<![\w-])[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(?![\w-])")
# 0x7f3a..., or a digest with a letter in it (all digits is a number): 7
# or more hex digits, a decimal digit among them (a git sha, a request id),
# or 16 or more of any (words are shorter).
_HEX = re.compile(
    r"(?<![\w.])(?:0[xX][0-9a-fA-F]+|(?=\d*[a-fA-F])(?:(?=[a-fA-F]*\d)[0-9a-fA-F]{7,}|[0-9a-fA-F]{16,}))(?![\w.])"
)
# A minus sign belongs to the number after a space or an opening
# character (`code -3`, `(-3)`), never inside an id (`2026-11-22`).
_NUMBER = re.compile(r"(?:(?<![^\s(\[{=:,;])-)?(?<![\w.])\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?")


def _shape_values(text: str) -> str:
    """UUIDs as ``<uuid>``, hex ids and numbers as ``#``."""
    return _NUMBER.sub("#", _HEX.sub("#", _UUID.sub("<uuid>", text)))


def normalize_message(message: str | None) -> str:
    """The shape of a failure message, so that messages about different inputs group together.

    Numbers and hex ids (``0x7f3a90``, digests) become ``#``, UUIDs
    ``<uuid>``, quoted values ``'…'``: ``timed out for record 17`` and
    ``timed out for record 42`` are both ``timed out for record #``. A
    message that is one quoted value and nothing else (a ``KeyError``'s
    ``'user-17'``) keeps its words, so missing keys of one kind group
    (``'user-#'``) and different keys do not. Applying it twice changes
    nothing more.
    """
    if message is None:
        return ""
    if _WHOLLY_QUOTED.fullmatch(message):
        return " ".join(_shape_values(message).split())
    shaped = _QUOTED.sub(lambda m: m.group(0)[0] + "…" + m.group(0)[0], message)
    return " ".join(_shape_values(shaped).split())


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Failures of one exception type whose messages have one shape.

    Attributes:
        exception_type: Qualified type name, or None when not stored.
        shape: The normalized message.
        positions: Positions of the failed inputs, in order.
        example: One original message of the group.
    """

    exception_type: str | None
    shape: str
    positions: Sequence[int]
    example: str | None

    @property
    def title(self) -> str:
        """``Type: shape`` as shown to users."""
        if self.exception_type is None:
            return "(exception not stored: run with store_exceptions=True to keep it)"
        return f"{self.exception_type}: {self.shape}" if self.shape else self.exception_type


def group_failures(failures: Iterable[tuple[int, str | None, str | None]]) -> list[FailureGroup]:
    """Group failures by exception type and message shape, largest group first.

    Args:
        failures: ``(position, exception type, message)`` of each failure.
    """
    positions: dict[tuple[str | None, str], list[int]] = {}
    examples: dict[tuple[str | None, str], str | None] = {}
    for position, kind, message in failures:
        key = (kind, normalize_message(message))
        positions.setdefault(key, []).append(position)
        examples.setdefault(key, message)
    groups = [FailureGroup(key[0], key[1], sorted(found), examples[key]) for key, found in positions.items()]
    groups.sort(key=lambda g: (-len(g.positions), g.exception_type is None, g.exception_type or "", g.shape))
    return groups


def count_types(groups: Sequence[FailureGroup]) -> list[tuple[str | None, int, FailureGroup]]:
    """Per exception type: its failure count and its largest group, most failures first."""
    totals: Counter[str | None] = Counter()
    largest: dict[str | None, FailureGroup] = {}
    for group in groups:  # already largest first
        totals[group.exception_type] += len(group.positions)
        largest.setdefault(group.exception_type, group)
    return [(kind, count, largest[kind]) for kind, count in totals.most_common()]
