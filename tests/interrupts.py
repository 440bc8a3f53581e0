"""Ctrl-C at a chosen statement: a KeyboardInterrupt raised right after SQLAlchemy sends it, as a signal would.

A signal's exception is raised as soon as the driver's call returns, inside
SQLAlchemy's handling of the statement; an ``after_cursor_execute``
listener raising there reproduces that moment exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from pylo.stores import _sqlschema

__all__ = ["InterruptAfter", "short_busy_timeout"]


def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite writers wait 2 s for a lock, not a minute: a lock an interrupt left held fails the test fast."""
    monkeypatch.setattr(_sqlschema, "_BUSY_TIMEOUT_MS", 2_000)


class InterruptAfter:
    """Raises KeyboardInterrupt right after the ``nth`` statement ``engine`` sends while armed, once.

    ``sent`` holds the statements counted, so a failing test can name the
    last one.
    """

    def __init__(self, engine: sa.Engine, nth: int, *, armed: bool = True) -> None:
        self.nth = nth
        self.armed = armed
        self.sent: list[str] = []
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _after(self, *args: Any) -> None:
        if self.armed:
            self.sent.append(args[2])
            if len(self.sent) == self.nth:
                self.armed = False
                raise KeyboardInterrupt
