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
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["MOST_VALUES", "DriverStatement", "Raw", "compiled", "statements_for"]


#: Most values one multi-row statement binds (SQLite's limit before 3.32;
#: later versions take 32,766, and other databases more).
MOST_VALUES = 999

#: A statement as the driver runs it (``SQLStore._driver_write``): its SQL,
#: its parameters as the driver takes them, and whether they are many rows
#: (``executemany``).
DriverStatement = tuple[str, Any, bool]

#: Multi-row statements' text by (one-row text, rows).
_MULTI: dict[tuple[str, int], str] = {}


@dataclass(frozen=True, slots=True)
class Raw:
    """One compiled statement: its text, and its parameter order when the paramstyle is positional.

    ``values_at``: for a one-row ``INSERT ... VALUES (?, ...)`` with
    positional parameters, where its ``VALUES`` tuple begins (see
    :meth:`inserts`); else -1.
    """

    sql: str
    names: tuple[str, ...] | None
    values_at: int = -1

    @classmethod
    def compile(cls, statement: sa.ClauseElement, dialect: sa.Dialect, column_keys: list[str] | None = None) -> Raw:
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        assert isinstance(compiled, SQLCompiler)
        sql = str(compiled)
        names = tuple(compiled.positiontup or ()) if compiled.positional else None
        values_at = -1
        if names and isinstance(statement, sa.Insert):
            head, found, values = sql.rpartition(" VALUES ")
            placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
            if found and values == "(" + ", ".join([placeholder] * len(names)) + ")":
                values_at = len(head) + len(found)
        return cls(sql, names, values_at)

    def inserts(self, rows: Sequence[Sequence[Any]]) -> list[tuple[str, list[Any]]] | None:
        """Rows (as :meth:`params` gives them) as a few multi-row INSERTs, or None if this is not one.

        Each statement binds at most :data:`MOST_VALUES` values. On SQLite a
        driver's ``executemany`` runs one step per row, and the driver lets
        go of the interpreter for each: with task threads busy (raising and
        describing exceptions, say), getting it back each time cost about
        2 ms, so inserting 100 failures took 190 ms in turn, against 8 ms in
        one statement (``sqlite3`` alone, two busy threads beside it).
        """
        if self.values_at < 0 or not rows:
            return None
        per = max(1, MOST_VALUES // len(rows[0]))
        statements = []
        for start in range(0, len(rows), per):
            group = rows[start : start + per]
            key = (self.sql, len(group))
            sql = _MULTI.get(key)
            if sql is None:
                values = self.sql[self.values_at :]
                sql = _MULTI[key] = self.sql[: self.values_at] + ", ".join([values] * len(group))
            statements.append((sql, list(chain.from_iterable(group))))
        return statements

    def params(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Rows of named values as the driver's ``executemany`` takes them."""
        if self.names is None:
            return list(rows)
        names = self.names
        return [tuple([row[name] for name in names]) for row in rows]

    def from_tuples(self, names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[Any]:
        """Rows of values given in ``names`` order, as the driver's ``executemany`` takes them.

        For the rows a store writes by the thousand (results, a run's
        nodes): built as tuples, not as a dict per row, and passed on as
        they are when the order is the statement's.
        """
        if self.names is None:  # a named paramstyle
            return [dict(zip(names, row, strict=True)) for row in rows]
        if self.names == names:
            return rows
        order = [names.index(name) for name in self.names]
        return [tuple([row[i] for i in order]) for row in rows]

    def one(self, row: Mapping[str, Any]) -> Any:
        """One row of named values as the driver's ``execute`` takes it."""
        if self.names is None:
            return row
        return tuple([row[name] for name in self.names])


def statements_for(raw: Raw, rows: list[Any]) -> list[DriverStatement]:
    """``(sql, parameters, many)`` for the driver: a few multi-row INSERTs if ``raw`` is one, else an executemany."""
    inserts = raw.inserts(rows)
    if inserts is None:
        return [(raw.sql, rows, True)]
    return [(sql, values, False) for sql, values in inserts]


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
