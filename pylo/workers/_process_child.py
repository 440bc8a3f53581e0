"""The inside of a worker process: run chunks with a LaneRunner, publish progress.

The child runs each chunk with the same :class:`~pylo.workers._runner.LaneRunner`
as thread lanes, so budgets, retries, results, ``max_failures`` and rate
limits behave identically. Around it, the child makes sure the parent can
tell, at any moment and even after a crash, which input is running and what
happened to the ones before it:

- the runner takes inputs from a :class:`_Published` view of the chunk, which
  writes the running input's index and start time into shared memory as the
  runner takes it (two stores per input);
- each failure is sent as it is described (failures are rare), and with
  ``store_results`` each input runs as a chunk of its own so that its result
  is sent before the next input starts.

So whatever the parent reads, every outcome below the published index is
already in the pipe.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

from pylo._ratelimit import TokenBucket
from pylo.workers._initializer import run_initializer
from pylo.workers._pickling import loads
from pylo.workers._process_wire import (
    BROKEN,
    CHUNK_STARTED,
    DONE,
    FAILED,
    INIT_FAILED,
    INPUT_STARTED,
    KEY,
    KEY_SPAN,
    RESULT,
    Boot,
    SharedFlag,
    encode_interrupt,
    read_frame,
    write_frame,
)
from pylo.workers._runner import FailureGate, LaneRunner
from pylo.workers.base import RunnerSettings, TaskFailure

__all__ = ["main"]

#: Exit status of a worker whose parent died (it has no one to report to).
EXIT_ORPHANED = 70


def main(boot: Boot) -> None:
    """Entry point of a worker process: serve chunks until told to stop."""
    _leave_signals_to_the_parent()
    _exit_with_parent()
    try:
        function = loads(boot.kit.function)
        settings = loads(boot.kit.settings)
    except BaseException as exc:
        _broken(boot, f"worker {boot.lane} could not load the task function: {type(exc).__name__}: {exc}")
        return
    # Before the first chunk is read; a process that replaces a dead one runs it again.
    failed = run_initializer(settings.initializer, settings.initargs, f"worker {boot.lane} (process {os.getpid()})")
    if failed is not None:
        _say(boot, (INIT_FAILED, failed))
        return
    try:
        _ChildLane(boot, function, settings).serve()
    except _Unreadable as exc:
        _broken(boot, f"worker {boot.lane} {exc}")
    except BaseException:  # a bug of pylo's own: the parent raises it
        _broken(boot, f"worker {boot.lane} failed:\n{traceback.format_exc()}")


def _leave_signals_to_the_parent() -> None:
    """Ignore Ctrl-C and SIGTERM: the parent decides what they mean.

    Both reach the whole process group (a terminal's Ctrl-C, systemd's
    SIGTERM when it stops a service). The parent turns them into an
    interrupt and stops the workers itself, so the inputs they were running
    stay pending; a worker that died of the signal on its own would look
    like a crash and fail its input. With fork, the parent's handlers were
    inherited, so both are set here. The parent blocked both around the
    start, so a signal in between waits, and is dropped once unblocked. The
    parent ends workers with SIGKILL.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _exit_with_parent() -> None:
    """End this process as soon as the parent is gone, even in the middle of a task."""
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="pylo-parent-watch", daemon=True).start()


def _broken(boot: Boot, message: str) -> None:
    _say(boot, (BROKEN, message))


def _say(boot: Boot, message: tuple[Any, ...]) -> None:
    """Send the parent why this process ends, if it can still hear it."""
    try:
        write_frame(boot.outbox.fileno(), pickle.dumps(message))
    except Exception:
        pass  # the parent is gone or the pipe is broken: the exit status must do


class _Unreadable(Exception):
    """A chunk this process cannot unpickle (say, inputs of a class it cannot import)."""


class _ReportingRunner(LaneRunner):
    """A LaneRunner that also hands each failure to ``report`` as it is described."""

    def __init__(self, report: Callable[[TaskFailure], None], *args: Any) -> None:
        super().__init__(*args)
        self._report = report

    def failure(self, exc: BaseException, attempts: int) -> TaskFailure:
        described = super().failure(exc, attempts)
        self._report(described)
        return described


class _TimedBucket(TokenBucket):
    """The shared token bucket; waiting for a token does not count as the input's time.

    While the lane waits, the live state says no input is running, so the
    timeout does not tick and a death then leaves the input pending; the
    input's time starts once it has its token.
    """

    def __init__(self, live_state: Any, *args: Any) -> None:
        super().__init__(*args)
        self._live_state = live_state

    def acquire(self, sleep: Any = time.sleep) -> None:
        self._live_state[INPUT_STARTED] = 0.0
        super().acquire(sleep)
        self._live_state[INPUT_STARTED] = time.monotonic()


