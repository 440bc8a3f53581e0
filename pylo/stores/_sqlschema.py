"""The SQL store's schema: tables, connection settings, and reading a row back as a record.

The schema keeps inputs per *batch*, not per input, so a million inputs are
about a thousand rows::

    pylo_meta(key PK, value)                    format name and version
    pylo_executions(id PK, ..., options JSON)   one row per execution, counts
    pylo_batches(execution_id, batch_no PK,     inputs and their state bytes
                 first_position, size, states, payload NULL)
    pylo_failures(execution_id, position PK, ...)  one row per failed input
    pylo_results(execution_id, position PK, value) one row per kept result
    pylo_claims(execution_id PK, claimant, ...)    the resume running now
    pylo_labels(execution_id, key PK, value)       labels, indexed by (key, value)
    pylo_chunks(execution_id, first_position PK,  which worker ran each run
                last_position, worker)             of positions (one per chunk)
    pylo_stops(execution_id PK, code, detail)      why an execution ended early

The last four came after format version 1; a store without them is a
version 1 store all the same. They are created by the first write that needs
them, and reading takes their absence as "nothing recorded".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from pylo.errors import StoreError
from pylo.stores._common import counts_problem, load_options
from pylo.stores.base import FORMAT_VERSION, ExecutionRecord, ExecutionStatus

#: Value of the ``format`` key in ``pylo_meta``.
FORMAT_NAME = "pylo-sql"

#: How long a SQLite writer waits for another one before giving up. Flushes
#: are short, so only a badly stuck process makes anyone wait this long.
_BUSY_TIMEOUT_MS = 60_000

#: Key of the PostgreSQL advisory lock that serializes schema creation
#: ("pylo" in ASCII); any constant works as long as every pylo uses the same.
SCHEMA_LOCK_KEY = 0x70796C6F

#: Execution option read by the SQLite ``begin`` hook to emit BEGIN IMMEDIATE.
WRITE_OPTION = "pylo_write"

SQLITE_HEADER = b"SQLite format 3\x00"

# ---------------------------------------------------------------------------
# Schema. Types are chosen to be portable: String(255) ids (a TEXT primary
# key is refused by some databases), Double timestamps (Float may be single
# precision), LargeBinary for opaque bytes (BLOB on SQLite, bytea on
# PostgreSQL).

METADATA = sa.MetaData()
_ID = sa.String(255)

META = sa.Table(
    "pylo_meta",
    METADATA,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

EXECUTIONS = sa.Table(
    "pylo_executions",
    METADATA,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("parent_id", _ID, nullable=True),
    sa.Column("input_source", _ID, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("ended_at", sa.Double, nullable=True),
    sa.Column("task_name", sa.Text, nullable=False),
    sa.Column("codec", sa.String(64), nullable=False),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("finished", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    sa.Column("inputs_complete", sa.Boolean, nullable=False),
    sa.Column("pid", sa.BigInteger, nullable=True),
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("options", sa.Text, nullable=False),
    # list_executions sorts by (created_at, id).
    sa.Index("ix_pylo_executions_created", "created_at", "id"),
)


def _execution_fk() -> sa.Column[str]:
    return sa.Column("execution_id", _ID, sa.ForeignKey("pylo_executions.id"), primary_key=True)


BATCHES = sa.Table(
    "pylo_batches",
    METADATA,
    _execution_fk(),
    sa.Column("batch_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("first_position", sa.BigInteger, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("states", sa.LargeBinary, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=True),
)

FAILURES = sa.Table(
    "pylo_failures",
    METADATA,
    _execution_fk(),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("exc_type", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("traceback", sa.Text, nullable=True),
    sa.Column("exception", sa.LargeBinary, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("worker", sa.Integer, nullable=False),
    sa.Column("failed_at", sa.Double, nullable=False),
)

RESULTS = sa.Table(
    "pylo_results",
    METADATA,
    _execution_fk(),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
)

# Tables a later pylo added. A store written before them has none: they are
# created by the first write that needs them, and reads take their absence
# as "nothing recorded", so an old store opens (and is read) unchanged.
CLAIMS = sa.Table(
    "pylo_claims",
    METADATA,
    sa.Column("execution_id", _ID, primary_key=True),
    sa.Column("claimant", _ID, nullable=False),
    sa.Column("pid", sa.BigInteger, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("claimed_at", sa.Double, nullable=False),
)

LABELS = sa.Table(
    "pylo_labels",
    METADATA,
    sa.Column("execution_id", _ID, primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    # list_executions(labels=...) looks executions up by label.
    sa.Index("ix_pylo_labels_key_value", "key", "value"),
)

CHUNKS = sa.Table(
    "pylo_chunks",
    METADATA,
    sa.Column("execution_id", _ID, primary_key=True),
    sa.Column("first_position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("last_position", sa.BigInteger, nullable=False),
    sa.Column("worker", sa.Integer, nullable=False),
)

STOPS = sa.Table(
    "pylo_stops",
    METADATA,
    sa.Column("execution_id", _ID, primary_key=True),
    sa.Column("code", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
)

#: Tables every pylo store has had since format version 1.
REQUIRED_TABLES = frozenset({"pylo_meta", "pylo_executions", "pylo_batches", "pylo_failures", "pylo_results"})

# Statements built once: SQLAlchemy caches their compiled form per engine.
UPDATE_STATES = (
    BATCHES.update()
    .where(
        BATCHES.c.execution_id == sa.bindparam("b_execution_id"),
        BATCHES.c.batch_no == sa.bindparam("b_batch_no"),
    )
    .values(states=sa.bindparam("b_states"))
)


def location_of(url: URL) -> str:
    """Name a database for messages: its path for SQLite, else the URL without password."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def describe(exc: BaseException) -> str:
    """The useful part of a driver error (SQLAlchemy's text repeats the SQL and its parameters)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}"
    if isinstance(exc, ImportError):
        # Not `pip install "pylo[postgres]"`: that name on the package index is an unrelated project.
        return (
            f'{type(exc).__name__}: {exc} (for PostgreSQL, pip install ".[postgres]" from a checkout of pylo,'
            ' or pip install "psycopg[binary]")'
        )
    return f"{type(exc).__name__}: {exc}"


def on_sqlite_connect(dbapi_connection: Any, connection_record: Any, *, may_write: bool = True) -> None:
    """Configure every new SQLite connection.

    Turning off the sqlite3 module's own transaction handling is the
    documented SQLAlchemy recipe for emitting BEGIN ourselves (see
    :func:`_on_sqlite_begin`); it also makes DDL transactional.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
        # The journal mode is persistent in the file: only the first
        # connection to a new database has to switch it (an in-memory database
        # reports "memory" and cannot use WAL). A reader never writes, and
        # reads in any journal mode.
        if may_write and str(mode).lower() not in ("wal", "memory"):
            cursor.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL keeps committed transactions across an
        # application crash; only a power loss may lose the last ones.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def on_postgres_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Configure every new PostgreSQL connection: values too large to keep inline compressed with LZ4.

    A batch of inputs, a result or a node's value above about 2 kB is
    compressed by the server as it is written. PostgreSQL's default method,
    pglz, took about 0.6 ms a row for a kilobyte-sized batch of pickled
    numbers, which made recording a million inputs take a second; LZ4
    compresses as well for this data in a tenth of the time. Set for this
    session only, for the values pylo writes; a server without LZ4
    (before PostgreSQL 14, or built without it) keeps its default.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET default_toast_compression = 'lz4'")
        dbapi_connection.commit()
    except Exception:  # the server has no LZ4: its own default stays
        dbapi_connection.rollback()
    finally:
        cursor.close()


