"""Deleting an execution from the SQL store (mixed into ``SQLStore``): one transaction, all rows or none."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pylo.errors import ExecutionInUse
from pylo.stores._sqlschema import BATCHES, CHUNKS, CLAIMS, EXECUTIONS, FAILURES, LABELS, RESULTS, STOPS

__all__ = ["SQLDeleteMixin"]


class SQLDeleteMixin:
    """:meth:`~pylo.stores.base.Store.delete_execution` of :class:`~pylo.stores.sql.SQLStore`."""

    if TYPE_CHECKING:  # provided by SQLStore and SQLMetaMixin
        location: str
        _is_postgres: bool

        def _guard(self, action: str) -> contextlib.AbstractContextManager[None]: ...
        def _write(self) -> contextlib.AbstractContextManager[Connection]: ...
        def _input_source(self, conn: Connection, execution_id: str) -> str: ...
        def _has_table(self, conn: Connection, table: sa.Table) -> bool: ...

    def delete_execution(self, execution_id: str) -> None:
        """See :meth:`Store.delete_execution`.

        The check for dependents and every delete share one write
        transaction (on SQLite it holds the write lock from its start, so
        no execution can be created between the check and the deletes).

        Raises:
            ExecutionNotFound: No such execution.
            ExecutionInUse: Other executions resumed it.
            StoreError: The database cannot be written.
        """
        with self._guard(f"delete execution {execution_id!r}"), self._write() as conn:
            if self._is_postgres:
                # Row lock: two deletes of one execution (or a delete racing
                # a claim's update) queue instead of interleaving.
                conn.execute(sa.select(EXECUTIONS.c.id).where(EXECUTIONS.c.id == execution_id).with_for_update())
            self._input_source(conn, execution_id)  # the existence check
            dependents = list(
                conn.execute(
                    sa.select(EXECUTIONS.c.id)
                    .where(
                        sa.or_(EXECUTIONS.c.parent_id == execution_id, EXECUTIONS.c.input_source == execution_id),
                        EXECUTIONS.c.id != execution_id,
                    )
                    .order_by(EXECUTIONS.c.created_at, EXECUTIONS.c.id)
                ).scalars()
            )
            if dependents:
                # Raised inside the transaction: it rolls back, nothing changed.
                raise ExecutionInUse.resumed_by(execution_id, [str(d) for d in dependents], self.location)
            # Rows that point at the execution first (foreign keys), the execution last.
            for table in (BATCHES, FAILURES, RESULTS):
                conn.execute(table.delete().where(table.c.execution_id == execution_id))
            for table in (LABELS, CLAIMS, CHUNKS, STOPS):
                if self._has_table(conn, table):  # optional tables, absent from older stores
                    conn.execute(table.delete().where(table.c.execution_id == execution_id))
            conn.execute(EXECUTIONS.delete().where(EXECUTIONS.c.id == execution_id))
