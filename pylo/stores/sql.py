"""A store in a SQL database, through SQLAlchemy Core.

SQLite is the default (one file, :meth:`SQLStore.sqlite`); any SQLAlchemy URL
works, PostgreSQL included. The schema keeps inputs per *batch*, not per
input, so a million inputs are about a thousand rows::

    pylo_meta(key PK, value)                    format name and version
    pylo_executions(id PK, ..., options JSON)   one row per execution, counts
    pylo_batches(execution_id, batch_no PK,     inputs and their state bytes
                 first_position, size, states, payload NULL)
    pylo_failures(execution_id, position PK, ...)  one row per failed input
    pylo_results(execution_id, position PK, value) one row per kept result

Every write is one transaction. On SQLite those transactions start with
``BEGIN IMMEDIATE`` so that writers queue on the busy timeout instead of
failing with "database is locked" when they upgrade a read lock; reads use a
plain ``BEGIN``, which in WAL mode never blocks and never blocks a writer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from pylo.errors import DamagedExecutions, ExecutionExists, ExecutionNotFound, StoreError
from pylo.stores._common import (
    batches_problem,
    check_batches,
    check_flush,
    counts_problem,
    dump_options,
    load_options,
    record_fields,
)
from pylo.stores.base import (
    FORMAT_VERSION,
    BatchRecord,
    ExecutionRecord,
    ExecutionStatus,
    FailureRow,
    Flush,
    Store,
)

if TYPE_CHECKING:
    from pylo.stores.runs import RunStore

__all__ = ["FORMAT_NAME", "SQLStore"]

logger = logging.getLogger(__name__)

#: Value of the ``format`` key in ``pylo_meta``.
FORMAT_NAME = "pylo-sql"

#: How long a SQLite writer waits for another one before giving up. Flushes
#: are short, so only a badly stuck process makes anyone wait this long.
_BUSY_TIMEOUT_MS = 60_000

#: Batches per query when payloads are read: bounds memory (payloads can be
#: large) while keeping the number of round trips low.
_PAYLOAD_GROUP = 32

#: Results per query in read_results.
_RESULT_PAGE = 1000

#: Key of the PostgreSQL advisory lock that serializes schema creation
#: ("pylo" in ASCII); any constant works as long as every pylo uses the same.
_SCHEMA_LOCK_KEY = 0x70796C6F

#: Execution option read by the SQLite ``begin`` hook to emit BEGIN IMMEDIATE.
_WRITE_OPTION = "pylo_write"

_SQLITE_HEADER = b"SQLite format 3\x00"

# ---------------------------------------------------------------------------
# Schema. Types are chosen to be portable: String(255) ids (a TEXT primary
# key is refused by some databases), Double timestamps (Float may be single
# precision), LargeBinary for opaque bytes (BLOB on SQLite, bytea on
# PostgreSQL).

_metadata = sa.MetaData()
_ID = sa.String(255)

_meta = sa.Table(
    "pylo_meta",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

_executions = sa.Table(
    "pylo_executions",
    _metadata,
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


_batches = sa.Table(
    "pylo_batches",
    _metadata,
    _execution_fk(),
    sa.Column("batch_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("first_position", sa.BigInteger, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("states", sa.LargeBinary, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=True),
)

_failures = sa.Table(
    "pylo_failures",
    _metadata,
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

_results = sa.Table(
    "pylo_results",
    _metadata,
    _execution_fk(),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
)

# Statements built once: SQLAlchemy caches their compiled form per engine.
_update_states = (
    _batches.update()
    .where(
        _batches.c.execution_id == sa.bindparam("b_execution_id"),
        _batches.c.batch_no == sa.bindparam("b_batch_no"),
    )
    .values(states=sa.bindparam("b_states"))
)


def _location_of(url: URL) -> str:
    """Name a database for messages: its path for SQLite, else the URL without password."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def _describe(exc: BaseException) -> str:
    """The useful part of a driver error (SQLAlchemy's text repeats the SQL and its parameters)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}"
    return f"{type(exc).__name__}: {exc}"


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
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
        # reports "memory" and cannot use WAL).
        if str(mode).lower() not in ("wal", "memory"):
            cursor.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL keeps committed transactions across an
        # application crash; only a power loss may lose the last ones.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    """Start SQLite transactions: IMMEDIATE for writes, deferred for reads."""
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _chunks(values: Iterable[int], size: int) -> Iterator[list[int]]:
    iterator = iter(values)
    while chunk := list(islice(iterator, size)):
        yield chunk


class SQLStore(Store):
    """Executions in a SQL database (SQLite, PostgreSQL, any SQLAlchemy URL).

    Safe to share between threads; any number of processes may open the same
    database, each writing its own executions.

    Args:
        url: A SQLAlchemy URL, such as ``sqlite:///runs.sqlite`` or
            ``postgresql+psycopg://user:secret@host/db``.
        exclusive: The database belongs to pylo alone: refuse one that holds
            tables of anything else (true for :meth:`sqlite` files).
        engine_kwargs: Extra keyword arguments for
            :func:`sqlalchemy.create_engine`.

    Raises:
        StoreError: The URL is invalid, its driver is missing, the database
            cannot be reached, or it is not a pylo store of a known version.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        exclusive: bool = False,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            parsed = make_url(url)
        except (SQLAlchemyError, ValueError) as exc:
            # Never echo the raw text: it may hold a password.
            raise StoreError(f"not a valid SQLAlchemy database URL: {_describe(exc)}") from exc
        self.url = parsed
        self.location = _location_of(parsed)
        self.exclusive = exclusive
        self._is_sqlite = parsed.get_backend_name() == "sqlite"
        self._is_postgres = parsed.get_backend_name() == "postgresql"
        if self._is_sqlite:
            self._check_sqlite_file()
        try:
            self._engine: Engine = sa.create_engine(parsed, **dict(engine_kwargs or {}))
        except (SQLAlchemyError, ImportError, TypeError, ValueError) as exc:
            raise StoreError(f"cannot open the store at {self.location}: {_describe(exc)}") from exc
        if self._is_sqlite:
            sa.event.listen(self._engine, "connect", _on_sqlite_connect)
            sa.event.listen(self._engine, "begin", _on_sqlite_begin)
        try:
            self._ensure_schema()
        except BaseException:
            self._engine.dispose()
            raise

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str]) -> SQLStore:
        """Open (creating if needed) a store in a SQLite database file.

        A new parent directory is created with mode 0o700 and a new file with
        mode 0o600: snapshots hold the task's inputs and exceptions, which are
        nobody else's business. The file must hold nothing but pylo's tables.

        Args:
            path: The database file.

        Raises:
            StoreError: The file cannot be created, is not a SQLite database,
                or is not a pylo store of a known version.
        """
        file = Path(path)
        try:
            file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if file.is_dir():
                raise StoreError(f"cannot open the store at {file}: it is a directory, not a SQLite file")
            # Create it ourselves: SQLite would create it with mode 0o644.
            os.close(os.open(file, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot create the store at {file}: {exc}") from exc
        return cls(URL.create("sqlite+pysqlite", database=str(file)), exclusive=True)

    # -- plumbing --------------------------------------------------------------

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def _check_sqlite_file(self) -> None:
        """Refuse a file that is not SQLite before the driver says something cryptic."""
        database = self.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return
        try:
            with open(database, "rb") as file:
                header = file.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        except IsADirectoryError as exc:
            raise StoreError(f"cannot open the store at {self.location}: it is a directory") from exc
        except OSError as exc:
            raise StoreError(f"cannot read the store at {self.location}: {exc}") from exc
        # An empty file is a valid empty database (sqlite() creates one).
        if header and header != _SQLITE_HEADER:
            raise StoreError(
                f"the store at {self.location} is not a SQLite database "
                "(the file does not start with the SQLite header); point pylo at another path"
            )

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn driver and SQLAlchemy errors into a StoreError naming the store."""
        try:
            yield
        except (SQLAlchemyError, UnicodeError) as exc:
            # UnicodeError: drivers encode text themselves, unwrapped by SQLAlchemy.
            raise StoreError(f"cannot {action} in the store at {self.location}: {_describe(exc)}") from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot for all its statements."""
        with self._engine.connect() as conn:
            if self._is_postgres:
                # READ COMMITTED takes a snapshot per statement; a multi-
                # statement read must see one state of the database.
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction, which on SQLite holds the write lock from its start."""
        with self._engine.connect() as conn:
            if self._is_sqlite:
                conn = conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    def _ensure_schema(self) -> None:
        """Validate the database and create pylo's tables if they are missing.

        A read-only look comes first so that opening an existing store takes
        no write lock; creation runs under the write lock (SQLite) or an
        advisory lock (PostgreSQL) and checks again, so processes opening a
        new store at the same moment create it exactly once.
        """
        with self._guard("open the database"):
            with self._read() as conn:
                if self._check_schema(conn):
                    return
            with self._write() as conn:
                if self._is_postgres:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                if self._check_schema(conn):
                    return
                _metadata.create_all(conn, checkfirst=True)
                present = set(conn.execute(sa.select(_meta.c.key)).scalars())
                rows = [
                    {"key": key, "value": value}
                    for key, value in (("format", FORMAT_NAME), ("version", str(FORMAT_VERSION)))
                    if key not in present
                ]
                if rows:
                    conn.execute(_meta.insert(), rows)
                logger.debug("created the pylo schema in %s", self.location)

    def _check_schema(self, conn: Connection) -> bool:
        """Return True when the pylo schema is complete; raise if the database is foreign."""
        names = set(sa.inspect(conn).get_table_names())
        if _meta.name not in names:
            ours = sorted(name for name in names if name.startswith("pylo_"))
            if ours:
                raise StoreError(
                    f"the store at {self.location} has pylo tables ({', '.join(ours)}) but no "
                    "pylo_meta table: it is damaged or was not written by pylo"
                )
            if self.exclusive and names:
                listed = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
                raise StoreError(
                    f"the store at {self.location} is a database of something else (it holds the "
                    f"tables {listed}); give pylo a path of its own"
                )
            return False
        meta = {row.key: row.value for row in conn.execute(sa.select(_meta.c.key, _meta.c.value))}
        if meta.get("format") != FORMAT_NAME:
            raise StoreError(
                f"the store at {self.location} is not a pylo SQL store: its pylo_meta table says "
                f"format {meta.get('format')!r}, expected {FORMAT_NAME!r}"
            )
        if meta.get("version") != str(FORMAT_VERSION):
            raise StoreError(
                f"the store at {self.location} has format version {meta.get('version')!r}, which "
                f"this pylo cannot read (it reads version {FORMAT_VERSION}); use the pylo that wrote it"
            )
        # pylo_meta is created in the same transaction as every other table:
        # one missing now was dropped, and creating it empty would lose data.
        missing = sorted(set(_metadata.tables) - names)
        if missing:
            raise StoreError(
                f"the store at {self.location} is damaged: it is missing the tables {', '.join(missing)}; "
                "restore it from a backup or give pylo another path"
            )
        return True

    def _storable_text(self, text: str | None) -> str | None:
        """Make exception text storable in a TEXT column, escaping what cannot be.

        Exception messages may hold lone surrogates (from undecodable file
        names, say), which UTF-8 drivers refuse, and PostgreSQL text cannot
        hold NUL. Both are rare; escaping them keeps the failure readable
        rather than losing the whole flush.
        """
        if text is None or (text.isascii() and not (self._is_postgres and "\x00" in text)):
            return text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        if self._is_postgres:
            text = text.replace("\x00", "\\x00")
        return text

    def _not_found(self, execution_id: str) -> ExecutionNotFound:
        return ExecutionNotFound(execution_id, self.location)

    def _input_source(self, conn: Connection, execution_id: str) -> str:
        source = conn.execute(
            sa.select(_executions.c.input_source).where(_executions.c.id == execution_id)
        ).scalar_one_or_none()
        if source is None:
            raise self._not_found(execution_id)
        return str(source)

    def _record_from_row(self, row: sa.Row[Any]) -> ExecutionRecord:
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
            )
            problem = counts_problem(record.total, record.finished, record.failed)
            if problem is not None:
                raise ValueError(problem)
            return record
        except (TypeError, ValueError) as exc:
            raise StoreError(f"execution {row.id!r} in the store at {self.location} is damaged: {exc}") from exc

    # -- writes ----------------------------------------------------------------

    def create_execution(self, record: ExecutionRecord) -> None:
        """See :meth:`Store.create_execution`.

        Raises:
            ExecutionExists: An execution with ``record.id`` exists.
            StoreError: The database cannot be written.
            TypeError: ``record.options`` is not JSON-serializable.
        """
        row = {
            **record_fields(record),
            "options": dump_options(record.id, record.options),
        }
        with self._guard(f"create execution {record.id!r}"):
            try:
                with self._write() as conn:
                    conn.execute(_executions.insert(), row)
            except IntegrityError as exc:
                # The primary key decides, inside the database, which of two
                # racing creators wins; any other integrity error is re-raised.
                with self._read() as conn:
                    exists = conn.execute(sa.select(_executions.c.id).where(_executions.c.id == record.id)).first()
                if exists is not None:
                    raise ExecutionExists(record.id, self.location) from exc
                raise

    def add_batches(self, execution_id: str, batches: Sequence[BatchRecord]) -> None:
        """See :meth:`Store.add_batches`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: A batch number is already taken, or the database
                cannot be written.
            ValueError: A batch's ``states`` do not have ``size`` bytes.
        """
        check_batches(execution_id, batches)
        rows = [
            {
                "execution_id": execution_id,
                "batch_no": batch.batch_no,
                "first_position": batch.first_position,
                "size": batch.size,
                "states": bytes(batch.states),
                "payload": None if batch.payload is None else bytes(batch.payload),
            }
            for batch in batches
        ]
        added = sum(batch.size for batch in batches)
        with self._guard(f"add batches to execution {execution_id!r}"), self._write() as conn:
            updated = conn.execute(
                _executions.update()
                .where(_executions.c.id == execution_id)
                .values(total=_executions.c.total + added, updated_at=time.time())
            )
            if updated.rowcount == 0:
                raise self._not_found(execution_id)
            if rows:
                conn.execute(_batches.insert(), rows)

    def record_flush(self, execution_id: str, flush: Flush) -> None:
        """See :meth:`Store.record_flush`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: A failure or result position is already recorded, or
                the database cannot be written.
            ValueError: The flush sets the derived ``CRASHED`` status.
        """
        check_flush(execution_id, flush)
        values: dict[str, Any] = {
            "total": flush.total,
            "finished": flush.finished,
            "failed": flush.failed,
            "updated_at": time.time(),
        }
        if flush.status is not None:
            values["status"] = ExecutionStatus(flush.status).value
        if flush.ended_at is not None:
            values["ended_at"] = float(flush.ended_at)
        if flush.inputs_complete:
            values["inputs_complete"] = True
        states = [
            {"b_execution_id": execution_id, "b_batch_no": batch_no, "b_states": bytes(data)}
            for batch_no, data in flush.states.items()
        ]
        failures = [
            {
                "execution_id": execution_id,
                "position": row.position,
                "exc_type": self._storable_text(row.exc_type),
                "message": self._storable_text(row.message),
                "traceback": self._storable_text(row.traceback),
                "exception": None if row.exception is None else bytes(row.exception),
                "attempts": row.attempts,
                "worker": row.worker,
                "failed_at": float(row.failed_at),
            }
            for row in flush.failures
        ]
        results = [
            {"execution_id": execution_id, "position": position, "value": bytes(value)}
            for position, value in flush.results
        ]
        with self._guard(f"record a flush of execution {execution_id!r}"), self._write() as conn:
            # The execution row first: it doubles as the existence check, and
            # an exception inside the transaction rolls everything back.
            updated = conn.execute(_executions.update().where(_executions.c.id == execution_id).values(**values))
            if updated.rowcount == 0:
                raise self._not_found(execution_id)
            if states:
                conn.execute(_update_states, states)
            if failures:
                conn.execute(_failures.insert(), failures)
            if results:
                conn.execute(_results.insert(), results)

    # -- reads -----------------------------------------------------------------

    def get_execution(self, execution_id: str) -> ExecutionRecord:
        """See :meth:`Store.get_execution`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The database cannot be read or the row is damaged.
        """
        with self._guard(f"read execution {execution_id!r}"), self._read() as conn:
            row = conn.execute(sa.select(_executions).where(_executions.c.id == execution_id)).first()
        if row is None:
            raise self._not_found(execution_id)
        return self._record_from_row(row)

    def list_executions(self) -> list[ExecutionRecord]:
        """See :meth:`Store.list_executions`.

        Raises:
            DamagedExecutions: Some rows are damaged; the error names them
                and carries the intact executions.
            StoreError: The database cannot be read.
        """
        with self._guard("list executions"), self._read() as conn:
            rows = conn.execute(sa.select(_executions).order_by(_executions.c.created_at, _executions.c.id)).all()
        records = []
        damaged: dict[str, StoreError] = {}
        for row in rows:
            try:
                records.append(self._record_from_row(row))
            except StoreError as exc:  # one damaged row must not hide the others
                damaged[str(row.id)] = exc
        if damaged:
            raise DamagedExecutions(self.location, records, damaged)
        return records

    def read_batches(self, execution_id: str, *, payloads: bool = False) -> Iterator[BatchRecord]:
        """See :meth:`Store.read_batches`.

        The states of all batches come from one query, hence from one
        snapshot; payloads, which never change, follow in groups so that
        memory stays bounded.

        Raises:
            ExecutionNotFound: No such execution (raised before returning).
            StoreError: The database cannot be read, or a payload is missing
                from the input source.
        """
        with self._guard(f"read the batches of execution {execution_id!r}"), self._read() as conn:
            source = self._input_source(conn, execution_id)
            rows = conn.execute(
                sa.select(_batches.c.batch_no, _batches.c.first_position, _batches.c.size, _batches.c.states)
                .where(_batches.c.execution_id == execution_id)
                .order_by(_batches.c.batch_no)
            ).all()
        records = [
            BatchRecord(int(row.batch_no), int(row.first_position), int(row.size), bytes(row.states)) for row in rows
        ]
        problem = batches_problem(records)
        if problem is not None:
            raise StoreError(f"execution {execution_id!r} in the store at {self.location} is damaged: it has {problem}")
        if not payloads:
            return iter(records)
        return self._attach_payloads(execution_id, source, records)

    def _attach_payloads(self, execution_id: str, source: str, records: list[BatchRecord]) -> Iterator[BatchRecord]:
        for start in range(0, len(records), _PAYLOAD_GROUP):
            group = records[start : start + _PAYLOAD_GROUP]
            with self._guard(f"read the inputs of execution {execution_id!r}"), self._read() as conn:
                found = dict(
                    conn.execute(
                        sa.select(_batches.c.batch_no, _batches.c.payload).where(
                            _batches.c.execution_id == source,
                            _batches.c.batch_no.in_([record.batch_no for record in group]),
                        )
                    ).all()
                )
            for record in group:
                payload = found.get(record.batch_no)
                if payload is None:
                    raise StoreError(
                        f"batch {record.batch_no} of execution {execution_id!r} has no inputs in "
                        f"execution {source!r}, which should hold them, in the store at {self.location}"
                    )
                yield BatchRecord(record.batch_no, record.first_position, record.size, record.states, bytes(payload))

    def read_payloads(self, execution_id: str, batch_nos: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """See :meth:`Store.read_payloads`.

        Raises:
            ExecutionNotFound: No such execution (raised before returning).
            StoreError: The database cannot be read.
        """
        with self._guard(f"read the inputs of execution {execution_id!r}"), self._read() as conn:
            source = self._input_source(conn, execution_id)
        return self._payloads(execution_id, source, batch_nos)

    def _payloads(self, execution_id: str, source: str, batch_nos: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        own = _batches.alias("own")
        src = _batches.alias("src")
        # Joining on the execution's own batches skips numbers it does not
        # have, even when its input source has them.
        joined = own.join(src, sa.and_(src.c.execution_id == source, src.c.batch_no == own.c.batch_no))
        for group in _chunks(batch_nos, _PAYLOAD_GROUP):
            with self._guard(f"read the inputs of execution {execution_id!r}"), self._read() as conn:
                found = dict(
                    conn.execute(
                        sa.select(src.c.batch_no, src.c.payload)
                        .select_from(joined)
                        .where(own.c.execution_id == execution_id, own.c.batch_no.in_(group))
                    ).all()
                )
            for batch_no in group:
                payload = found.get(batch_no)
                if payload is not None:
                    yield batch_no, bytes(payload)

    def read_failures(self, execution_id: str) -> list[FailureRow]:
        """See :meth:`Store.read_failures`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The database cannot be read.
        """
        with self._guard(f"read the failures of execution {execution_id!r}"), self._read() as conn:
            self._input_source(conn, execution_id)
            rows = conn.execute(
                sa.select(_failures).where(_failures.c.execution_id == execution_id).order_by(_failures.c.position)
            ).all()
        return [
            FailureRow(
                position=int(row.position),
                exc_type=row.exc_type,
                message=row.message,
                traceback=row.traceback,
                exception=None if row.exception is None else bytes(row.exception),
                attempts=int(row.attempts),
                worker=int(row.worker),
                failed_at=float(row.failed_at),
            )
            for row in rows
        ]

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
                    sa.select(_results.c.position, _results.c.value)
                    .where(_results.c.execution_id == execution_id, _results.c.position > after)
                    .order_by(_results.c.position)
                    .limit(_RESULT_PAGE)
                ).all()
            for position, value in page:
                yield int(position), bytes(value)
            if len(page) < _RESULT_PAGE:
                return
            after = int(page[-1].position)

    def runs(self) -> RunStore:
        """See :meth:`Store.runs`: runs live in this database, tables made by the first run."""
        from pylo.stores.sql_runs import SqlRunStore

        # One per store: it remembers that the run tables exist.
        runs: RunStore | None = getattr(self, "_runs", None)
        if runs is None:
            runs = self._runs = SqlRunStore(self)
        return runs

    def close(self) -> None:
        """Close the database connections."""
        self._engine.dispose()