class _ChildLane:
    """Serves one lane's chunks in this process."""

    def __init__(self, boot: Boot, function: Callable[[Any], Any], settings: RunnerSettings) -> None:
        self._inbox = boot.inbox
        self._outbox = boot.outbox.fileno()
        self._state = boot.state
        kit = boot.kit
        self._stop = stop = SharedFlag(kit.stop)
        gate = None if kit.gate is None else FailureGate(kit.gate[0], stop, kit.gate[1], kit.gate[2])
        limiter = None
        if kit.bucket is not None:
            rate, bucket_state, lock = kit.bucket
            limiter = _TimedBucket(boot.state, rate, 1.0, bucket_state, lock)
        self._runner = _ReportingRunner(self._report_failure, function, boot.lane, settings, stop, gate, limiter)
        # With results, each input is a chunk of its own for the runner, so
        # that its result can be sent before the next input starts.
        self._one_by_one = settings.store_results
        self._serial = 0
        self._base = 0
        self._sent = 0

    def serve(self) -> None:
        inbox = self._inbox.fileno()
        while data := read_frame(inbox):  # an empty frame, or end of file: stop
            try:
                serial, chunk_id, budget, inputs = loads(data)
            except Exception as exc:
                raise _Unreadable(f"could not read a chunk of inputs: {type(exc).__name__}: {exc}") from exc
            self._run(serial, chunk_id, budget, inputs)

    def _run(self, serial: int, chunk_id: int, budget: int, inputs: Sequence[Any]) -> None:
        state = self._state
        self._serial = serial
        self._base = serial * KEY_SPAN
        self._sent = 0
        started = time.perf_counter()
        state[INPUT_STARTED] = 0.0
        state[CHUNK_STARTED] = time.monotonic()
        state[KEY] = self._base
        runner = self._runner
        interrupt: BaseException | None = None
        if not self._one_by_one:
            outcome = runner.run(chunk_id, _Published(state, self._base, inputs, 0, len(inputs)), budget)
            attempted, interrupt = outcome.attempted, outcome.interrupt
        else:
            attempted = 0
            for index in range(len(inputs)):
                outcome = runner.run(chunk_id, _Published(state, self._base, inputs, index, index + 1), budget)
                for _, encoded in outcome.results:
                    self._send(RESULT, index, encoded)
                attempted = index + outcome.attempted
                interrupt = outcome.interrupt
                if not outcome.attempted or interrupt is not None:
                    break
        # No input runs from here on: a timeout must not fire while the result is sent.
        state[INPUT_STARTED] = 0.0
        if attempted == len(inputs):
            # Only now, with every result and failure of the chunk in the pipe,
            # may the parent read the whole chunk as done: a progress() report
            # of it before its last result arrived would count that input
            # finished without its result (and the result would be dropped).
            state[KEY] = self._base + attempted
        if interrupt is not None:
            # The execution is being interrupted: every lane stops after its
            # current input now, without waiting for the parent to say so.
            self._stop.set()
        elapsed = time.perf_counter() - started
        sent_interrupt = None if interrupt is None else encode_interrupt(interrupt)
        self._post((DONE, serial, self._sent, attempted, sent_interrupt, elapsed))

    def _report_failure(self, failure: TaskFailure) -> None:
        # The failing input is the one published last.
        self._send(FAILED, int(self._state[KEY]) - self._base, failure)

    def _send(self, tag: str, index: int, payload: Any) -> None:
        self._post((tag, self._serial, self._sent, index, payload))
        self._sent += 1

    def _post(self, message: tuple[Any, ...]) -> None:
        write_frame(self._outbox, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


class _Published(Sequence[Any]):
    """Inputs ``[start, stop)`` of a chunk that publish each input as the runner takes it.

    The runner takes an input only once it is done with the one before, so
    the index published is also how many inputs of the chunk have an outcome.
    """

    def __init__(self, state: Any, base: int, inputs: Sequence[Any], start: int, stop: int) -> None:
        self._state = state
        self._base = base
        self._inputs = inputs
        self._start = start
        self._stop = stop

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        # Plain access, for completeness: only iterating publishes.
        window = range(self._start, self._stop)[index]
        if isinstance(window, range):
            return [self._inputs[position] for position in window]
        return self._inputs[window]

    def __iter__(self) -> Iterator[Any]:
        state = self._state
        base = self._base
        inputs = self._inputs
        clock = time.monotonic
        for index in range(self._start, self._stop):
            state[INPUT_STARTED] = clock()
            state[KEY] = base + index
            yield inputs[index]
        # The input taken last has ended, but its result may not be sent yet:
        # the key stays on it until _ChildLane._run has sent it.
        state[INPUT_STARTED] = 0.0
