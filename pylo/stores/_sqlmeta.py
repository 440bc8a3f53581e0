"""What the SQL store keeps beside executions: resume claims and labels (mixed into ``SQLStore``).

Both tables came after format version 1 (see :mod:`pylo.stores._sqlschema`):
they are created by the first write that needs them, and reads take their
absence as "nothing recorded", so a store of the previous release opens and
reads unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pylo.stores._sqlschema import CLAIMS, LABELS, SCHEMA_LOCK_KEY
from pylo.stores.base import Claim

__all__ = ["SQLMetaMixin"]

#: Executions per query when rows of some executions (labels, stop reasons) are read.
_ID_PAGE = 500


class SQLMetaMixin:
    """Claims and labels of :class:`~pylo.stores.sql.SQLStore`, in its transactions."""

    if TYPE_CHECKING:  # provided by SQLStore
        location: str

        def _guard(self, action: str) -> contextlib.AbstractContextManager[None]: ...
        def _read(self) -> contextlib.AbstractContextManager[Connection]: ...
        def _write(self) -> contextlib.AbstractContextManager[Connection]: ...
        def _input_source(self, conn: Connection, execution_id: str) -> str: ...

        _is_postgres: bool
        _tables: set[str]

    def _has_table(self, conn: Connection, table: sa.Table) -> bool:
        """Whether an optional table exists; a missing one is looked for again (another pylo may add it)."""
        if table.name not in self._tables:
            self._tables = set(sa.inspect(conn).get_table_names())
        return table.name in self._tables

    def _ensure_table(self, conn: Connection, table: sa.Table) -> None:
        """Create an optional table inside a write transaction, once, if this store predates it."""
        if self._has_table(conn, table):
            return
        if self._is_postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        table.create(conn, checkfirst=True)
        # Not noted as there yet: until this transaction commits, another thread's
        # transaction on this store cannot see the table (PostgreSQL), and it must
        # take the lock above rather than write to it. The next look finds it.

    # -- claims ----------------------------------------------------------------

    def claim_execution(self, execution_id: str, claim: Claim, *, replacing: Claim | None = None) -> Claim | None:
        """See :meth:`Store.claim_execution`.

        The claim is a row of ``pylo_claims``, keyed by the claimed
        execution: its primary key decides between racing inserts, and a
        replacement is an UPDATE conditioned on the stale holder, which only
        one of racing replacements can match.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The database cannot be written.
        """
        row = {
            "execution_id": execution_id,
            "claimant": claim.claimant,
            "pid": claim.pid,
            "host": claim.host,
            "claimed_at": float(claim.claimed_at),
        }
        with self._guard(f"claim execution {execution_id!r}"):
            try:
                with self._write() as conn:
                    self._ensure_table(conn, CLAIMS)
                    self._input_source(conn, execution_id)  # the existence check
                    if replacing is not None:
                        updated = conn.execute(
                            CLAIMS.update()
                            .where(
                                CLAIMS.c.execution_id == execution_id,
                                CLAIMS.c.claimant == replacing.claimant,
                                CLAIMS.c.pid == replacing.pid,
                                CLAIMS.c.host == replacing.host,
                            )
                            .values(**row)
                        )
                        if updated.rowcount:
                            return None
                    current = self._current_claim(conn, execution_id)
                    if current is not None:
                        return current
                    conn.execute(CLAIMS.insert(), row)
                    return None
            except IntegrityError:
                # Another process inserted its claim after we looked: it won.
                with self._read() as conn:
                    current = self._current_claim(conn, execution_id)
                if current is None:
                    raise
                return current

    def release_claim(self, execution_id: str, claimant: str) -> None:
        """See :meth:`Store.release_claim`.

        Raises:
            StoreError: The database cannot be written.
        """
        with self._guard(f"release the claim on execution {execution_id!r}"), self._write() as conn:
            if self._has_table(conn, CLAIMS):
                conn.execute(
                    CLAIMS.delete().where(CLAIMS.c.execution_id == execution_id, CLAIMS.c.claimant == claimant)
                )

    def _current_claim(self, conn: Connection, execution_id: str) -> Claim | None:
        row = conn.execute(sa.select(CLAIMS).where(CLAIMS.c.execution_id == execution_id)).first()
        if row is None:
            return None
        return Claim(execution_id, row.claimant, int(row.pid), row.host, float(row.claimed_at))

    # -- labels ----------------------------------------------------------------

    def _insert_labels(self, conn: Connection, execution_id: str, labels: Mapping[str, str]) -> None:
        """Record an execution's labels, inside the transaction that creates it."""
        if labels:
            self._ensure_table(conn, LABELS)
            conn.execute(
                LABELS.insert(),
                [{"execution_id": execution_id, "key": key, "value": value} for key, value in labels.items()],
            )

    def _labels_of(self, conn: Connection, ids: Iterable[str] | None) -> dict[str, dict[str, str]]:
        """``id -> labels`` of the given executions (of all when ``ids`` is None)."""
        found: dict[str, dict[str, str]] = {}
        for execution_id, key, value in self._rows_of_executions(conn, LABELS, ids):
            found.setdefault(str(execution_id), {})[str(key)] = str(value)
        return found

    def _rows_of_executions(self, conn: Connection, table: sa.Table, ids: Iterable[str] | None) -> Iterator[Any]:
        """The rows of ``table`` (one keyed by ``execution_id``) of the given executions, of all when ``ids`` is None.

        ``table`` is an optional one: a store that does not have it has no rows.
        """
        if not self._has_table(conn, table):
            return
        query = sa.select(table)
        for page in [None] if ids is None else _pages(list(ids)):
            yield from conn.execute(query if page is None else query.where(table.c.execution_id.in_(page)))


def _pages(ids: list[str]) -> list[list[str] | None]:
    return [ids[start : start + _ID_PAGE] for start in range(0, len(ids), _ID_PAGE)]
