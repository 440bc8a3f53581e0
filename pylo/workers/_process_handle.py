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
    def start(cls, context: Any, lane: int, kit: Kit, remaining: float, spawned: list[Any]) -> WorkerProcess:
        """Start a worker process for ``lane``, whose budget is down to ``remaining``.

        The process is added to ``spawned`` before it starts, so that it can
        be ended even if an interrupt comes before this returns.
        """
        inbox_reader, inbox_writer = context.Pipe(duplex=False)
        outbox_reader, outbox_writer = context.Pipe(duplex=False)
        state = context.RawArray("d", [-1.0, 0.0, 0.0])
        boot = Boot(lane, kit, inbox_reader, outbox_writer, state, remaining)
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
    """Hold back SIGINT and SIGTERM in this thread while a worker starts.

    A forked or spawned worker inherits the signal mask, so a Ctrl-C or a
    SIGTERM to the process group that arrives before the worker has set them
    to be ignored waits instead of ending it. The parent still gets the
    signal (another thread takes it, or this one once the mask is restored).
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
