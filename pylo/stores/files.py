"""A store of plain files in a directory, no database needed.

Layout under the root directory::

    pylo-files.json                 {"format": "pylo-files", "version": 1}
    executions/<id>/execution.json  the record, replaced atomically
    executions/<id>/inputs.log      one frame per batch, append-only
    executions/<id>/outcomes.log    one frame per flush, append-only

``<id>`` is the execution id, percent-encoded where it is not a safe file
name. Every log frame is ``magic (4 bytes) | body length (u64) | CRC32 of
the body (u32) | body``, little-endian. Nothing is pickled: bodies are
``struct`` fields, JSON and raw bytes, so any pylo can open any store safely.

An ``inputs.log`` body is ``batch_no, first_position, size (u64 each), flags
(u8), CRC32 of the preceding fields and the states (u32) | states | payload``.
Flags say whether a payload follows and whether the frame ends its
``add_batches`` call: readers take the batches of a call only once its last
frame is there, which makes the call atomic.

An ``outcomes.log`` body is ``length of a JSON header (u32) | JSON header |
state bytes | exception bytes | result bytes``. The header holds the
execution's counts and status after the flush, and the shape of each state,
failure and result; the raw bytes follow in that order.

Commit points are appends. Appending a frame commits a write; rewriting
``execution.json`` afterwards only caches the counts, along with the log
offsets it covers. A reader that finds complete frames past those offsets (a
crash came between the two steps, or a writer is between them right now)
applies them itself. A frame cut short by a crash, or one still being
written, fails its length or CRC check and is ignored; the next writer of
that execution truncates it away before appending.

Like SQLite with ``synchronous=NORMAL``, files are not fsynced: committed data
survives a crash of the application, not necessarily a power loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, unquote

from pylo.errors import DamagedExecutions, ExecutionExists, ExecutionNotFound, StoreError
from pylo.stores._common import (
    batches_problem,
    check_batches,
    check_flush,
    counts_problem,
    dump_options,
    record_fields,
)
from pylo.stores.base import (
    FORMAT_VERSION,
    BatchRecord,
    ExecutionRecord,
    ExecutionStatus,
    FailureRow,
    Flush,
    Store,
)

if TYPE_CHECKING:
    from pylo.stores.runs import RunStore

__all__ = ["FORMAT_NAME", "MARKER_NAME", "FileStore"]

logger = logging.getLogger(__name__)

#: Value of ``format`` in the marker file.
FORMAT_NAME = "pylo-files"
#: Name of the marker file at the root of a file store.
MARKER_NAME = "pylo-files.json"

_EXECUTIONS = "executions"
_RECORD = "execution.json"
_INPUTS = "inputs.log"
_OUTCOMES = "outcomes.log"

_FRAME = struct.Struct("<4sQI")
_INPUTS_MAGIC = b"PLIb"
_OUTCOMES_MAGIC = b"PLOf"
_BATCH_FIELDS = struct.Struct("<QQQB")
_BATCH_CRC = struct.Struct("<I")
_BATCH_HEAD_SIZE = _BATCH_FIELDS.size + _BATCH_CRC.size
_HAS_PAYLOAD = 0x01
_ENDS_CALL = 0x02
_HEADER_LENGTH = struct.Struct("<I")

# Characters left as they are in directory names; everything else, "%"
# included, is percent-encoded, so the mapping is reversible.
_SAFE_CHARS = "@+=,"
# Most file systems allow 255 bytes per name; keep a margin.
_MAX_NAME = 200
_BLANK_CHUNK = 1 << 16


def _dir_name(execution_id: str) -> str:
    """The directory name of an execution.

    Raises:
        ValueError: The id is empty or too long for a file name.
    """
    if not execution_id:
        raise ValueError("execution id must not be empty")
    name = quote(execution_id, safe=_SAFE_CHARS)
    if name.startswith("."):
        # "." and ".." are not directories of their own, and names starting
        # with a dot are reserved for temporary files.
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        raise ValueError(
            f"execution id {execution_id[:40]!r}... is too long for the file store "
            f"({len(name)} characters once encoded, at most {_MAX_NAME})"
        )
    return name


def _frame(magic: bytes, body: bytes) -> bytes:
    return _FRAME.pack(magic, len(body), zlib.crc32(body)) + body


def _file_size(path: Path) -> int:
    return os.stat(path).st_size


def _size_or_zero(path: Path) -> int:
    try:
        return _file_size(path)
    except OSError:
        return 0


@dataclass(frozen=True, slots=True)
class _InputEntry:
    """Where one batch of ``inputs.log`` is, and its initial states."""

    batch_no: int
    first_position: int
    size: int
    flags: int
    body_offset: int
    body_length: int
    crc: int
    states: bytes | None


@dataclass(slots=True)
class _Index:
    """Cached ``batch_no -> _InputEntry`` of one ``inputs.log``, extended as it grows."""

    first: bytes
    end: int
    entries: dict[int, _InputEntry]


@dataclass(slots=True)
class _Writer:
    """What this process knows about an execution it writes."""

    record: ExecutionRecord
    inputs_end: int
    outcomes_end: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A decoded ``outcomes.log`` frame; ``blobs`` is the file offset of its raw bytes."""

    header: dict[str, Any]
    body: bytes
    blobs: int


