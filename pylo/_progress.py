"""The progress bar: tqdm on stderr, showing inputs done, failures, rate and ETA.

The coordinator reports each batch of outcomes it takes in; the bar only
redraws as often as tqdm decides (``mininterval``), so reporting costs a
few attribute updates per chunk, not per input.
"""

from __future__ import annotations

import contextvars
import sys
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

    def update(self, finished: int, failed: int) -> None:
        """Count newly finished and failed inputs."""
        if failed:
            self._failed += failed
            self._bar.set_postfix_str(f"failed={self._failed:,}", refresh=False)
        self._bar.update(finished + failed)

    def close(self) -> None:
        """Draw the final state and release the terminal line."""
        self._bar.close()
