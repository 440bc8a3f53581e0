"""The on-disk format of the file store's logs: frames and their schemas (``execution.json``: ``_filerecord``).

Every log frame is ``magic (4 bytes) | body length (u64) | CRC32 of the
body (u32) | body``, little-endian. Nothing is pickled: bodies are
``struct`` fields, JSON and raw bytes, so any pylo can open any store safely.

* An ``inputs.log`` frame (one per batch, :func:`encode_batches`) has the
  body ``batch_no, first_position, size (u64 each), flags (u8), CRC32 of the
  preceding fields and the states (u32) | states | payload``. Flags say
  whether a payload follows and whether the frame ends its ``add_batches``
  call: readers take the batches of a call only once its last frame is
  there, which makes the call atomic.
* An ``outcomes.log`` frame (one per flush, :func:`encode_flush` and
  :func:`decode_flush`, from the one schema :data:`FAILURE_FIELDS`) has the
  body ``length of a JSON header (u32) | JSON header | state bytes |
  exception bytes | result bytes``. The header holds the execution's counts
  and status after the flush, and the shape of each state, failure and
  result; the raw bytes follow in that order. Its ``chunks`` (absent from
  frames written before they were kept) lists ``[first position, last
  position, worker]`` per chunk of outcomes (see :mod:`pylo.stores._filechunks`);
  its ``stop_reason`` and ``stop_detail`` (absent when there is none, and
  from frames written before they were kept) say why the execution ended
  early.

Readers here raise :class:`~pylo.errors.StoreError` naming the store and the
file; the store (``files.py``) decides what to read and when.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from pylo.errors import StoreError
from pylo.stores._common import counts_problem
from pylo.stores._filerecord import stop_fields, stop_of
from pylo.stores.base import FORMAT_VERSION, BatchRecord, ChunkRow, ExecutionRecord, ExecutionStatus, FailureRow

__all__ = [
    "FORMAT_NAME",
    "MARKER_NAME",
    "check_marker",
    "record_after_flush",
    "FAILURE_FIELDS",
    "FRAME_SIZE",
    "file_size",
    "frames",
    "os_errors_named",
    "size_or_zero",
    "HAS_PAYLOAD",
    "INPUTS_MAGIC",
    "OUTCOMES_MAGIC",
    "InputEntry",
    "Outcome",
    "append",
    "damaged",
    "decode_flush",
    "dir_name",
    "encode_batches",
    "encode_flush",
    "frame",
    "outcomes",
    "read_payload",
    "scan_inputs",
    "write_atomically",
]

#: Value of ``format`` in the marker file.
FORMAT_NAME = "pylo-files"
#: Name of the marker file at the root of a file store.
MARKER_NAME = "pylo-files.json"

_FRAME = struct.Struct("<4sQI")
#: Bytes of a frame header; the first one identifies a log (see files.py's index).
FRAME_SIZE = _FRAME.size
INPUTS_MAGIC = b"PLIb"
OUTCOMES_MAGIC = b"PLOf"
_BATCH_FIELDS = struct.Struct("<QQQB")
_BATCH_CRC = struct.Struct("<I")
_BATCH_HEAD_SIZE = _BATCH_FIELDS.size + _BATCH_CRC.size
HAS_PAYLOAD = 0x01
_ENDS_CALL = 0x02
_HEADER_LENGTH = struct.Struct("<I")
_BLANK_CHUNK = 1 << 16

# Characters left as they are in directory names; everything else, "%"
# included, is percent-encoded, so the mapping is reversible.
_SAFE_CHARS = "@+=,"
# Most file systems allow 255 bytes per name; keep a margin.
_MAX_NAME = 200

#: The schema of a failure in a flush header: one list of these fields per
#: failure. ``exception_length`` is the size of its exception bytes among
#: the flush's raw bytes, or None when it has none.
FAILURE_FIELDS = ("position", "exc_type", "message", "traceback", "exception_length", "attempts", "worker", "failed_at")


def damaged(location: str, path: Path, what: str) -> StoreError:
    """The error for damage found in one file of the store at ``location``."""
    return StoreError(f"the store at {location} is damaged: {path} {what}")


def dir_name(execution_id: str) -> str:
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


@contextlib.contextmanager
def os_errors_named(location: str, action: str) -> Iterator[None]:
    """Turn OS errors into a StoreError naming the store (the OS message names the file)."""
    try:
        yield
    except OSError as exc:
        raise StoreError(f"cannot {action} in the store at {location}: {exc}") from exc


def file_size(path: Path) -> int:
    return os.stat(path).st_size


def size_or_zero(path: Path) -> int:
    """The file's size, or 0 when it cannot be read (missing, say)."""
    try:
        return file_size(path)
    except OSError:
        return 0


