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

A body is ``length of a JSON header (u32) | JSON header | blobs``. The
header of the first frame (``"op": "create"``) holds the run and every node;
each later one (``"op": "update"``) holds one :class:`RunUpdate`: the new
version of each node it changes, the status, end time and options to merge,
and the time it was written. Each node gives the byte lengths of its result
and exception, which follow as blobs in node order. Nothing is pickled.

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
from pylo.stores._run_rows import (
    check_new_run,
    check_update,
    last_change_per_key,
    node_problem,
    run_problem,
)

# The file store's frame format and helpers; they move to a module of their
# own when the file store's log format is split out.
from pylo.stores.files import _FRAME, FileStore, _dir_name, _frame, _write_atomically
from pylo.stores.runs import NodeRow, RunRow, RunStore, RunUpdate

__all__ = ["FileRunStore"]

logger = logging.getLogger(__name__)

_RUNS = "runs"
_LOG = "run.log"
_MAGIC = b"PLRn"
_HEADER_LENGTH = struct.Struct("<I")

#: NodeRow fields an update may change (and every update frame repeats).
_MUTABLE = (
    "state",
    "attempts",
    "started_at",
    "ended_at",
    "exc_type",
    "message",
    "traceback",
    "execution_id",
    "child_run_id",
)
_FIXED = ("seq", "task_name", "display_name", "kind")


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


def _node_header(node: NodeRow, *, fixed: bool) -> dict[str, Any]:
    header: dict[str, Any] = {"key": node.key}
    if fixed:
        header.update({name: getattr(node, name) for name in _FIXED})
        header["upstream"] = list(node.upstream)
    header.update({name: getattr(node, name) for name in _MUTABLE})
    header["result"] = None if node.result is None else len(node.result)
    header["exception"] = None if node.exception is None else len(node.exception)
    return header