def driver_has_pipelines(engine: sa.Engine) -> bool:
    """Whether the engine's PostgreSQL driver can pipeline statements (psycopg 3 on libpq 14 or later)."""
    dbapi = engine.dialect.loaded_dbapi
    pipeline = getattr(dbapi, "Pipeline", None)
    return pipeline is not None and bool(pipeline.is_supported())


def on_sqlite_begin(conn: Connection) -> None:
    """Start SQLite transactions: IMMEDIATE for writes, deferred for reads.

    Sent to the driver's connection directly: through SQLAlchemy's execute,
    this one statement cost a third of a small flush. Its errors (a lock
    held too long, say) are wrapped as SQLAlchemy's own, as an execute would.
    """
    statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN"
    driver = conn.connection.driver_connection
    assert driver is not None, "a connection being begun is open"
    try:
        driver.execute(statement)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


def on_sqlite_error(context: sa.engine.ExceptionContext) -> None:
    """An interrupt raised while SQLAlchemy runs a statement ends the transaction: the connection is kept.

    Ctrl-C's ``KeyboardInterrupt`` and SIGTERM's ``SystemExit`` are raised
    by Python between two steps of the program, never inside the driver's
    call, so the SQLite connection is as sound as before. SQLAlchemy treats
    them as a lost connection all the same and closes it without ending its
    transaction. A statement the interrupt left unfinished (a query whose
    rows were not read yet) then keeps the closed connection alive inside
    SQLite, its transaction open and the write lock held, and the end of the
    run, written next through another connection, waited out the whole busy
    timeout. Told it is no disconnect, SQLAlchemy closes the statement, and
    the transaction is rolled back as for any other error.
    """
    if not isinstance(context.original_exception, Exception):
        context.is_disconnect = False


