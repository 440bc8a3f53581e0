"""Small PostgreSQL writes in one message: one round trip, one wait, statements planned once.

A flush of a fast execution is a few rows: its counts, the state bytes of a
batch or two, a chunk row. Through psycopg's pipeline the client waits for
the server three or four times per flush (each statement's send, the sync,
the commit), and each wait lets the task threads take the interpreter,
which the coordinator must then get back; on a busy run that cost more than
the server's work. :func:`write` sends the whole write as one simple-query
message instead, which the server runs as one implicit transaction and
commits as the message ends (``synchronous_commit`` applies as to any
commit). Each statement is prepared once per connection (``PREPARE``, the
name derived from its SQL) and run with ``EXECUTE``, its values bound on
this side by psycopg (``ClientCursor.mogrify``): the server neither parses
the statement's text nor plans it again.

The caller promises that its statements write nothing when its check of
the row counts would fail (see ``SQLStore._driver_write``), because the
check runs after the commit. :func:`write` returns False, having written
nothing, when the message fails; the caller then runs the statements the
usual way, so an error is reported as before.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pylo.stores._sqlraw import DriverStatement
    from pylo.stores.base import Flush

__all__ = ["MOST_ROWS", "fits", "write"]

logger = logging.getLogger(__name__)

#: Most rows one message carries, the execution's counts included: each is
#: a statement of its own, parsed with its values, where a prepared
#: ``executemany`` in a pipeline only binds them. Measured on the reference
#: machine: a flush of 2 rows took 0.66-0.76 ms in one message against
#: 0.79-1.14 ms pipelined, one of 6 about the same either way, one of 12
#: (10 of them failures, with their tracebacks) 2.1 ms against 1.6 ms.
MOST_ROWS = 5


def fits(flush: Flush) -> bool:
    """Whether a flush is small enough for one message: a few rows, none a failure's text or a result."""
    if flush.failures or flush.results:
        return False
    return 1 + len(flush.states) + len(flush.chunks) <= MOST_ROWS


#: Names of the statements prepared on a connection, in its pool entry's ``info``.
_PREPARED = "pylo_prepared"

_NAMED = re.compile(r"%\((\w+)\)s")


class _Prepared:
    """A statement's ``PREPARE`` text, and its ``EXECUTE`` template with its values' names in order."""

    __slots__ = ("execute", "name", "names", "prepare")

    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.name = "pylo_" + hashlib.sha1(sql.encode(), usedforsecurity=False).hexdigest()[:16]
        self.prepare = f"PREPARE {self.name} AS {_NAMED.sub(number, sql)}"
        self.names = tuple(names)
        self.execute = f"EXECUTE {self.name}({', '.join(['%s'] * len(names))})" if names else f"EXECUTE {self.name}"


#: By the statement's SQL (statements are compiled once a process, so this stays small).
_STATEMENTS: dict[str, _Prepared] = {}


def _prepared(sql: str) -> _Prepared:
    found = _STATEMENTS.get(sql)
    if found is None:
        found = _STATEMENTS[sql] = _Prepared(sql)
    return found


def write(raw: Any, statements: Sequence[DriverStatement], counts: list[int], error: type[Exception]) -> bool:
    """Run ``statements`` (named parameters) in one message as one transaction; False if that failed.

    ``raw`` is the pool's connection to a psycopg 3 driver connection, out of
    any transaction. Each statement's row count (summed over its rows) is
    appended to ``counts``. When it fails nothing was written, and the
    driver connection is out of autocommit again or broken (the caller's
    next use then fails, and the pool discards it on its return).
    """
    import psycopg

    driver = raw.driver_connection
    prepared_here: set[str] = raw.info.setdefault(_PREPARED, set())
    cursor = psycopg.ClientCursor(driver)
    try:
        parts: list[str] = []
        sizes: list[int] = []
        to_prepare: list[_Prepared] = []
        for sql, parameters, many in statements:
            statement = _prepared(sql)
            if statement.name not in prepared_here and statement not in to_prepare:
                to_prepare.append(statement)
            rows = parameters if many else (parameters,)
            names = statement.names
            parts.extend(cursor.mogrify(statement.execute, [row[name] for name in names]) for row in rows)
            sizes.append(len(rows))
        driver.autocommit = True  # the server's implicit transaction, committed as the message ends
        try:
            for statement in to_prepare:  # once a connection: a prepared statement stays with its session
                try:
                    cursor.execute(statement.prepare)
                except error as exc:
                    if getattr(exc, "sqlstate", None) != "42P05":  # not "it exists already"
                        raise
                prepared_here.add(statement.name)
            cursor.execute(";\n".join(parts))
            for size in sizes:  # one result per row's statement
                count = 0
                for _ in range(size):
                    count += cursor.rowcount
                    cursor.nextset()
                counts.append(count)
        finally:
            driver.autocommit = False
    except error as exc:
        if getattr(exc, "sqlstate", None) == "26000":
            # The session lost what it prepared (a pooler between this
            # process and the server, say): prepare again next time.
            prepared_here.clear()
        logger.debug("a one-message write failed, writing nothing; it runs again in turn", exc_info=True)
        counts.clear()
        return False
    finally:
        cursor.close()
    return True