def _encode(header: dict[str, Any], nodes: Sequence[NodeRow]) -> bytes:
    blobs: list[bytes] = []
    for node in nodes:
        for blob in (node.result, node.exception):
            if blob is not None:
                blobs.append(bytes(blob))
    # ensure_ascii (the default) writes lone surrogates as escapes, which
    # json.loads turns back into the same text.
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return _frame(_MAGIC, b"".join([_HEADER_LENGTH.pack(len(encoded)), encoded, *blobs]))


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

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn OS errors into a StoreError naming the store (the OS message names the file)."""
        try:
            yield
        except OSError as exc:
            raise StoreError(f"cannot {action} in the store at {self.location}: {exc}") from exc

    def _not_found(self, run_id: str) -> PipelineNotFound:
        return PipelineNotFound(run_id, self.location)

    def _damaged(self, path: Path, what: str) -> StoreError:
        return StoreError(f"the store at {self.location} is damaged: {path} {what}")

    def _log(self, run_id: str) -> Path:
        """The log of an existing-or-not run; an impossible id is not found."""
        try:
            return self._runs / _dir_name(run_id) / _LOG
        except ValueError:
            raise self._not_found(run_id) from None

    # -- reading the log -------------------------------------------------------

    def _frames(self, path: Path, start: int, *, run_id: str) -> Iterator[tuple[dict[str, Any], bytes, int]]:
        """Yield ``(header, blobs, end)`` of each complete frame after ``start``."""
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed by the with below, after the not-found check
        except (FileNotFoundError, NotADirectoryError):
            # A directory without run.log is a run being created right now
            # (or whose creation crashed): it does not exist yet.
            raise self._not_found(run_id) from None
        with file:
            size = os.fstat(file.fileno()).st_size
            for body_offset, length, crc in self._files._frames(file, path, _MAGIC, start, size):
                body = file.read(length)
                end = body_offset + length
                if len(body) < length or zlib.crc32(body) != crc:
                    # The first frame is renamed into place whole: only an
                    # append can be torn (cut short by a crash, or in progress).
                    if end == size and body_offset > _FRAME.size:
                        return
                    raise self._damaged(path, f"has a corrupt record at byte {body_offset}")
                try:
                    (header_length,) = _HEADER_LENGTH.unpack_from(body)
                    header = json.loads(body[_HEADER_LENGTH.size : _HEADER_LENGTH.size + header_length])
                    if not isinstance(header, dict):
                        raise TypeError("the header is not a JSON object")
                except (struct.error, ValueError, TypeError) as exc:
                    raise self._damaged(path, f"has an unreadable record at byte {body_offset} ({exc})") from exc
                yield header, body[_HEADER_LENGTH.size + header_length :], end

    def _replay(self, run_id: str, *, results: bool) -> _Replay:
        """Read a run's log from the start; raises PipelineNotFound or StoreError."""
        path = self._log(run_id)
        replay: _Replay | None = None
        for header, blobs, end in self._frames(path, 0, run_id=run_id):
            try:
                if replay is None:
                    replay = self._created(header, blobs, results)
                    if replay.run.id != run_id:
                        raise ValueError(f"it holds run {replay.run.id!r} instead of {run_id!r}")
                else:
                    self._apply(replay, header, blobs, results)
            except (KeyError, TypeError, ValueError) as exc:
                raise self._damaged(path, f"holds a record that cannot be read ({type(exc).__name__}: {exc})") from exc
            replay.end = end
        if replay is None:
            # Written whole by a rename, so never legitimately empty.
            raise self._damaged(path, "holds no run")
        problem = run_problem(replay.run)
        if problem is None:
            problem = next(filter(None, map(node_problem, replay.nodes.values())), None)
        if problem is not None:
            raise self._damaged(path, f"holds a run with {problem}")
        return replay

    @staticmethod
    def _blobs(headers: list[Any], blobs: bytes, results: bool) -> list[tuple[bytes | None, bytes | None]]:
        cursor = 0
        found = []
        for header in headers:
            pair: list[bytes | None] = []
            for name in ("result", "exception"):
                length = _number(header[name], optional=True)
                if length is None:
                    pair.append(None)
                    continue
                if length < 0 or cursor + length > len(blobs):
                    raise ValueError("blob lengths do not add up")
                pair.append(blobs[cursor : cursor + length] if results else None)
                cursor += length
            found.append((pair[0], pair[1]))
        if cursor != len(blobs):
            raise ValueError("blob lengths do not add up")
        return found

    @staticmethod
    def _node(base: dict[str, Any], header: dict[str, Any], blob: tuple[bytes | None, bytes | None]) -> NodeRow:
        upstream = base["upstream"]
        if not isinstance(upstream, list):
            raise TypeError("upstream is not a list")
        return NodeRow(
            key=_text(header["key"]),
            seq=_number(base["seq"]),
            task_name=_text(base["task_name"]),
            display_name=_text(base["display_name"]),
            kind=_text(base["kind"]),
            upstream=tuple(upstream),
            state=_text(header["state"]),
            attempts=_number(header["attempts"]),
            started_at=_number(header["started_at"], optional=True),
            ended_at=_number(header["ended_at"], optional=True),
            result=blob[0],
            exc_type=_text(header["exc_type"], optional=True),
            message=_text(header["message"], optional=True),
            traceback=_text(header["traceback"], optional=True),
            exception=blob[1],
            execution_id=_text(header["execution_id"], optional=True),
            child_run_id=_text(header["child_run_id"], optional=True),
        )

    def _created(self, header: dict[str, Any], blobs: bytes, results: bool) -> _Replay:
        if header["op"] != "create":
            raise ValueError(f"its first record is {header['op']!r}, not 'create'")
        document = header["run"]
        options = document["options"]
        if not isinstance(options, dict):
            raise TypeError("options are not a JSON object")
        run = RunRow(
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
        node_headers = header["nodes"]
        nodes = {}
        for node_header, blob in zip(node_headers, self._blobs(node_headers, blobs, results), strict=True):
            node = self._node(node_header, node_header, blob)
            nodes[node.key] = node
        return _Replay(run, nodes, 0)

    def _apply(self, replay: _Replay, header: dict[str, Any], blobs: bytes, results: bool) -> None:
        if header["op"] != "update":
            raise ValueError(f"a record is {header['op']!r}, not 'update'")
        node_headers = header["nodes"]
        for node_header, blob in zip(node_headers, self._blobs(node_headers, blobs, results), strict=True):
            old = replay.nodes.get(node_header["key"])
            if old is None:
                raise ValueError(f"an update names node {node_header['key']!r}, which the run does not have")
            base = {name: getattr(old, name) for name in _FIXED}
            base["upstream"] = list(old.upstream)
            replay.nodes[old.key] = self._node(base, node_header, blob)
        run = replay.run
        options = header["options"]
        if options is not None and not isinstance(options, dict):
            raise TypeError("options are not a JSON object")
        replay.run = dataclasses.replace(
            run,
            status=run.status if header["status"] is None else _text(header["status"]),
            ended_at=run.ended_at if header["ended_at"] is None else float(_number(header["ended_at"])),
            options=run.options if options is None else {**run.options, **options},
            updated_at=float(_number(header["updated_at"])),
        )

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
            directory = self._runs / _dir_name(run.id)
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
        header = {"op": "create", "run": document, "nodes": [_node_header(node, fixed=True) for node in nodes]}
        data = _encode(header, nodes)
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
                _write_atomically(directory / _LOG, data)
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
        replay = self._replay(run_id, results=False)
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
            "nodes": [_node_header(node, fixed=False) for node in changed],
        }
        data = _encode(header, changed)
        with self._lock, self._guard(f"record an update of pipeline run {run_id!r}"):
            writer = self._writer(run_id, path)
            unknown = [node.key for node in changed if node.key not in writer.keys]
            if unknown:
                raise StoreError(
                    f"cannot record an update of pipeline run {run_id!r} in the store at {self.location}: "
                    f"it has no node with the key(s) {', '.join(map(repr, unknown))}; nothing was written"
                )
            writer.end = self._files._append(path, data, writer.end)

    # -- reads -----------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRow:
        """See :meth:`RunStore.get_run`.

        Raises:
            PipelineNotFound: No such run.
            StoreError: Its log cannot be read or is damaged.
        """
        with self._guard(f"read pipeline run {run_id!r}"):
            return self._replay(run_id, results=False).run

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
            nodes = self._replay(run_id, results=results).nodes
        return sorted(nodes.values(), key=lambda node: node.seq)
