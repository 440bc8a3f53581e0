"""One worker process as its parent sees it: start it, talk to it, end it.

The parent's ends of both pipes are non-blocking. Chunks that a full pipe
does not take wait in ``unsent`` until the pipe has room (the backend's
poll waits for that), so the parent never blocks on a worker that is itself
blocked writing to the parent. Messages are read in one call for whatever
the pipe holds, then split into frames.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from pylo.workers import _process_child
from pylo.workers._process_wire import Boot, Kit, Unframer

__all__ = ["REAP_SECONDS", "WorkerProcess", "end_strays", "how_it_ended", "join_all"]

#: Seconds to wait for ending processes to be reaped.
REAP_SECONDS = 5.0


@dataclass(slots=True)
class WorkerProcess:
    """A worker process, the parent's ends of its pipes, and its live state."""

    process: Any
    inbox: Connection  # written without blocking
    outbox: Connection  # read without blocking
    state: Any
    unsent: bytearray = field(default_factory=bytearray)  # frames the pipe has not taken yet
    unframer: Unframer = field(default_factory=Unframer)
    eof: bool = False

    @classmethod
    def start(cls, context: Any, lane: int, kit: Kit, spawned: list[Any]) -> WorkerProcess:
        """Start a worker process for ``lane``.

        The process is added to ``spawned`` before it starts, so that it can
        be ended even if an interrupt comes before this returns.
        """
        inbox_reader, inbox_writer = context.Pipe(duplex=False)
        outbox_reader, outbox_writer = context.Pipe(duplex=False)
        state = context.RawArray("d", [-1.0, 0.0, 0.0])
        boot = Boot(lane, kit, inbox_reader, outbox_writer, state)
        process = context.Process(target=_process_child.main, args=(boot,), name=f"pylo-worker-{lane}")
        spawned.append(process)
        try:
            with _signals_blocked():
                process.start()
        except BaseException:
            inbox_writer.close()
            outbox_reader.close()
            raise
        finally:
            # Only the child may hold its ends, so that its death reads as EOF and EPIPE here.
            inbox_reader.close()
            outbox_writer.close()
        os.set_blocking(inbox_writer.fileno(), False)
        os.set_blocking(outbox_reader.fileno(), False)
        return cls(process, inbox_writer, outbox_reader, state)

    def send(self, framed: bytes) -> None:
        """Send a frame, or as much of it as the pipe takes now; :meth:`push` sends the rest."""
        if self.unsent:
            self.unsent += framed
            self.push()
            return
        written = self._write(framed)
        if written < len(framed):
            self.unsent += framed[written:]

    def push(self) -> None:
        """Send more of what the pipe did not take before."""
        del self.unsent[: self._write(self.unsent)]

    def _write(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.inbox.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError:  # the process is gone: its chunks go to its replacement
            return len(data)

    def receive(self) -> list[tuple[Any, ...]]:
        """Every whole message the pipe holds now; sets ``eof`` once the process closed it."""
        frames, closed = self.unframer.read(self.outbox.fileno())
        if closed:
            self.eof = True
        return [pickle.loads(data) for data in frames]

    def release(self) -> None:
        """Free the pipes and the process handle of a process that has ended."""
        self.inbox.close()
        self.outbox.close()
        with contextlib.suppress(ValueError):  # still running: only after a failed kill
            self.process.close()


def end_strays(processes: list[Any]) -> None:
    """Kill and reap any of ``processes`` still running (lost to an interrupt while starting)."""
    for process in processes:
        try:
            if process.pid is None:
                continue  # never started
            if process.is_alive():
                process.kill()
            process.join(REAP_SECONDS)
        except ValueError:
            continue  # closed: reaped and released already


def join_all(workers: list[WorkerProcess]) -> None:
    """Wait, REAP_SECONDS at most in all, for the processes to end, and reap them."""
    deadline = time.monotonic() + REAP_SECONDS
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))


def how_it_ended(exitcode: int | None) -> str:
    """How a process ended, for messages: ``exited with code 3``, ``was killed by signal SIGKILL``."""
    if exitcode is None:
        return "did not end"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (often the system running out of memory)" if name == "SIGKILL" else ""
        return f"was killed by signal {name}{hint}"
    return f"exited with code {exitcode}"


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM while a worker starts, in it and here.

    A forked or spawned worker inherits the signal mask, so a Ctrl-C or a
    SIGTERM to the process group that arrives before the worker has set them
    to be ignored waits instead of ending it. In this process, Python runs
    signal handlers in the main thread whichever thread the signal reached,
    so a mask alone would not keep a ``KeyboardInterrupt`` out of
    ``Process.start()``: raised there after the child exists but before its
    handle does, it would leave a child nobody reaps (a zombie). So in the
    main thread the handlers are held too, and a signal that came meanwhile
    is handled once the worker has started.
    """
    held: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for which in (signal.SIGINT, signal.SIGTERM):
            previous[int(which)] = signal.signal(which, lambda number, frame: held.append(number))
    mask = None
    if hasattr(signal, "pthread_sigmask"):
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in held:
            handler = previous[number]
            if callable(handler):
                handler(number, None)  # KeyboardInterrupt, SystemExit, or the application's own
            elif handler == signal.SIG_DFL:
                signal.raise_signal(number)
