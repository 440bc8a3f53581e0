"""Reading kept results back from the SQL store (mixed into ``SQLStore``).

Results are written by the flush that finishes their inputs (``pylo_results``,
one row per kept result); here they are read back in pages by position.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pylo.stores import _sqlschema
from pylo.stores._sqlschema import RESULTS

__all__ = ["SQLResultsMixin"]


class SQLResultsMixin:
    """:meth:`~pylo.stores.base.Store.read_results` of :class:`~pylo.stores.sql.SQLStore`."""

    if TYPE_CHECKING:  # provided by SQLStore

        def _guard(self, action: str) -> contextlib.AbstractContextManager[None]: ...
        def _read(self) -> contextlib.AbstractContextManager[Connection]: ...
        def _input_source(self, conn: Connection, execution_id: str) -> str: ...

    def read_results(self, execution_id: str) -> Iterator[tuple[int, bytes]]:
        """See :meth:`Store.read_results`.

        Results are read in pages by position, each page its own short
        transaction, so a slow consumer holds no connection or snapshot.

        Raises:
            ExecutionNotFound: No such execution (raised before returning).
            StoreError: The database cannot be read.
        """
        with self._guard(f"read the results of execution {execution_id!r}"), self._read() as conn:
            self._input_source(conn, execution_id)
        return self._results(execution_id)

    def _results(self, execution_id: str) -> Iterator[tuple[int, bytes]]:
        after = -1
        while True:
            with self._guard(f"read the results of execution {execution_id!r}"), self._read() as conn:
                page = conn.execute(
                    sa.select(RESULTS.c.position, RESULTS.c.value)
                    .where(RESULTS.c.execution_id == execution_id, RESULTS.c.position > after)
                    .order_by(RESULTS.c.position)
                    .limit(_sqlschema.RESULT_PAGE)
                ).all()
            for position, value in page:
                yield int(position), bytes(value)
            if len(page) < _sqlschema.RESULT_PAGE:
                return
            after = int(page[-1].position)
