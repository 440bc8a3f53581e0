"""Bodies of the processes that resume one execution at once (imported by name when spawned)."""

from __future__ import annotations

import functools
import threading
from typing import Any

from pylo import Pylo

#: Seconds any wait in a test process may block before failing.
WAIT = 60.0


def hold(started: Any, release: Any, item: int) -> int:
    """A task that says it runs, then waits to be released (or, with no ``release``, to be killed).

    A process killed while it waits on a shared Event would hang the next
    ``Event.set()`` of every other process, so a victim waits on its own.
    """
    started.set()
    if not (release or threading.Event()).wait(timeout=WAIT):
        raise TimeoutError("never released")
    return item


def resume_and_hold(
    store_dir: str, store_arg: str, past_id: str, new_id: str, go: Any, started: Any, release: Any, results: Any
) -> None:
    """Once told to go, resume ``past_id`` as ``new_id`` with :func:`hold`; report how it ended."""
    try:
        if not go.wait(timeout=WAIT):
            raise TimeoutError("never told to go")
        with Pylo.local_multithread(store_dir, 1, store=store_arg, progress=False) as pylo:
            pylo.start_from_past_execution(past_id, functools.partial(hold, started, release), execution_id=new_id)
        results.put((new_id, "ok"))
    except BaseException as exc:  # reported to the test, which asserts on it
        results.put((new_id, f"{type(exc).__name__}: {exc}"))