def chunks(values: Iterable[int], size: int) -> Iterator[list[int]]:
    iterator = iter(values)
    while chunk := list(islice(iterator, size)):
        yield chunk


def check_schema(conn: Connection, location: str, *, exclusive: bool) -> set[str] | None:
    """The tables of a complete pylo schema, or None when there is none; raise if it is foreign or damaged."""
    names = set(sa.inspect(conn).get_table_names())
    if META.name not in names:
        ours = sorted(name for name in names if name.startswith("pylo_"))
        if ours:
            raise StoreError(
                f"the store at {location} has pylo tables ({', '.join(ours)}) but no "
                "pylo_meta table: it is damaged or was not written by pylo"
            )
        if exclusive and names:
            listed = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
            raise StoreError(
                f"the store at {location} is a database of something else (it holds the "
                f"tables {listed}); give pylo a path of its own"
            )
        return None
    meta = {row.key: row.value for row in conn.execute(sa.select(META.c.key, META.c.value))}
    if meta.get("format") != FORMAT_NAME:
        raise StoreError(
            f"the store at {location} is not a pylo SQL store: its pylo_meta table says "
            f"format {meta.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    if meta.get("version") != str(FORMAT_VERSION):
        raise StoreError(
            f"the store at {location} has format version {meta.get('version')!r}, which "
            f"this pylo cannot read (it reads version {FORMAT_VERSION}); use the pylo that wrote it"
        )
    # pylo_meta is created in the same transaction as every other table:
    # one missing now was dropped, and creating it empty would lose data.
    missing = sorted(REQUIRED_TABLES - names)
    if missing:
        raise StoreError(
            f"the store at {location} is damaged: it is missing the tables {', '.join(missing)}; "
            "restore it from a backup or give pylo another path"
        )
    return names


def storable_text(text: str | None, *, postgres: bool) -> str | None:
    """Make exception text storable in a TEXT column, escaping what cannot be.

    Exception messages may hold lone surrogates (from undecodable file
    names, say), which UTF-8 drivers refuse, and PostgreSQL text cannot
    hold NUL. Both are rare; escaping them keeps the failure readable
    rather than losing the whole flush.
    """
    if text is None or (text.isascii() and not (postgres and "\x00" in text)):
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if postgres:
        text = text.replace("\x00", "\\x00")
    return text


def record_from_row(
    row: sa.Row[Any], location: str, labels: Mapping[str, str], stop: tuple[str, str | None] | None = None
) -> ExecutionRecord:
    """The record of a ``pylo_executions`` row, with its labels and stop; StoreError naming it when it is damaged."""
    try:
        record = ExecutionRecord(
            id=row.id,
            parent_id=row.parent_id,
            input_source=row.input_source,
            status=ExecutionStatus(row.status),
            created_at=float(row.created_at),
            updated_at=float(row.updated_at),
            ended_at=None if row.ended_at is None else float(row.ended_at),
            task_name=row.task_name,
            codec=row.codec,
            total=int(row.total),
            finished=int(row.finished),
            failed=int(row.failed),
            inputs_complete=bool(row.inputs_complete),
            pid=None if row.pid is None else int(row.pid),
            host=row.host,
            options=load_options(row.options),
            labels=dict(labels),
            stop_reason=None if stop is None else stop[0],
            stop_detail=None if stop is None else stop[1],
        )
        problem = counts_problem(record.total, record.finished, record.failed)
        if problem is not None:
            raise ValueError(problem)
        return record
    except (TypeError, ValueError) as exc:
        raise StoreError(f"execution {row.id!r} in the store at {location} is damaged: {exc}") from exc


def check_sqlite_file(database: str | None, location: str, *, create: bool) -> None:
    """Refuse a file that is not SQLite before the driver says something cryptic.

    SQLite would take an empty file for a new database; pylo never makes one
    (``SQLStore.sqlite`` links a whole new store into place), so an empty
    file is a store truncated to nothing.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        with open(database, "rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        if not create:
            raise StoreError(f"there is no pylo store at {location}: the file does not exist") from None
        return
    except IsADirectoryError as exc:
        raise StoreError(f"cannot open the store at {location}: it is a directory") from exc
    except OSError as exc:
        raise StoreError(f"cannot read the store at {location}: {exc}") from exc
    if not header:
        raise StoreError(
            f"the store at {location} is an empty file, not a pylo store (was it truncated?); "
            "restore it from a backup, or move it away to start a new store there"
        )
    if header != SQLITE_HEADER:
        raise StoreError(
            f"the store at {location} is not a SQLite database "
            "(the file does not start with the SQLite header); point pylo at another path"
        )


# -- the hot statements of record_flush and add_batches, built and compiled once
# per kind of database in a process (see _sqlraw)


def counts_statement() -> tuple[sa.ClauseElement, None]:
    statement = (
        EXECUTIONS.update()
        .where(EXECUTIONS.c.id == sa.bindparam("x_id"))
        .values(
            total=sa.bindparam("x_total"),
            finished=sa.bindparam("x_finished"),
            failed=sa.bindparam("x_failed"),
            updated_at=sa.bindparam("x_updated_at"),
        )
    )
    return statement, None


def grow_statement() -> tuple[sa.ClauseElement, None]:
    statement = (
        EXECUTIONS.update()
        .where(EXECUTIONS.c.id == sa.bindparam("x_id"))
        .values(total=EXECUTIONS.c.total + sa.bindparam("x_added"), updated_at=sa.bindparam("x_updated_at"))
    )
    return statement, None


def batches_statement() -> tuple[sa.ClauseElement, list[str]]:
    return BATCHES.insert(), [column.name for column in BATCHES.c]


def states_statement() -> tuple[sa.ClauseElement, None]:
    return UPDATE_STATES, None


def failures_statement() -> tuple[sa.ClauseElement, list[str]]:
    return FAILURES.insert(), [column.name for column in FAILURES.c]


def results_statement() -> tuple[sa.ClauseElement, list[str]]:
    return RESULTS.insert(), [column.name for column in RESULTS.c]


def chunks_statement() -> tuple[sa.ClauseElement, list[str]]:
    return CHUNKS.insert(), [column.name for column in CHUNKS.c]


def guarded_chunks_statement() -> tuple[sa.ClauseElement, None]:
    """A chunk row inserted only when its execution exists: ``pylo_chunks`` has no foreign key to refuse it."""
    values = sa.select(*[sa.bindparam(column.name, type_=column.type) for column in CHUNKS.c]).where(
        sa.exists().where(EXECUTIONS.c.id == sa.bindparam("execution_id"))
    )
    return CHUNKS.insert().from_select([column.name for column in CHUNKS.c], values), None


#: Batches per query when payloads are read: bounds memory (payloads can be
#: large) while keeping the number of round trips low.
PAYLOAD_GROUP = 32

#: Results per query in read_results.
RESULT_PAGE = 1000