def frame(magic: bytes, body: bytes) -> bytes:
    return _FRAME.pack(magic, len(body), zlib.crc32(body)) + body


def write_atomically(path: Path, data: bytes) -> None:
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


def append(path: Path, data: bytes, expected_end: int) -> int:
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


def check_marker(root: Path, *, create: bool) -> None:
    """Check the root's marker file, writing it first if missing (and ``create``).

    Raises:
        StoreError: It cannot be read or written, or names another format
            or an unknown version.
    """
    marker = root / MARKER_NAME
    try:
        data = marker.read_bytes()
    except FileNotFoundError:
        if not create:
            raise StoreError(f"there is no pylo file store at {root}: it has no {MARKER_NAME}") from None
        document = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        try:
            # Processes opening a new root at once write the same bytes;
            # the atomic replace makes the last one win harmlessly.
            write_atomically(marker, json.dumps(document).encode() + b"\n")
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


# -- frames ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputEntry:
    """Where one batch of ``inputs.log`` is, and its initial states."""

    batch_no: int
    first_position: int
    size: int
    flags: int
    body_offset: int
    body_length: int
    crc: int
    states: bytes | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decoded ``outcomes.log`` frame; ``blobs`` is the offset of its raw bytes in ``body``."""

    header: dict[str, Any]
    body: bytes
    blobs: int


def encode_batches(batches: Sequence[BatchRecord]) -> bytes:
    """The ``inputs.log`` frames of one ``add_batches`` call."""
    frames = []
    for number, batch in enumerate(batches):
        flags = (HAS_PAYLOAD if batch.payload is not None else 0) | (_ENDS_CALL if number == len(batches) - 1 else 0)
        fields = _BATCH_FIELDS.pack(batch.batch_no, batch.first_position, batch.size, flags)
        states = bytes(batch.states)
        head = fields + _BATCH_CRC.pack(zlib.crc32(states, zlib.crc32(fields)))
        frames.append(frame(INPUTS_MAGIC, head + states + (batch.payload or b"")))
    return b"".join(frames)


def encode_flush(
    record: ExecutionRecord,
    inputs_end: int,
    flush_states: Mapping[int, bytes],
    failures: Sequence[FailureRow],
    results: Sequence[tuple[int, bytes]],
    chunks: Sequence[ChunkRow] = (),
) -> bytes:
    """The ``outcomes.log`` frame of one flush; ``record`` is the execution after it.

    ``inputs_end`` is the ``inputs.log`` offset the flush has seen (its
    ``total`` counts the batches before it); see :func:`record_after_flush`.
    """
    header = {
        "total": record.total,
        "finished": record.finished,
        "failed": record.failed,
        "status": ExecutionStatus(record.status).value,
        "ended_at": record.ended_at,
        "inputs_complete": record.inputs_complete,
        "updated_at": record.updated_at,
        "inputs_end": inputs_end,
        **stop_fields(record),
    }
    blobs: list[bytes] = []
    states = []
    for batch_no, data in flush_states.items():
        states.append([batch_no, len(data)])
        blobs.append(bytes(data))
    rows = []
    for row in failures:
        values = {
            "position": row.position,
            "exc_type": row.exc_type,
            "message": row.message,
            "traceback": row.traceback,
            "exception_length": None if row.exception is None else len(row.exception),
            "attempts": row.attempts,
            "worker": row.worker,
            "failed_at": float(row.failed_at),
        }
        rows.append([values[name] for name in FAILURE_FIELDS])
        if row.exception is not None:
            blobs.append(bytes(row.exception))
    kept = []
    for position, value in results:
        kept.append([position, len(value)])
        blobs.append(bytes(value))
    runs = [[row.first_position, row.last_position, row.worker] for row in chunks]
    document = {**header, "states": states, "failures": rows, "results": kept, "chunks": runs}
    encoded = json.dumps(document, separators=(",", ":")).encode()
    body = b"".join([_HEADER_LENGTH.pack(len(encoded)), encoded, *blobs])
    return frame(OUTCOMES_MAGIC, body)


def record_after_flush(
    location: str, path: Path, record: ExecutionRecord, header: Mapping[str, Any]
) -> tuple[ExecutionRecord, int]:
    """The record after a flush (its header, see :func:`encode_flush`), and the ``inputs_end`` it had seen."""
    try:
        problem = counts_problem(int(header["total"]), int(header["finished"]), int(header["failed"]))
        if problem is not None:
            raise ValueError(problem)
        stop_reason, stop_detail = stop_of(header)
        return dataclasses.replace(
            record,
            stop_reason=stop_reason,
            stop_detail=stop_detail,
            total=int(header["total"]),
            finished=int(header["finished"]),
            failed=int(header["failed"]),
            status=ExecutionStatus(header["status"]),
            ended_at=None if header["ended_at"] is None else float(header["ended_at"]),
            inputs_complete=bool(header["inputs_complete"]),
            updated_at=float(header["updated_at"]),
        ), int(header["inputs_end"])
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(location, path, f"holds a flush that cannot be read ({type(exc).__name__}: {exc})") from exc


def decode_flush(
    location: str, path: Path, outcome: Outcome
) -> tuple[list[tuple[int, bytes]], list[FailureRow], list[tuple[int, int, int]]]:
    """Split a flush into states, failures and ``(position, start, length)`` of results in its body."""
    try:
        cursor = outcome.blobs
        states = []
        for batch_no, length in outcome.header["states"]:
            states.append((int(batch_no), outcome.body[cursor : cursor + length]))
            cursor += length
        failures = []
        for values in outcome.header["failures"]:
            fields = dict(zip(FAILURE_FIELDS, values, strict=True))
            exception = None
            if fields["exception_length"] is not None:
                exception = outcome.body[cursor : cursor + fields["exception_length"]]
                cursor += fields["exception_length"]
            failures.append(
                FailureRow(
                    int(fields["position"]),
                    fields["exc_type"],
                    fields["message"],
                    fields["traceback"],
                    exception,
                    int(fields["attempts"]),
                    int(fields["worker"]),
                    float(fields["failed_at"]),
                )
            )
        results = []
        for position, length in outcome.header["results"]:
            results.append((int(position), cursor, int(length)))
            cursor += length
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(location, path, f"holds a flush that cannot be read ({type(exc).__name__}: {exc})") from exc
    if cursor != len(outcome.body):
        raise damaged(location, path, "holds a flush whose sizes do not add up")
    return states, failures, results


# -- reading logs ---------------------------------------------------------------


def _blank_tail(file: BinaryIO, offset: int, size: int) -> bool:
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


def frames(
    location: str, file: BinaryIO, path: Path, magic: bytes, start: int, size: int, committed: int = 0
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
            if offset >= committed and _blank_tail(file, offset, size):
                return
            raise damaged(location, path, f"has no valid record at byte {offset}")
        body_offset = offset + _FRAME.size
        if body_offset + length > size:
            break
        file.seek(body_offset)
        yield body_offset, length, crc
        offset = body_offset + length
    if offset < committed:
        raise damaged(location, path, f"has a record cut short at byte {offset}, before the end it had ({committed})")


def scan_inputs(
    location: str, path: Path, start: int, *, with_states: bool, committed: int = 0
) -> tuple[list[InputEntry], int]:
    """Read the batches of complete ``add_batches`` calls after ``start``.

    Payloads are skipped, not read: only the fixed fields (and the states
    when asked) of each frame are. Returns the batches and the offset
    where the last complete call ends. ``committed`` is the offset
    ``execution.json`` vouches for: a bad frame before it is damage,
    never a torn tail to ignore.
    """
    entries: list[InputEntry] = []
    call: list[InputEntry] = []
    ended = start
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        for body_offset, length, crc in frames(location, file, path, INPUTS_MAGIC, start, size, committed):
            last = body_offset + length == size
            if last:
                # Only the last frame can be torn: check all of it.
                body = file.read(length)
                if len(body) < length or zlib.crc32(body) != crc:
                    if body_offset - _FRAME.size < committed:
                        raise damaged(location, path, f"has a corrupt batch record at byte {body_offset}")
                    break
                head = body[:_BATCH_HEAD_SIZE]
            else:
                head = file.read(_BATCH_HEAD_SIZE)
            if len(head) < _BATCH_HEAD_SIZE:
                raise damaged(location, path, f"has a truncated batch record at byte {body_offset}")
            batch_no, first_position, count, flags = _BATCH_FIELDS.unpack_from(head)
            (head_crc,) = _BATCH_CRC.unpack_from(head, _BATCH_FIELDS.size)
            if _BATCH_HEAD_SIZE + count > length:
                raise damaged(location, path, f"has a batch record with a wrong size at byte {body_offset}")
            states: bytes | None = None
            if with_states:
                states = body[_BATCH_HEAD_SIZE : _BATCH_HEAD_SIZE + count] if last else file.read(count)
                # The frame CRC is only checked when the payload is read,
                # so the states carry a CRC of their own.
                if zlib.crc32(states, zlib.crc32(head[: _BATCH_FIELDS.size])) != head_crc:
                    raise damaged(location, path, f"has a corrupt batch record at byte {body_offset}")
            call.append(InputEntry(batch_no, first_position, count, flags, body_offset, length, crc, states))
            if flags & _ENDS_CALL:
                entries.extend(call)
                call.clear()
                ended = body_offset + length
    if ended < committed:
        raise damaged(
            location, path, f"ends its last complete batch at byte {ended}, before the end it had ({committed})"
        )
    return entries, ended


def outcomes(location: str, path: Path, start: int, committed: int = 0) -> Iterator[tuple[Outcome, int]]:
    """Yield each complete ``outcomes.log`` frame after ``start`` and the offset it ends at.

    ``committed`` is the offset ``execution.json`` vouches for: a bad
    frame before it is damage, never a torn tail to ignore.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        for body_offset, length, crc in frames(location, file, path, OUTCOMES_MAGIC, start, size, committed):
            body = file.read(length)
            end = body_offset + length
            if len(body) < length or zlib.crc32(body) != crc:
                if end == size and body_offset - _FRAME.size >= committed:
                    return  # a torn tail
                raise damaged(location, path, f"has a corrupt flush record at byte {body_offset}")
            try:
                (header_length,) = _HEADER_LENGTH.unpack_from(body)
                header = json.loads(body[_HEADER_LENGTH.size : _HEADER_LENGTH.size + header_length])
                if not isinstance(header, dict):
                    raise TypeError("the header is not a JSON object")
            except (struct.error, ValueError, TypeError) as exc:
                raise damaged(location, path, f"has an unreadable flush record at byte {body_offset} ({exc})") from exc
            yield Outcome(header, body, _HEADER_LENGTH.size + header_length), end


def read_payload(location: str, file: BinaryIO, path: Path, entry: InputEntry) -> bytes:
    """The payload of one batch, its frame's CRC checked."""
    file.seek(entry.body_offset)
    body = file.read(entry.body_length)
    if len(body) < entry.body_length or zlib.crc32(body) != entry.crc:
        raise damaged(location, path, f"has a corrupt batch record at byte {entry.body_offset}")
    return body[_BATCH_HEAD_SIZE + entry.size :]
