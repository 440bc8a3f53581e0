"""Pipeline runs as plain files, next to a file store's executions.

Layout under the store's root directory (:mod:`pylo.stores.files`)::

    runs/<id>/run.log     one frame per write, append-only

``runs/`` is made by the first :meth:`FileRunStore.create_run`, never by a
read: a store written before pipelines existed reads as having no runs.
``<id>`` is the run id, encoded as execution ids are. Frames are the file
store's (``magic | body length | CRC32 | body``, magic ``PLRn``) and so is
their reading: a frame cut short or with a bad CRC at the end of the log is
a torn tail, ignored by readers and cut away by the next writer; anywhere
else it is damage, a :class:`~pylo.errors.StoreError`.

A body is ``length (u32) | run JSON | length (u32) | nodes JSON | blobs``.
The run JSON of the first frame (``"op": "create"``) holds the run; that of
each later frame (``"op": "update"``) holds one :class:`RunUpdate`'s status,
end time and options to merge, and the time it was written, so reading a
run's row never parses its nodes. The nodes JSON is a list with one list per
node, in the field order of :data:`_CREATED` (all of a new run's nodes) or
:data:`_UPDATED` (the new version of each node an update changes), where
``result`` and ``exception`` are the byte lengths of blobs that follow in
node order, or null. Nothing is pickled.

The first frame is written to a temporary file renamed to ``run.log``, so a
run exists whole or not at all; every later write is one append, which
commits it. Like the rest of the file store, nothing is fsynced: committed
writes survive a crash of the application, not necessarily a power loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pylo.errors import PipelineExists, PipelineNotFound, StoreError

# The file store's frame format and helpers; they move to a module of their
# own when the file store's log format is split out.
from pylo.stores import _filelog
from pylo.stores._filelog import FRAME_SIZE, dir_name, frame, write_atomically
from pylo.stores._run_rows import (
    check_new_run,
    check_update,
    last_change_per_key,
    node_problem,
    run_problem,
)
from pylo.stores.files import FileStore
from pylo.stores.runs import CONTROL_ACTIONS, NodeRow, RunRow, RunStore, RunUpdate, check_control

__all__ = ["FileRunStore"]

logger = logging.getLogger(__name__)

_RUNS = "runs"
_LOG = "run.log"
_MAGIC = b"PLRn"
_LENGTH = struct.Struct("<I")

#: Fields of a node in a create frame, in order; ``result``/``exception`` are blob lengths.
_CREATED = (
    "key", "seq", "task_name", "display_name", "kind", "upstream", "state", "attempts", "started_at", "ended_at",
    "result", "exc_type", "message", "traceback", "exception", "execution_id", "child_run_id",
)  # fmt: skip
#: Fields of a node in an update frame: what an update may change.
_UPDATED = (
    "key", "state", "attempts", "started_at", "ended_at",
    "result", "exc_type", "message", "traceback", "exception", "execution_id", "child_run_id",
)  # fmt: skip
_FIXED = ("seq", "task_name", "display_name", "kind", "upstream")


@dataclass(slots=True)
class _Replay:
    """A run as its log says, up to ``end`` (the offset where its last complete frame ends)."""

    run: RunRow
    nodes: dict[str, NodeRow]
    end: int


@dataclass(slots=True)
class _Writer:
    """What this process knows about a run it writes."""

    end: int
    keys: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Body:
    """A frame's body and where its node part and its blobs start."""

    data: bytes
    nodes_at: int
    blobs_at: int


def _node_entry(node: NodeRow, fields: tuple[str, ...]) -> list[Any]:
    entry = []
    for name in fields:
        value = getattr(node, name)
        if name in ("result", "exception"):
            value = None if value is None else len(value)
        elif name == "upstream":
            value = list(value)
        entry.append(value)
    return entry


