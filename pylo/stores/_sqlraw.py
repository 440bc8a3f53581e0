"""SQL statements compiled once per kind of database, run through the driver with plain values.

The hot statements of a store (a flush's count update, state updates,
failure and result inserts) carry plain values — text, numbers, bytes — that
every driver takes as they are. Building and compiling the statement for
every flush, and SQLAlchemy's per-row parameter processing, cost more than
the database's own work; here the statement is built and compiled by
SQLAlchemy once, for one dialect, and its text and parameter order are kept.
The driver runs it (one row, or many rows through its ``executemany``):
through ``Connection.exec_driver_sql`` inside SQLAlchemy's transaction, or,
for the hottest writes, on the driver's own connection from SQLAlchemy's
pool (``SQLStore._driver_write``); either way errors are wrapped as
SQLAlchemy's own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["Raw", "compiled"]


@dataclass(frozen=True, slots=True)
class Raw:
    """One compiled statement: its text, and its parameter order when the paramstyle is positional."""

    sql: str
    names: tuple[str, ...] | None

    @classmethod
    def compile(cls, statement: sa.ClauseElement, dialect: sa.Dialect, column_keys: list[str] | None = None) -> Raw:
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        assert isinstance(compiled, SQLCompiler)
        return cls(str(compiled), tuple(compiled.positiontup or ()) if compiled.positional else None)

    def params(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Rows of named values as the driver's ``executemany`` takes them."""
        if self.names is None:
            return list(rows)
        names = self.names
        return [tuple([row[name] for name in names]) for row in rows]

    def one(self, row: Mapping[str, Any]) -> Any:
        """One row of named values as the driver's ``execute`` takes it."""
        if self.names is None:
            return row
        return tuple([row[name] for name in self.names])


#: Compiled statements by (name, dialect name, driver, paramstyle).
_COMPILED: dict[tuple[str, str, str, str], Raw] = {}
_LOCK = threading.Lock()


def compiled(
    name: str,
    dialect: sa.Dialect,
    build: Callable[[], tuple[sa.ClauseElement, list[str] | None]],
) -> Raw:
    """The statement ``name`` compiled for ``dialect``, built by ``build`` the first time in a process.

    Compiling costs milliseconds: a store opened only to be read never pays
    for statements it does not run.
    """
    key = (name, dialect.name, dialect.driver, str(dialect.paramstyle))
    raw = _COMPILED.get(key)
    if raw is None:
        with _LOCK:
            raw = _COMPILED.get(key)
            if raw is None:
                statement, column_keys = build()
                raw = _COMPILED[key] = Raw.compile(statement, dialect, column_keys)
    return raw
