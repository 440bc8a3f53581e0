"""Why an execution ended early, in the SQL store (mixed into ``SQLStore``).

A flush that sets a final status carries the stop reason the coordinator
recorded (``Flush.stop_reason``, ``Flush.stop_detail``); it goes into
``pylo_stops`` in the flush's transaction, one row per execution that ended
early. The table came after format version 1 (see
:mod:`pylo.stores._sqlschema`): the first flush with a reason creates it,
and reading takes its absence as "no reason recorded", so a store written
before it opens, reads and resumes unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pylo.stores._sqlschema import STOPS, storable_text
from pylo.stores.base import Flush

__all__ = ["SQLStopsMixin"]


class SQLStopsMixin:
    """The ``pylo_stops`` rows of :class:`~pylo.stores.sql.SQLStore`, in its transactions."""

    if TYPE_CHECKING:  # provided by SQLStore and SQLMetaMixin
        _is_postgres: bool

        def _has_table(self, conn: Connection, table: sa.Table) -> bool: ...
        def _ensure_table(self, conn: Connection, table: sa.Table) -> None: ...
        def _rows_of_executions(
            self, conn: Connection, table: sa.Table, ids: Iterable[str] | None
        ) -> Iterator[Any]: ...

    def _write_stop(self, conn: Connection, execution_id: str, flush: Flush) -> None:
        """Replace the execution's stop reason with the flush's (none included), in its transaction.

        Only for a flush that sets a status: an execution's status is set
        once, at its end (or again, when an interrupt cut that write short).
        """
        if flush.stop_reason is None:
            if self._has_table(conn, STOPS):
                conn.execute(STOPS.delete().where(STOPS.c.execution_id == execution_id))
            return
        self._ensure_table(conn, STOPS)
        conn.execute(STOPS.delete().where(STOPS.c.execution_id == execution_id))
        conn.execute(
            STOPS.insert(),
            {
                "execution_id": execution_id,
                "code": flush.stop_reason,
                "detail": storable_text(flush.stop_detail, postgres=self._is_postgres),
            },
        )

    def _stops_of(self, conn: Connection, ids: Iterable[str] | None) -> dict[str, tuple[str, str | None]]:
        """``id -> (reason, detail)`` of the given executions (of all when ``ids`` is None) that have one."""
        found: dict[str, tuple[str, str | None]] = {}
        for execution_id, code, detail in self._rows_of_executions(conn, STOPS, ids):
            found[str(execution_id)] = (str(code), None if detail is None else str(detail))
        return found