# -- record <-> JSON ------------------------------------------------------------


def _record_to_json(record: ExecutionRecord, options: Any, inputs_end: int, outcomes_end: int) -> bytes:
    document = {
        **record_fields(record),
        "options": options,
        # Log offsets covered by the counts above (see the module docstring).
        "inputs_end": inputs_end,
        "outcomes_end": outcomes_end,
    }
    return json.dumps(document, indent=1).encode()


def _get(document: dict[str, Any], key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    value = document[key]
    if value is None and optional:
        return None
    # bool is an int to isinstance; a flag is never a count and vice versa.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        raise TypeError(f"{key!r} is {value!r}")
    return value


def _record_from_json(data: bytes) -> tuple[ExecutionRecord, int, int]:
    """Parse ``execution.json``; raises ValueError, TypeError or KeyError when damaged."""
    document = json.loads(data)
    if not isinstance(document, dict):
        raise TypeError("not a JSON object")
    options = _get(document, "options", dict)
    record = ExecutionRecord(
        id=_get(document, "id", str),
        parent_id=_get(document, "parent_id", str, optional=True),
        input_source=_get(document, "input_source", str),
        status=ExecutionStatus(_get(document, "status", str)),
        created_at=float(_get(document, "created_at", (int, float))),
        updated_at=float(_get(document, "updated_at", (int, float))),
        ended_at=_get(document, "ended_at", (int, float), optional=True),
        task_name=_get(document, "task_name", str),
        codec=_get(document, "codec", str),
        total=_get(document, "total", int),
        finished=_get(document, "finished", int),
        failed=_get(document, "failed", int),
        inputs_complete=_get(document, "inputs_complete", bool),
        pid=_get(document, "pid", int, optional=True),
        host=_get(document, "host", str, optional=True),
        options=options,
    )
    problem = counts_problem(record.total, record.finished, record.failed)
    if problem is not None:
        raise ValueError(problem)
    return record, _get(document, "inputs_end", int), _get(document, "outcomes_end", int)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a mix."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file with mode 0o600.
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class FileStore(Store):
    """Executions as plain files under a root directory.

    Safe to share between threads; any number of processes may use the same
    root, each writing its own executions, while others read them.

    Args:
        root: The store directory. Created with mode 0o700 if missing; an
            existing directory without a marker file gets one, so the
            directory may hold other things too (such as a SQLite store).

    Raises:
        StoreError: The root is not a directory, cannot be created, or its
            marker names another format or an unknown version.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._executions = self.root / _EXECUTIONS
        # One writer per execution: writes of this process are serialized,
        # reads take no lock except to extend the cached payload indexes.
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._writers: dict[str, _Writer] = {}
        self._indexes: dict[str, _Index] = {}
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise StoreError(f"cannot open the store at {self.location}: it is not a directory") from exc
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.location}: {exc}") from exc
        self._check_marker()
        try:
            self._executions.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self._executions}: {exc}") from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # -- plumbing ----------------------------------------------------------------

    def _check_marker(self) -> None:
        marker = self.root / MARKER_NAME
        try:
            data = marker.read_bytes()
        except FileNotFoundError:
            document = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
            try:
                # Processes opening a new root at once write the same bytes;
                # the atomic replace makes the last one win harmlessly.
                _write_atomically(marker, json.dumps(document).encode() + b"\n")
            except OSError as exc:
                raise StoreError(f"cannot write the marker file {marker}: {exc}") from exc
            return
        except OSError as exc:
            raise StoreError(f"cannot read the marker file {marker}: {exc}") from exc
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise StoreError(f"the marker file {marker} is damaged or not pylo's (it is not JSON: {exc})") from exc
        found = document.get("format") if isinstance(document, dict) else None
        if found != FORMAT_NAME:
            raise StoreError(
                f"the marker file {marker} says format {found!r}, expected {FORMAT_NAME!r}: "
                "this directory is not a pylo file store"
            )
        version = document.get("version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise StoreError(
                f"the marker file {marker} says format version {version!r}, which this pylo cannot "
                f"read (it reads version {FORMAT_VERSION}); use the pylo that wrote it"
            )

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn OS errors into a StoreError naming the store (the OS message names the file)."""
        try:
            yield
        except OSError as exc:
            raise StoreError(f"cannot {action} in the store at {self.location}: {exc}") from exc

    def _not_found(self, execution_id: str) -> ExecutionNotFound:
        return ExecutionNotFound(execution_id, self.location)

    def _dir(self, execution_id: str) -> Path:
        """The directory of an existing-or-not execution; an impossible id is not found."""
        try:
            return self._executions / _dir_name(execution_id)
        except ValueError:
            raise self._not_found(execution_id) from None

    def _damaged(self, path: Path, what: str) -> StoreError:
        return StoreError(f"the store at {self.location} is damaged: {path} {what}")

    def _read_record(self, directory: Path, execution_id: str) -> tuple[ExecutionRecord, int, int]:
        """Read ``execution.json`` as written last (no catching up with the logs)."""
        path = directory / _RECORD
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            # A directory without execution.json is being created right now
            # (or its creation crashed): the execution does not exist yet.
            # Its logs are empty then; logs with data lost their record.
            if any(_size_or_zero(directory / name) for name in (_INPUTS, _OUTCOMES)):
                raise self._damaged(path, "is missing, although the execution's logs hold data") from None
            raise self._not_found(execution_id) from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        try:
            record, inputs_end, outcomes_end = _record_from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise self._damaged(path, f"cannot be read as an execution record ({type(exc).__name__}: {exc})") from exc
        if record.id != execution_id:
            raise self._damaged(path, f"holds execution {record.id!r} instead of {execution_id!r}")
        return record, inputs_end, outcomes_end

    def _catch_up(
        self, directory: Path, record: ExecutionRecord, inputs_end: int, outcomes_end: int
    ) -> tuple[ExecutionRecord, int, int]:
        """Apply committed log frames that ``execution.json`` does not cover yet.

        Returns the record as of the last committed write and the offsets
        where the committed parts of the logs end.
        """
        inputs, outcomes = directory / _INPUTS, directory / _OUTCOMES
        inputs_size, outcomes_size = _file_size(inputs), _file_size(outcomes)
        if inputs_size < inputs_end:
            raise self._damaged(inputs, f"is shorter ({inputs_size} bytes) than its execution.json says ({inputs_end})")
        if outcomes_size < outcomes_end:
            raise self._damaged(
                outcomes, f"is shorter ({outcomes_size} bytes) than its execution.json says ({outcomes_end})"
            )
        inputs_from = inputs_end
        if outcomes_size > outcomes_end:
            last: _Outcome | None = None
            for outcome, end in self._outcomes(outcomes, outcomes_end):
                last, outcomes_end = outcome, end
            if last is not None:
                record, flushed_inputs_end = self._apply_header(outcomes, record, last.header)
                # That flush's total already counts the batches added before it.
                inputs_from = max(inputs_from, flushed_inputs_end)
        inputs_end = inputs_from
        if inputs_size > inputs_from:
            entries, inputs_end = self._scan_inputs(inputs, inputs_from, with_states=False)
            if entries:
                record = dataclasses.replace(record, total=record.total + sum(entry.size for entry in entries))
        return record, inputs_end, outcomes_end

    def _apply_header(self, path: Path, record: ExecutionRecord, header: dict[str, Any]) -> tuple[ExecutionRecord, int]:
        """The record after a flush, and the ``inputs.log`` offset that flush had seen."""
        try:
            problem = counts_problem(int(header["total"]), int(header["finished"]), int(header["failed"]))
            if problem is not None:
                raise ValueError(problem)
            return dataclasses.replace(
                record,
                total=int(header["total"]),
                finished=int(header["finished"]),
                failed=int(header["failed"]),
                status=ExecutionStatus(header["status"]),
                ended_at=None if header["ended_at"] is None else float(header["ended_at"]),
                inputs_complete=bool(header["inputs_complete"]),
                updated_at=float(header["updated_at"]),
            ), int(header["inputs_end"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(path, f"holds a flush that cannot be read ({type(exc).__name__}: {exc})") from exc

    # -- log reading -----------------------------------------------------------

    def _blank_tail(self, file: BinaryIO, offset: int, size: int) -> bool:
        """True when nothing but zero bytes follow ``offset``, as a crash may leave."""
        file.seek(offset)
        remaining = size - offset
        while remaining > 0:
            chunk = file.read(min(remaining, _BLANK_CHUNK))
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False
            remaining -= len(chunk)
        return True

    def _frames(
        self, file: BinaryIO, path: Path, magic: bytes, start: int, size: int, committed: int = 0
    ) -> Iterator[tuple[int, int, int]]:
        """Yield ``(body_offset, body_length, crc)`` of the frames between ``start`` and ``size``.

        Stops quietly at a frame cut short, which is a torn tail or a frame
        being written, unless it starts before ``committed``: the offset
        ``execution.json`` says is durable, which only complete frames can
        reach. Leaves the file positioned at each body.
        """
        offset = start
        while offset + _FRAME.size <= size:
            file.seek(offset)
            header = file.read(_FRAME.size)
            if len(header) < _FRAME.size:
                break
            found, length, crc = _FRAME.unpack(header)
            if found != magic:
                if offset >= committed and self._blank_tail(file, offset, size):
                    return
                raise self._damaged(path, f"has no valid record at byte {offset}")
            body_offset = offset + _FRAME.size
            if body_offset + length > size:
                break
            file.seek(body_offset)
            yield body_offset, length, crc
            offset = body_offset + length
        if offset < committed:
            raise self._damaged(path, f"has a record cut short at byte {offset}, before the end it had ({committed})")

    def _scan_inputs(
        self, path: Path, start: int, *, with_states: bool, committed: int = 0
    ) -> tuple[list[_InputEntry], int]:
        """Read the batches of complete ``add_batches`` calls after ``start``.

        Payloads are skipped, not read: only the fixed fields (and the states
        when asked) of each frame are. Returns the batches and the offset
        where the last complete call ends. ``committed`` is the offset
        ``execution.json`` vouches for: a bad frame before it is damage,
        never a torn tail to ignore.
        """
        entries: list[_InputEntry] = []
        call: list[_InputEntry] = []
        ended = start
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            for body_offset, length, crc in self._frames(file, path, _INPUTS_MAGIC, start, size, committed):
                last = body_offset + length == size
                if last:
                    # Only the last frame can be torn: check all of it.
                    body = file.read(length)
                    if len(body) < length or zlib.crc32(body) != crc:
                        if body_offset - _FRAME.size < committed:
                            raise self._damaged(path, f"has a corrupt batch record at byte {body_offset}")
                        break
                    head = body[:_BATCH_HEAD_SIZE]
                else:
                    head = file.read(_BATCH_HEAD_SIZE)
                if len(head) < _BATCH_HEAD_SIZE:
                    raise self._damaged(path, f"has a truncated batch record at byte {body_offset}")
                batch_no, first_position, count, flags = _BATCH_FIELDS.unpack_from(head)
                (head_crc,) = _BATCH_CRC.unpack_from(head, _BATCH_FIELDS.size)
                if _BATCH_HEAD_SIZE + count > length:
                    raise self._damaged(path, f"has a batch record with a wrong size at byte {body_offset}")
                states: bytes | None = None
                if with_states:
                    states = body[_BATCH_HEAD_SIZE : _BATCH_HEAD_SIZE + count] if last else file.read(count)
                    # The frame CRC is only checked when the payload is read,
                    # so the states carry a CRC of their own.
                    if zlib.crc32(states, zlib.crc32(head[: _BATCH_FIELDS.size])) != head_crc:
                        raise self._damaged(path, f"has a corrupt batch record at byte {body_offset}")
                call.append(_InputEntry(batch_no, first_position, count, flags, body_offset, length, crc, states))
                if flags & _ENDS_CALL:
                    entries.extend(call)
                    call.clear()
                    ended = body_offset + length
        if ended < committed:
            raise self._damaged(
                path, f"ends its last complete batch at byte {ended}, before the end it had ({committed})"
            )
        return entries, ended

    def _outcomes(self, path: Path, start: int, committed: int = 0) -> Iterator[tuple[_Outcome, int]]:
        """Yield each complete ``outcomes.log`` frame after ``start`` and the offset it ends at.

        ``committed`` is the offset ``execution.json`` vouches for: a bad
        frame before it is damage, never a torn tail to ignore.
        """
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            for body_offset, length, crc in self._frames(file, path, _OUTCOMES_MAGIC, start, size, committed):
                body = file.read(length)
                end = body_offset + length
                if len(body) < length or zlib.crc32(body) != crc:
                    if end == size and body_offset - _FRAME.size >= committed:
                        return  # a torn tail
                    raise self._damaged(path, f"has a corrupt flush record at byte {body_offset}")
                try:
                    (header_length,) = _HEADER_LENGTH.unpack_from(body)
                    header = json.loads(body[_HEADER_LENGTH.size : _HEADER_LENGTH.size + header_length])
                    if not isinstance(header, dict):
                        raise TypeError("the header is not a JSON object")
                except (struct.error, ValueError, TypeError) as exc:
                    raise self._damaged(path, f"has an unreadable flush record at byte {body_offset} ({exc})") from exc
                yield _Outcome(header, body, _HEADER_LENGTH.size + header_length), end

    def _outcome_parts(
        self, path: Path, outcome: _Outcome
    ) -> tuple[list[tuple[int, bytes]], list[FailureRow], list[tuple[int, int, int]]]:
        """Split a flush into states, failures and ``(position, start, length)`` of results in its body."""
        try:
            cursor = outcome.blobs
            states = []
            for batch_no, length in outcome.header["states"]:
                states.append((int(batch_no), outcome.body[cursor : cursor + length]))
                cursor += length
            failures = []
            for position, exc_type, message, traceback, length, attempts, worker, failed_at in outcome.header[
                "failures"
            ]:
                exception = None
                if length is not None:
                    exception = outcome.body[cursor : cursor + length]
                    cursor += length
                failures.append(
                    FailureRow(
                        int(position),
                        exc_type,
                        message,
                        traceback,
                        exception,
                        int(attempts),
                        int(worker),
                        float(failed_at),
                    )
                )
            results = []
            for position, length in outcome.header["results"]:
                results.append((int(position), cursor, int(length)))
                cursor += length
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(path, f"holds a flush that cannot be read ({type(exc).__name__}: {exc})") from exc
        if cursor != len(outcome.body):
            raise self._damaged(path, "holds a flush whose sizes do not add up")
        return states, failures, results

    def _index(self, path: Path) -> dict[int, _InputEntry]:
        """The payload index of an ``inputs.log``, scanning only what was appended since last time."""
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            # The first frame header identifies the log: an execution deleted
            # and created again may well get the same inode number.
            first = file.read(_FRAME.size)
        key = str(path)
        with self._index_lock:
            index = self._indexes.get(key)
            if index is None or size < index.end or (index.end and index.first != first):
                index = self._indexes[key] = _Index(first, 0, {})
            if size > index.end:
                entries, index.end = self._scan_inputs(path, index.end, with_states=False)
                index.first = first
                for entry in entries:
                    index.entries[entry.batch_no] = entry
            return index.entries

    def _read_payload(self, file: BinaryIO, path: Path, entry: _InputEntry) -> bytes:
        file.seek(entry.body_offset)
        body = file.read(entry.body_length)
        if len(body) < entry.body_length or zlib.crc32(body) != entry.crc:
            raise self._damaged(path, f"has a corrupt batch record at byte {entry.body_offset}")
        return body[_BATCH_HEAD_SIZE + entry.size :]

    # -- writing -----------------------------------------------------------------

    def _append(self, path: Path, data: bytes, expected_end: int) -> int:
        """Append ``data`` at ``expected_end``; on failure cut the file back so no torn frame stays."""
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            if os.fstat(descriptor).st_size != expected_end:
                raise StoreError(f"{path} changed under this writer (another process writes the same execution?)")
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(descriptor, view) :]
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(descriptor, expected_end)
                raise
        finally:
            os.close(descriptor)
        return expected_end + len(data)

    def _writer(self, execution_id: str) -> tuple[Path, _Writer]:
        """This process's view of an execution it writes; call with ``self._lock`` held.

        The first write of an execution in this process (or a write after
        someone else changed its logs) reloads it from disk, and truncates
        what a crashed writer left half-appended.
        """
        directory = self._dir(execution_id)
        writer = self._writers.get(execution_id)
        inputs, outcomes = directory / _INPUTS, directory / _OUTCOMES
        if writer is not None:
            try:
                sizes = (_file_size(inputs), _file_size(outcomes))
            except FileNotFoundError:
                sizes = (-1, -1)
            if sizes == (writer.inputs_end, writer.outcomes_end):
                return directory, writer
        record, inputs_end, outcomes_end = self._read_record(directory, execution_id)
        record, inputs_end, outcomes_end = self._catch_up(directory, record, inputs_end, outcomes_end)
        for path, end in ((inputs, inputs_end), (outcomes, outcomes_end)):
            size = _file_size(path)
            if size > end:
                logger.warning(
                    "discarding %d bytes of an unfinished write at the end of %s (left by a crash)", size - end, path
                )
                os.truncate(path, end)
        writer = self._writers[execution_id] = _Writer(record, inputs_end, outcomes_end)
        return directory, writer

    def _save_record(self, directory: Path, writer: _Writer) -> None:
        record = writer.record
        _write_atomically(
            directory / _RECORD,
            _record_to_json(record, dict(record.options), writer.inputs_end, writer.outcomes_end),
        )

    def create_execution(self, record: ExecutionRecord) -> None:
        """See :meth:`Store.create_execution`.

        Raises:
            ExecutionExists: An execution with ``record.id`` exists.
            StoreError: The directory cannot be written.
            TypeError: ``record.options`` is not JSON-serializable.
            ValueError: The id is empty or too long for a file name.
        """
        directory = self._executions / _dir_name(record.id)
        options = json.loads(dump_options(record.id, record.options))
        with self._guard(f"create execution {record.id!r}"):
            try:
                # mkdir either creates or fails, atomically: of processes
                # creating the same id at once, exactly one wins.
                os.mkdir(directory, 0o700)
            except FileExistsError:
                raise ExecutionExists(record.id, self.location) from None
            try:
                for name in (_INPUTS, _OUTCOMES):
                    os.close(os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                # Last: execution.json is what makes the execution visible.
                _write_atomically(directory / _RECORD, _record_to_json(record, options, 0, 0))
            except BaseException:
                # Give the id back rather than leave a directory that claims
                # it but holds no execution.
                for name in (_INPUTS, _OUTCOMES):
                    with contextlib.suppress(OSError):
                        os.unlink(directory / name)
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
                raise
            with self._lock:
                self._writers[record.id] = _Writer(record, 0, 0)

    def add_batches(self, execution_id: str, batches: Sequence[BatchRecord]) -> None:
        """See :meth:`Store.add_batches`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The directory cannot be written or is damaged.
            ValueError: A batch's ``states`` do not have ``size`` bytes.
        """
        check_batches(execution_id, batches)
        frames = []
        for number, batch in enumerate(batches):
            flags = (_HAS_PAYLOAD if batch.payload is not None else 0) | (
                _ENDS_CALL if number == len(batches) - 1 else 0
            )
            fields = _BATCH_FIELDS.pack(batch.batch_no, batch.first_position, batch.size, flags)
            states = bytes(batch.states)
            head = fields + _BATCH_CRC.pack(zlib.crc32(states, zlib.crc32(fields)))
            frames.append(_frame(_INPUTS_MAGIC, head + states + (batch.payload or b"")))
        with self._lock, self._guard(f"add batches to execution {execution_id!r}"):
            directory, writer = self._writer(execution_id)
            if frames:
                writer.inputs_end = self._append(directory / _INPUTS, b"".join(frames), writer.inputs_end)
            writer.record = dataclasses.replace(
                writer.record,
                total=writer.record.total + sum(batch.size for batch in batches),
                updated_at=time.time(),
            )
            self._save_record(directory, writer)

    def record_flush(self, execution_id: str, flush: Flush) -> None:
        """See :meth:`Store.record_flush`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The directory cannot be written or is damaged.
            ValueError: The flush sets the derived ``CRASHED`` status.
        """
        check_flush(execution_id, flush)
        blobs: list[bytes] = []
        states = []
        for batch_no, data in flush.states.items():
            states.append([batch_no, len(data)])
            blobs.append(bytes(data))
        failures = []
        for row in flush.failures:
            failures.append(
                [
                    row.position,
                    row.exc_type,
                    row.message,
                    row.traceback,
                    None if row.exception is None else len(row.exception),
                    row.attempts,
                    row.worker,
                    float(row.failed_at),
                ]
            )
            if row.exception is not None:
                blobs.append(bytes(row.exception))
        results = []
        for position, value in flush.results:
            results.append([position, len(value)])
            blobs.append(bytes(value))
        with self._lock, self._guard(f"record a flush of execution {execution_id!r}"):
            directory, writer = self._writer(execution_id)
            old = writer.record
            record = dataclasses.replace(
                old,
                total=flush.total,
                finished=flush.finished,
                failed=flush.failed,
                status=old.status if flush.status is None else ExecutionStatus(flush.status),
                ended_at=old.ended_at if flush.ended_at is None else float(flush.ended_at),
                inputs_complete=old.inputs_complete or flush.inputs_complete,
                updated_at=time.time(),
            )
            header = {
                "total": record.total,
                "finished": record.finished,
                "failed": record.failed,
                "status": ExecutionStatus(record.status).value,
                "ended_at": record.ended_at,
                "inputs_complete": record.inputs_complete,
                "updated_at": record.updated_at,
                "inputs_end": writer.inputs_end,
                "states": states,
                "failures": failures,
                "results": results,
            }
            encoded = json.dumps(header, separators=(",", ":")).encode()
            body = b"".join([_HEADER_LENGTH.pack(len(encoded)), encoded, *blobs])
            writer.outcomes_end = self._append(
                directory / _OUTCOMES, _frame(_OUTCOMES_MAGIC, body), writer.outcomes_end
            )
            writer.record = record
            self._save_record(directory, writer)

    # -- reading -----------------------------------------------------------------

    def get_execution(self, execution_id: str) -> ExecutionRecord:
        """See :meth:`Store.get_execution`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: Its files cannot be read or are damaged.
        """
        directory = self._dir(execution_id)
        with self._guard(f"read execution {execution_id!r}"):
            record, inputs_end, outcomes_end = self._read_record(directory, execution_id)
            return self._catch_up(directory, record, inputs_end, outcomes_end)[0]

    def list_executions(self) -> list[ExecutionRecord]:
        """See :meth:`Store.list_executions`.

        Raises:
            DamagedExecutions: Some executions cannot be read; the error
                names each one's path and problem and carries the intact
                executions.
            StoreError: The executions directory cannot be read.
        """
        records = []
        damaged: dict[str, StoreError] = {}
        with self._guard("list executions"), os.scandir(self._executions) as entries:
            names = [entry.name for entry in entries if not entry.name.startswith(".") and entry.is_dir()]
        for name in names:
            directory = self._executions / name
            execution_id = unquote(name)
            try:
                with self._guard(f"read execution {execution_id!r}"):
                    record, inputs_end, outcomes_end = self._read_record(directory, execution_id)
                    records.append(self._catch_up(directory, record, inputs_end, outcomes_end)[0])
            except ExecutionNotFound:
                continue  # being created
            except StoreError as exc:
                # Each execution has files of its own: read the others, then
                # say which ones are damaged (see DamagedExecutions).
                damaged[execution_id] = exc
        records.sort(key=lambda record: (record.created_at, record.id))
        if damaged:
            raise DamagedExecutions(self.location, records, damaged)
        return records

    def read_batches(self, execution_id: str, *, payloads: bool = False) -> Iterator[BatchRecord]:
        """See :meth:`Store.read_batches`.

        Replays ``inputs.log`` (fixed fields and states only) and then
        ``outcomes.log``; reading the inputs first means every batch
        returned carries the states of every flush seen.

        Raises:
            ExecutionNotFound: No such execution (raised before returning).
            StoreError: Its files cannot be read or are damaged, or a payload
                is missing from the input source.
        """
        directory = self._dir(execution_id)
        with self._guard(f"read the batches of execution {execution_id!r}"):
            record, inputs_end, outcomes_end = self._read_record(directory, execution_id)
            entries, _ = self._scan_inputs(directory / _INPUTS, 0, with_states=True, committed=inputs_end)
            states = {entry.batch_no: entry.states for entry in entries}
            outcomes = directory / _OUTCOMES
            for outcome, _ in self._outcomes(outcomes, 0, outcomes_end):
                for batch_no, data in self._outcome_parts(outcomes, outcome)[0]:
                    # A flush may name batches added after inputs.log was read.
                    if batch_no in states:
                        states[batch_no] = data
        records = [
            BatchRecord(entry.batch_no, entry.first_position, entry.size, states[entry.batch_no] or b"")
            for entry in sorted(entries, key=lambda entry: entry.batch_no)
        ]
        problem = batches_problem(records)
        if problem is not None:
            raise self._damaged(directory, f"holds execution {execution_id!r} with {problem}")
        if not payloads:
            return iter(records)
        return self._attach_payloads(execution_id, record.input_source, records)

    def _source_inputs(self, execution_id: str, source: str) -> Path:
        if source == execution_id:
            return self._dir(execution_id) / _INPUTS
        try:
            return self._executions / _dir_name(source) / _INPUTS
        except ValueError as exc:
            raise StoreError(
                f"execution {execution_id!r} in the store at {self.location} names an impossible "
                f"input source {source!r}"
            ) from exc

    def _attach_payloads(self, execution_id: str, source: str, records: list[BatchRecord]) -> Iterator[BatchRecord]:
        with self._guard(f"read the inputs of execution {execution_id!r}"):
            path = self._source_inputs(execution_id, source)
            index = self._index(path)
            with open(path, "rb") as file:
                for record in records:
                    entry = index.get(record.batch_no)
                    if entry is None or not entry.flags & _HAS_PAYLOAD:
                        raise StoreError(
                            f"batch {record.batch_no} of execution {execution_id!r} has no inputs in "
                            f"execution {source!r}, which should hold them, in the store at {self.location}"
                        )
                    yield dataclasses.replace(record, payload=self._read_payload(file, path, entry))

    def read_payloads(self, execution_id: str, batch_nos: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """See :meth:`Store.read_payloads`.

        Raises:
            ExecutionNotFound: No such execution (raised before returning).
            StoreError: Its files cannot be read or are damaged.
        """
        directory = self._dir(execution_id)
        with self._guard(f"read the inputs of execution {execution_id!r}"):
            record, _, _ = self._read_record(directory, execution_id)
            own = self._index(directory / _INPUTS)
            path = self._source_inputs(execution_id, record.input_source)
            source = own if record.input_source == execution_id else self._index(path)
        return self._payloads(execution_id, path, own, source, batch_nos)

    def _payloads(
        self,
        execution_id: str,
        path: Path,
        own: dict[int, _InputEntry],
        source: dict[int, _InputEntry],
        batch_nos: Iterable[int],
    ) -> Iterator[tuple[int, bytes]]:
        with self._guard(f"read the inputs of execution {execution_id!r}"), open(path, "rb") as file:
            for batch_no in batch_nos:
                entry = source.get(batch_no)
                if batch_no not in own or entry is None:
                    continue
                if not entry.flags & _HAS_PAYLOAD:
                    raise self._damaged(path, f"holds batch {batch_no} without its inputs")
                yield batch_no, self._read_payload(file, path, entry)

    def read_failures(self, execution_id: str) -> list[FailureRow]:
        """See :meth:`Store.read_failures`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: Its files cannot be read or are damaged.
        """
        directory = self._dir(execution_id)
        failures: dict[int, FailureRow] = {}
        with self._guard(f"read the failures of execution {execution_id!r}"):
            _, _, outcomes_end = self._read_record(directory, execution_id)
            outcomes = directory / _OUTCOMES
            for outcome, _ in self._outcomes(outcomes, 0, outcomes_end):
                for row in self._outcome_parts(outcomes, outcome)[1]:
                    failures[row.position] = row
        return [failures[position] for position in sorted(failures)]

    def read_results(self, execution_id: str) -> Iterator[tuple[int, bytes]]:
        """See :meth:`Store.read_results`.

        Finds every result in one pass over ``outcomes.log``, then reads them
        back in position order: memory holds their offsets, not their bytes.

        Raises:
            ExecutionNotFound: No such execution (raised before returning).
            StoreError: Its files cannot be read or are damaged.
        """
        directory = self._dir(execution_id)
        outcomes = directory / _OUTCOMES
        found: dict[int, tuple[int, int]] = {}
        with self._guard(f"read the results of execution {execution_id!r}"):
            _, _, outcomes_end = self._read_record(directory, execution_id)
            for outcome, end in self._outcomes(outcomes, 0, outcomes_end):
                body_offset = end - len(outcome.body)
                for position, start, length in self._outcome_parts(outcomes, outcome)[2]:
                    found[position] = (body_offset + start, length)
        return self._results(execution_id, outcomes, [(position, *found[position]) for position in sorted(found)])

    def _results(
        self, execution_id: str, path: Path, places: list[tuple[int, int, int]]
    ) -> Iterator[tuple[int, bytes]]:
        with self._guard(f"read the results of execution {execution_id!r}"), open(path, "rb") as file:
            for position, offset, length in places:
                file.seek(offset)
                value = file.read(length)
                if len(value) < length:
                    raise self._damaged(path, f"lost the result of position {position}")
                yield position, value

    def runs(self) -> RunStore:
        """See :meth:`Store.runs`: runs live under ``runs/``, made by the first run."""
        from pylo.stores.files_runs import FileRunStore

        # One per store: it keeps this process's view of the runs it writes.
        runs: RunStore | None = getattr(self, "_runs", None)
        if runs is None:
            runs = self._runs = FileRunStore(self)
        return runs

    def close(self) -> None:
        """Forget cached indexes and writer state (no file stays open between calls)."""
        with self._lock:
            self._writers.clear()
        with self._index_lock:
            self._indexes.clear()
