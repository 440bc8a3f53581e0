"""The progress bar: tqdm on stderr, showing inputs done, failures, rate and ETA.

The coordinator reports each batch of outcomes it takes in; the bar only
redraws as often as tqdm decides (``mininterval``), so reporting costs a
few attribute updates per chunk, not per input.

While a bar is on screen, the records of the ``pylo`` logger that a
console handler prints (the ``pylo`` command's handler, or one an
application put on that logger) go through tqdm, which lifts the bar,
prints the line whole and draws the bar again below it; otherwise a
warning lands in the middle of the bar. The handlers are put back when the
last bar closes. The root logger's handlers belong to the application and
are left alone (tqdm's ``logging_redirect_tqdm()`` does the same for them).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
from typing import Any, Protocol

__all__ = ["INPUT_PROGRESS", "InputProgress", "ProgressBar", "wants_progress"]


class InputProgress(Protocol):
    """Told how an execution's inputs go (a pipeline's batch node reports them to its run's hooks)."""

    def start(self, execution_id: str, total: int, finished: int) -> None:
        """The execution starts: ``total`` inputs, ``finished`` of them already (a resume)."""

    def update(self, finished: int, failed: int) -> None:
        """Newly finished and failed inputs (from the execution's coordinator thread)."""

    def close(self) -> None:
        """The execution ended (or stopped)."""


#: Set around the start of an execution (in the starting thread) to hear how its inputs go.
INPUT_PROGRESS: contextvars.ContextVar[InputProgress | None] = contextvars.ContextVar(
    "pylo_input_progress", default=None
)


def wants_progress(progress: bool | None) -> bool:
    """``progress=None`` means: on when stderr is a terminal."""
    if progress is not None:
        return progress
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class ProgressBar:
    """A tqdm bar for one execution.

    Args:
        execution_id: Shown as the bar's description.
        total: Number of inputs of the execution.
        already_finished: Inputs a resume inherited as finished; the bar
            starts there, and the rate counts only new work.
    """

    def __init__(self, execution_id: str, total: int, already_finished: int = 0) -> None:
        from tqdm import tqdm

        self._failed = 0
        self._closed = False
        self._bar: Any = tqdm(
            total=total,
            initial=already_finished,
            desc=execution_id,
            unit="input",
            # SI prefixes (1.2M) help with millions but print 72.0/300 for small jobs.
            unit_scale=total >= 100_000,
            dynamic_ncols=True,
            mininterval=0.2,
            smoothing=0.1,
            file=sys.stderr,
            leave=True,
        )
        self._bar.set_postfix_str("failed=0", refresh=False)
        _LOGGING.enter()

    def update(self, finished: int, failed: int) -> None:
        """Count newly finished and failed inputs."""
        if failed:
            self._failed += failed
            self._bar.set_postfix_str(f"failed={self._failed:,}", refresh=False)
        self._bar.update(finished + failed)

    def close(self) -> None:
        """Draw the final state and release the terminal line (and the log handlers)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._bar.close()
        finally:
            _LOGGING.leave()


class _LogsAroundBars:
    """Routes the ``pylo`` logger's console output through tqdm while any bar is open.

    Counted, because executions in several threads may each show a bar and
    end in any order: the first bar to open swaps the handlers, the last one
    to close puts them back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bars = 0
        self._routed: contextlib.ExitStack | None = None

    def enter(self) -> None:
        with self._lock:
            self._bars += 1
            if self._bars > 1:
                return
            logger = logging.getLogger("pylo")
            # logging_redirect_tqdm adds a handler even to a logger with no
            # console handler: records would then print twice, once here and
            # once through the application's root handlers.
            if not any(_is_console(handler) for handler in logger.handlers):
                return
            from tqdm.contrib.logging import logging_redirect_tqdm

            routed = contextlib.ExitStack()
            routed.enter_context(logging_redirect_tqdm(loggers=[logger]))
            self._routed = routed

    def leave(self) -> None:
        with self._lock:
            self._bars -= 1
            if self._bars == 0 and self._routed is not None:
                routed, self._routed = self._routed, None
                routed.close()


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


_LOGGING = _LogsAroundBars()
