"""What a worker process and its parent share: boot arguments, live state, messages.

Live state: one ``RawArray('d', 3)`` per worker process, written only by the
child, read by the parent without a lock (each slot is one aligned 8-byte
store, so a read never sees half a value)::

    KEY            serial * KEY_SPAN + done: the chunk being run, and how many
                   of its inputs have an outcome. One slot, so the pair is
                   always read consistently. -1 before the first chunk.
    INPUT_STARTED  time.monotonic() when the current input started, 0.0 when
                   no input is running (nor while it waits for a rate-limit
                   token). Written before KEY when an input starts, so a
                   reader that sees the new KEY sees its start.
    CHUNK_STARTED  time.monotonic() when the chunk started.

Messages from the child, per chunk and in this order, over the lane's pipe
(each a pickled tuple in a frame, see below)::

    (FAILED, serial, seq, index, TaskFailure)   as each failure happens
    (RESULT, serial, seq, index, bytes)         as each result is made (store_results)
    (DONE, serial, sent, attempted, interrupt, elapsed)
    (BROKEN, message)                           the worker cannot go on
    (INIT_FAILED, InitializerFailed)            its initializer raised; it runs nothing

``seq`` numbers a chunk's FAILED/RESULT messages from 0 and ``sent`` says how
many there were, so the parent can tell if it missed one (a Ctrl-C landing
between receiving a message and keeping it) and then trust only the outcomes
before the gap.

To the child: a pickled ``(serial, chunk_id, budget, inputs)``, or an empty
frame to stop.

Both ways, messages travel in frames of our own (an 8-byte length, then the
bytes) rather than ``Connection.send_bytes``: the parent writes them without
blocking, a part at a time when a pipe is full, and reads whatever a pipe
holds in one call, then splits it (results can come one per input).
"""

from __future__ import annotations

import os
import pickle
import struct
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pylo.workers._runner import qualified_name

__all__ = [
    "BROKEN",
    "CHUNK_STARTED",
    "DONE",
    "FAILED",
    "INIT_FAILED",
    "INPUT_STARTED",
    "KEY",
    "KEY_SPAN",
    "RESULT",
    "Boot",
    "Kit",
    "SharedFlag",
    "decode_interrupt",
    "encode_interrupt",
    "Unframer",
    "frame",
    "read_frame",
    "write_frame",
]

KEY, INPUT_STARTED, CHUNK_STARTED = 0, 1, 2
#: Inputs per chunk must stay below this; serials below 2**53 / KEY_SPAN keep KEY exact.
KEY_SPAN = 1 << 24

FAILED, RESULT, DONE, BROKEN, INIT_FAILED = "failed", "result", "done", "broken", "init-failed"

_HEADER = struct.Struct("!Q")

#: An interrupt as it travels: (kind, type name, message, pickled or None).
EncodedInterrupt = tuple[str, str, str, bytes | None]


@dataclass(frozen=True, slots=True)
class Kit:
    """What every worker process of one execution starts from.

    Attributes:
        function: The task function, pickled by :func:`~pylo.workers._pickling.dumps`.
        settings: The :class:`~pylo.workers.base.RunnerSettings`, pickled the same way.
        stop: The execution's stop flag cell (``RawArray('b', 1)``).
        gate: ``(limit, counter, lock)`` of the shared failure gate, or None.
        bucket: ``(rate, state, lock)`` of the shared token bucket, or None.
    """

    function: bytes
    settings: bytes
    stop: Any
    gate: tuple[int, Any, Any] | None
    bucket: tuple[float, Any, Any] | None


@dataclass(frozen=True, slots=True)
class Boot:
    """What one worker process starts from (its ``Process`` argument).

    Attributes:
        lane: The lane (worker number) it serves.
        kit: What all the execution's workers share.
        inbox: Where chunks arrive.
        outbox: Where messages go.
        state: This process's live state (see the module docstring).
    """

    lane: int
    kit: Kit
    inbox: Connection
    outbox: Connection
    state: Any


class SharedFlag:
    """A one-way stop flag in shared memory, set once from any process.

    Cheaper to check than a ``multiprocessing.Event`` (a memory read instead
    of a lock round trip), which matters because lanes check it per input.
    """

    __slots__ = ("_cell",)

    def __init__(self, cell: Any) -> None:
        self._cell = cell

    def is_set(self) -> bool:
        return bool(self._cell[0])

    def set(self) -> None:
        self._cell[0] = 1


def encode_interrupt(exc: BaseException) -> EncodedInterrupt:
    """Describe a task's ``BaseException`` so the parent can re-raise it."""
    try:
        kept: bytes | None = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        kept = None
    kind = "KeyboardInterrupt" if isinstance(exc, KeyboardInterrupt) else "BaseException"
    if isinstance(exc, SystemExit):
        kind = "SystemExit"
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    return kind, qualified_name(type(exc)), message, kept


def decode_interrupt(encoded: EncodedInterrupt) -> BaseException:
    """The interrupt itself, or a stand-in of the nearest built-in kind naming it."""
    kind, type_name, message, kept = encoded
    if kept is not None:
        try:
            exc = pickle.loads(kept)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            return exc
    text = f"{type_name}: {message} (raised by the task in a worker process)"
    if kind == "KeyboardInterrupt":
        return KeyboardInterrupt(text)
    if kind == "SystemExit":
        return SystemExit(text)
    return BaseException(text)


def frame(payload: bytes) -> bytes:
    """A frame holding ``payload``, to write to a worker's inbox."""
    return _HEADER.pack(len(payload)) + payload


def read_frame(fd: int) -> bytes | None:
    """The next frame's payload from ``fd``, or None at end of file."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    return _read_exactly(fd, size) if size else b""


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts = []
    left = size
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def write_frame(fd: int, payload: bytes) -> None:
    """Write a frame holding ``payload`` to the blocking ``fd``, all of it."""
    data = memoryview(frame(payload))
    while data:
        data = data[os.write(fd, data) :]


class Unframer:
    """Splits what a non-blocking pipe holds into frames; keeps a partial one for later."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def read(self, fd: int) -> tuple[list[bytes], bool]:
        """Every complete frame the pipe holds now, and whether its writers are gone (EOF)."""
        closed = False
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                closed = True
                break
            self._buffer += data
            if len(data) < 1 << 16:
                break  # the pipe is empty: spare the call that would say so
        return self._split(), closed

    def _split(self) -> list[bytes]:
        buffer = self._buffer
        frames = []
        offset = 0
        size_of_header = _HEADER.size
        while len(buffer) - offset >= size_of_header:
            (size,) = _HEADER.unpack_from(buffer, offset)
            end = offset + size_of_header + size
            if end > len(buffer):
                break
            frames.append(bytes(buffer[offset + size_of_header : end]))
            offset = end
        del buffer[:offset]
        return frames