def _encode(header: dict[str, Any], nodes: Sequence[NodeRow], fields: tuple[str, ...]) -> bytes:
    blobs: list[bytes] = []
    for node in nodes:
        for blob in (node.result, node.exception):
            if blob is not None:
                blobs.append(bytes(blob))
    # ensure_ascii (the default) writes lone surrogates as escapes, which
    # json.loads turns back into the same text.
    run_part = json.dumps(header, separators=(",", ":")).encode()
    node_part = json.dumps([_node_entry(node, fields) for node in nodes], separators=(",", ":")).encode()
    body = [_LENGTH.pack(len(run_part)), run_part, _LENGTH.pack(len(node_part)), node_part, *blobs]
    return frame(_MAGIC, b"".join(body))


def _number(value: Any, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    return value


def _text(value: Any, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


_TEXT = ("key", "task_name", "display_name", "kind", "state")
_OPTIONAL_TEXT = ("exc_type", "message", "traceback", "execution_id", "child_run_id")


def _types_problem(node: NodeRow) -> str | None:
    """Why a node read back cannot be right by its field types, or None (values: see node_problem)."""
    for name in _TEXT:
        if not isinstance(getattr(node, name), str):
            return f"a node with a {name} that is not text: {getattr(node, name)!r}"
    for name in _OPTIONAL_TEXT:
        value = getattr(node, name)
        if value is not None and not isinstance(value, str):
            return f"node {node.key!r} with a {name} that is not text"
    for name in ("seq", "attempts"):
        value = getattr(node, name)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"node {node.key!r} with a {name} that is not a whole number"
    for name in ("started_at", "ended_at"):
        value = getattr(node, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"node {node.key!r} with a {name} that is not a time"
    return None


class FileRunStore(RunStore):
    """Pipeline runs under the root directory of a :class:`~pylo.stores.files.FileStore`.

    Obtain one with ``store.runs()``. Safe to share between threads; any
    number of processes may use the same root, each writing its own runs.

    Args:
        store: The file store whose root keeps the runs.
    """

    def __init__(self, store: FileStore) -> None:
        self._files = store
        self.location = store.location
        self._runs = store.root / _RUNS
        # One writer per run: this process's writes are serialized.
        self._lock = threading.Lock()
        self._writers: dict[str, _Writer] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # -- plumbing --------------------------------------------------------------

    def _guard(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Turn OS errors into a StoreError naming the store (the OS message names the file)."""
        return _filelog.os_errors_named(self.location, action)

    def _not_found(self, run_id: str) -> PipelineNotFound:
        return PipelineNotFound(run_id, self.location)

    def _damaged(self, path: Path, what: str) -> StoreError:
        return StoreError(f"the store at {self.location} is damaged: {path} {what}")

    def _log(self, run_id: str) -> Path:
        """The log of an existing-or-not run; an impossible id is not found."""
        try:
            return self._runs / dir_name(run_id) / _LOG
        except ValueError:
            raise self._not_found(run_id) from None

    # -- reading the log -------------------------------------------------------

    def _frames(self, path: Path, start: int, *, run_id: str) -> Iterator[tuple[dict[str, Any], _Body, int]]:
        """Yield ``(run JSON, body, end)`` of each complete frame after ``start``."""
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed by the with below, after the not-found check
        except (FileNotFoundError, NotADirectoryError):
            # A directory without run.log is a run being created right now
            # (or whose creation crashed): it does not exist yet.
            raise self._not_found(run_id) from None
        with file:
            size = os.fstat(file.fileno()).st_size
            for body_offset, length, crc in _filelog.frames(self.location, file, path, _MAGIC, start, size):
                body = file.read(length)
                end = body_offset + length
                if len(body) < length or zlib.crc32(body) != crc:
                    # The first frame is renamed into place whole: only an
                    # append can be torn (cut short by a crash, or in progress).
                    if end == size and body_offset > FRAME_SIZE:
                        return
                    raise self._damaged(path, f"has a corrupt record at byte {body_offset}")
                try:
                    (run_length,) = _LENGTH.unpack_from(body)
                    nodes_at = _LENGTH.size + run_length
                    header = json.loads(body[_LENGTH.size : nodes_at])
                    if not isinstance(header, dict):
                        raise TypeError("the run part is not a JSON object")
                    (nodes_length,) = _LENGTH.unpack_from(body, nodes_at)
                    blobs_at = nodes_at + _LENGTH.size + nodes_length
                    if blobs_at > len(body):
                        raise ValueError("the node part is longer than the record")
                except (struct.error, ValueError, TypeError) as exc:
                    raise self._damaged(path, f"has an unreadable record at byte {body_offset} ({exc})") from exc
                yield header, _Body(body, nodes_at + _LENGTH.size, blobs_at), end

    def _replay(self, run_id: str, *, nodes: bool, results: bool = False) -> _Replay:
        """Read a run's log from the start; raises PipelineNotFound or StoreError.

        Args:
            run_id: The run.
            nodes: Read the nodes too (else only the run's row).
            results: Keep the nodes' results and exceptions.
        """
        path = self._log(run_id)
        replay: _Replay | None = None
        for header, body, end in self._frames(path, 0, run_id=run_id):
            first = replay is None
            try:
                if replay is None:
                    replay = _Replay(self._created(header), {}, 0)
                    if replay.run.id != run_id:
                        raise ValueError(f"it holds run {replay.run.id!r} instead of {run_id!r}")
                else:
                    replay.run = self._updated(replay.run, header)
                if nodes:
                    self._apply_nodes(replay.nodes, body, results, created=first)
            except (KeyError, TypeError, ValueError) as exc:
                raise self._damaged(path, f"holds a record that cannot be read ({type(exc).__name__}: {exc})") from exc
            replay.end = end
        if replay is None:
            # Written whole by a rename, so never legitimately empty.
            raise self._damaged(path, "holds no run")
        problem = run_problem(replay.run)
        for node in replay.nodes.values():
            if problem is not None:
                break
            problem = _types_problem(node) or node_problem(node)
        if problem is not None:
            raise self._damaged(path, f"holds a run with {problem}")
        return replay

    @staticmethod
    def _created(header: dict[str, Any]) -> RunRow:
        if header["op"] != "create":
            raise ValueError(f"its first record is {header['op']!r}, not 'create'")
        document = header["run"]
        options = document["options"]
        if not isinstance(options, dict):
            raise TypeError("options are not a JSON object")
        return RunRow(
            id=_text(document["id"]),
            parent_id=_text(document["parent_id"], optional=True),
            name=_text(document["name"]),
            status=_text(document["status"]),
            created_at=float(_number(document["created_at"])),
            updated_at=float(_number(document["updated_at"])),
            ended_at=_number(document["ended_at"], optional=True),
            codec=_text(document["codec"]),
            pid=_number(document["pid"], optional=True),
            host=_text(document["host"], optional=True),
            options=options,
        )

    @staticmethod
    def _updated(run: RunRow, header: dict[str, Any]) -> RunRow:
        if header["op"] != "update":
            raise ValueError(f"a record is {header['op']!r}, not 'update'")
        options = header["options"]
        if options is not None and not isinstance(options, dict):
            raise TypeError("options are not a JSON object")
        return dataclasses.replace(
            run,
            status=run.status if header["status"] is None else _text(header["status"]),
            ended_at=run.ended_at if header["ended_at"] is None else float(_number(header["ended_at"])),
            options=run.options if options is None else {**run.options, **options},
            updated_at=float(_number(header["updated_at"])),
        )

    @staticmethod
    def _apply_nodes(nodes: dict[str, NodeRow], body: _Body, results: bool, *, created: bool) -> None:
        """Apply a frame's nodes: all of them (the create frame) or the changed ones.

        Fields are unpacked by position (a record of the wrong length is a
        ValueError); their types are checked once, on the nodes a read
        returns (see :func:`_types_problem`), not on every version.
        """
        entries = json.loads(body.data[body.nodes_at : body.blobs_at])
        if not isinstance(entries, list):
            raise TypeError("the node part is not a JSON list")
        data = body.data
        cursor = body.blobs_at
        for entry in entries:
            if created:
                (key, seq, task_name, display_name, kind, upstream, state, attempts, started_at, ended_at,
                 result_size, exc_type, message, traceback, exc_size, execution_id, child_run_id) = entry  # fmt: skip
                if not isinstance(upstream, list):
                    raise TypeError(f"the upstream keys of node {key!r} are not a list")
                upstream = tuple(upstream)
            else:
                (key, state, attempts, started_at, ended_at,
                 result_size, exc_type, message, traceback, exc_size, execution_id, child_run_id) = entry  # fmt: skip
                old = nodes.get(key)
                if old is None:
                    raise ValueError(f"an update names node {key!r}, which the run does not have")
                seq, task_name, display_name, kind, upstream = (
                    old.seq, old.task_name, old.display_name, old.kind, old.upstream
                )  # fmt: skip
            result = exception = None
            if result_size is not None:
                if isinstance(result_size, bool) or not isinstance(result_size, int) or result_size < 0:
                    raise ValueError(f"node {key!r} has a result length of {result_size!r}")
                if results:
                    result = data[cursor : cursor + result_size]
                cursor += result_size
            if exc_size is not None:
                if isinstance(exc_size, bool) or not isinstance(exc_size, int) or exc_size < 0:
                    raise ValueError(f"node {key!r} has an exception length of {exc_size!r}")
                if results:
                    exception = data[cursor : cursor + exc_size]
                cursor += exc_size
            nodes[key] = NodeRow(
                key, seq, task_name, display_name, kind, upstream, state, attempts, started_at, ended_at,
                result, exc_type, message, traceback, exception, execution_id, child_run_id,
            )  # fmt: skip
        if cursor != len(data):
            raise ValueError("blob lengths do not add up")

    # -- writes ----------------------------------------------------------------

    def create_run(self, run: RunRow, nodes: Sequence[NodeRow]) -> None:
        """See :meth:`RunStore.create_run`.

        Raises:
            PipelineExists: A run with ``run.id`` exists.
            ValueError: Two nodes share a key or a ``seq``, a key is empty or
                too long, a state or status is unknown, or the run id is too
                long for a file name.
            TypeError: ``run.options`` is not JSON-serializable.
            StoreError: The directory cannot be written.
        """
        check_new_run(run, nodes)
        try:
            directory = self._runs / dir_name(run.id)
        except ValueError as exc:
            raise ValueError(f"pipeline run id {run.id[:40]!r} cannot be kept in the file store: {exc}") from None
        document = {
            "id": run.id,
            "parent_id": run.parent_id,
            "name": run.name,
            "status": run.status,
            "created_at": float(run.created_at),
            "updated_at": float(run.updated_at),
            "ended_at": None if run.ended_at is None else float(run.ended_at),
            "codec": run.codec,
            "pid": run.pid,
            "host": run.host,
            "options": dict(run.options),
        }
        data = _encode({"op": "create", "run": document}, nodes, _CREATED)
        with self._guard(f"create pipeline run {run.id!r}"):
            self._runs.mkdir(mode=0o700, exist_ok=True)
            try:
                # mkdir either creates or fails, atomically: of processes
                # creating the same id at once, exactly one wins.
                os.mkdir(directory, 0o700)
            except FileExistsError:
                raise PipelineExists(run.id, self.location) from None
            try:
                # The rename makes the run visible whole, or not at all.
                write_atomically(directory / _LOG, data)
            except BaseException:
                # Give the id back rather than leave a directory that claims it.
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
                raise
        with self._lock:
            self._writers[run.id] = _Writer(len(data), frozenset(node.key for node in nodes))

    def _writer(self, run_id: str, path: Path) -> _Writer:
        """This process's view of a run it writes; call with ``self._lock`` held.

        The first write of a run in this process (or one after someone else
        changed its log) replays the log, and cuts away what a crashed writer
        left half-appended.
        """
        writer = self._writers.get(run_id)
        if writer is not None:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                size = -1
            if size == writer.end:
                return writer
        replay = self._replay(run_id, nodes=True)
        size = os.stat(path).st_size
        if size > replay.end:
            logger.warning(
                "discarding %d bytes of an unfinished write at the end of %s (left by a crash)", size - replay.end, path
            )
            os.truncate(path, replay.end)
        writer = self._writers[run_id] = _Writer(replay.end, frozenset(replay.nodes))
        return writer

    def record_run(self, run_id: str, update: RunUpdate) -> None:
        """See :meth:`RunStore.record_run`.

        The update is one appended frame; a node changed twice in one update
        is written once, as its last change says.

        Raises:
            PipelineNotFound: No such run.
            StoreError: A node key in the update is not one of the run's, or
                the log cannot be written or is damaged.
            ValueError: A state or the status is unknown, or the status is
                the derived ``crashed``.
            TypeError: ``update.options`` is not JSON-serializable.
        """
        check_update(run_id, update)
        changed = last_change_per_key(update.nodes)
        path = self._log(run_id)
        header = {
            "op": "update",
            "updated_at": time.time(),
            "status": update.status,
            "ended_at": None if update.ended_at is None else float(update.ended_at),
            "options": None if update.options is None else dict(update.options),
        }
        data = _encode(header, changed, _UPDATED)
        with self._lock, self._guard(f"record an update of pipeline run {run_id!r}"):
            writer = self._writer(run_id, path)
            unknown = [node.key for node in changed if node.key not in writer.keys]
            if unknown:
                raise StoreError(
                    f"cannot record an update of pipeline run {run_id!r} in the store at {self.location}: "
                    f"it has no node with the key(s) {', '.join(map(repr, unknown))}; nothing was written"
                )
            writer.end = _filelog.append(path, data, writer.end)

    # -- reads -----------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRow:
        """See :meth:`RunStore.get_run`.

        Raises:
            PipelineNotFound: No such run.
            StoreError: Its log cannot be read or is damaged.
        """
        with self._guard(f"read pipeline run {run_id!r}"):
            return self._replay(run_id, nodes=False).run

    def list_runs(self) -> list[RunRow]:
        """See :meth:`RunStore.list_runs`.

        Raises:
            StoreError: The runs directory cannot be read, or a run's log is
                damaged (the message names every damaged one).
        """
        runs = []
        damaged = []
        with self._guard("list pipeline runs"):
            try:
                with os.scandir(self._runs) as entries:
                    names = [entry.name for entry in entries if not entry.name.startswith(".") and entry.is_dir()]
            except FileNotFoundError:
                return []  # no run was ever created here
        for name in names:
            try:
                runs.append(self.get_run(unquote(name)))
            except PipelineNotFound:
                continue  # being created
            except StoreError as exc:  # name them all, not just the first
                damaged.append(str(exc))
        if damaged:
            raise StoreError("; ".join(damaged))
        runs.sort(key=lambda run: (run.created_at, run.id))
        return runs

    def read_nodes(self, run_id: str, *, results: bool = True) -> list[NodeRow]:
        """See :meth:`RunStore.read_nodes`.

        Raises:
            PipelineNotFound: No such run.
            StoreError: Its log cannot be read or is damaged.
        """
        with self._guard(f"read the nodes of pipeline run {run_id!r}"):
            nodes = self._replay(run_id, nodes=True, results=results).nodes
        return sorted(nodes.values(), key=lambda node: node.seq)

    # -- control requests ----------------------------------------------------------

    def _control_path(self, run_id: str) -> Path:
        return self._log(run_id).with_name("control")

    def request_control(self, run_id: str, action: str | None) -> None:
        """See :meth:`RunStore.request_control`.

        Kept in a small file beside the run's log, replaced atomically: the
        log has one writer (its coordinator), the control file any number.
        """
        check_control(action)
        path = self._control_path(run_id)
        with self._guard(f"record a control request for pipeline run {run_id!r}"):
            if not path.parent.is_dir():
                raise self._not_found(run_id)
            if action is None:
                path.unlink(missing_ok=True)
                return
            temporary = path.with_name(f"control.{os.getpid()}.{threading.get_ident()}.tmp")
            temporary.write_text(action, encoding="utf-8")
            os.replace(temporary, path)

    def read_control(self, run_id: str) -> str | None:
        """See :meth:`RunStore.read_control`."""
        path = self._control_path(run_id)
        with self._guard(f"read the control request of pipeline run {run_id!r}"):
            try:
                action = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                if not path.parent.is_dir():
                    raise self._not_found(run_id) from None
                return None
        return action if action in CONTROL_ACTIONS else None
