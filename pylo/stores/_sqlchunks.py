"""Which worker ran which positions, in the SQL store (mixed into ``SQLStore``).

A flush carries one :class:`~pylo.stores.base.ChunkRow` per chunk of
outcomes; they go into ``pylo_chunks`` with one ``executemany``, in the
flush's transaction, so they are exactly as durable as the outcomes. The
table came after format version 1 (see :mod:`pylo.stores._sqlschema`): the
first flush that has rows creates it, and reading takes its absence as "no
rows recorded".
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pylo.stores._sqlschema import CHUNKS
from pylo.stores.base import ChunkRow, ExecutionRecord

__all__ = ["SQLChunksMixin"]


class SQLChunksMixin:
    """:meth:`~pylo.stores.base.Store.read_chunks` for ``SQLStore`` (its flushes write the rows)."""

    if TYPE_CHECKING:  # provided by SQLStore and SQLMetaMixin

        def _guard(self, action: str) -> contextlib.AbstractContextManager[None]: ...
        def _read(self) -> contextlib.AbstractContextManager[Connection]: ...
        def _has_table(self, conn: Connection, table: sa.Table) -> bool: ...
        def get_execution(self, execution_id: str) -> ExecutionRecord: ...

    def read_chunks(self, execution_id: str) -> list[ChunkRow]:
        """See :meth:`Store.read_chunks`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The database cannot be read.
        """
        self.get_execution(execution_id)  # the existence check
        with self._guard(f"read the chunks of execution {execution_id!r}"), self._read() as conn:
            if not self._has_table(conn, CHUNKS):
                return []
            query = (
                sa.select(CHUNKS.c.first_position, CHUNKS.c.last_position, CHUNKS.c.worker)
                .where(CHUNKS.c.execution_id == execution_id)
                .order_by(CHUNKS.c.first_position)
            )
            return [ChunkRow(int(first), int(last), int(worker)) for first, last, worker in conn.execute(query)]
