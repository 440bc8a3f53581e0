"""A store in a SQL database, through SQLAlchemy Core.

SQLite is the default (one file, :meth:`SQLStore.sqlite`); any SQLAlchemy URL
works, PostgreSQL included. The tables are in :mod:`pylo.stores._sqlschema`,
claims and labels in :mod:`pylo.stores._sqlmeta`, stop reasons in
:mod:`pylo.stores._sqlstops`, reading results in
:mod:`pylo.stores._sqlresults`, deleting in :mod:`pylo.stores._sqldelete`,
runs in :mod:`pylo.stores.sql_runs`.

Every write is one transaction. On SQLite those transactions start with
``BEGIN IMMEDIATE`` so that writers queue on the busy timeout instead of
failing with "database is locked" when they upgrade a read lock; reads use a
plain ``BEGIN``, which in WAL mode never blocks and never blocks a writer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from pylo.errors import DamagedExecutions, ExecutionExists, ExecutionNotFound, StoreError
from pylo.stores import _sqlmessage, _sqlraw, _sqlschema
from pylo.stores._common import (
    batches_problem,
    check_batches,
    check_flush,
    dump_options,
    record_fields,
)
from pylo.stores._sqlchunks import SQLChunksMixin
from pylo.stores._sqldelete import SQLDeleteMixin
from pylo.stores._sqlitefile import create_sqlite_file, sqlite_url
from pylo.stores._sqlmeta import SQLMetaMixin
from pylo.stores._sqlraw import DriverStatement
from pylo.stores._sqlresults import SQLResultsMixin
from pylo.stores._sqlschema import (
    BATCHES,
    CHUNKS,
    EXECUTIONS,
    FAILURES,
    FORMAT_NAME,
    LABELS,
    META,
    METADATA,
    REQUIRED_TABLES,
    SCHEMA_LOCK_KEY,
    WRITE_OPTION,
)
from pylo.stores._sqlstops import SQLStopsMixin
from pylo.stores.base import FORMAT_VERSION, BatchRecord, ExecutionRecord, ExecutionStatus, FailureRow, Flush, Store
from pylo.stores.runs import RunStore

__all__ = ["FORMAT_NAME", "SQLStore"]

logger = logging.getLogger(__name__)


class SQLStore(SQLMetaMixin, SQLStopsMixin, SQLResultsMixin, SQLDeleteMixin, SQLChunksMixin, Store):
    """Executions in a SQL database (SQLite, PostgreSQL, any SQLAlchemy URL).

    Safe to share between threads; any number of processes may open the same
    database, each writing its own executions.

    Args:
        url: A SQLAlchemy URL, such as ``sqlite:///runs.sqlite`` or
            ``postgresql+psycopg://user:secret@host/db``.
        exclusive: The database belongs to pylo alone: refuse one that holds
            tables of anything else (true for :meth:`sqlite` files).
        create: Create pylo's tables when the database has none. When
            False (readers: ``pylo list`` and the other inspecting commands)
            nothing is ever written, and a database that is not a pylo
            store yet is a StoreError.
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
        create: bool = True,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            parsed = make_url(url)
        except (SQLAlchemyError, ValueError) as exc:
            # Never echo the raw text: it may hold a password.
            raise StoreError(f"not a valid SQLAlchemy database URL: {_sqlschema.describe(exc)}") from exc
        self.url = parsed
        self.location = _sqlschema.location_of(parsed)
        self.exclusive = exclusive
        self.create = create
        # Names of the tables seen in the database (see _has_table).
        self._tables: set[str] = set()
        self._is_sqlite = parsed.get_backend_name() == "sqlite"
        self._is_postgres = parsed.get_backend_name() == "postgresql"
        if self._is_sqlite:
            _sqlschema.check_sqlite_file(parsed.database, self.location, create=create)
        try:
            self._engine: Engine = sa.create_engine(parsed, **dict(engine_kwargs or {}))
        except (SQLAlchemyError, ImportError, TypeError, ValueError) as exc:
            raise StoreError(f"cannot open the store at {self.location}: {_sqlschema.describe(exc)}") from exc
        if self._is_sqlite:
            sa.event.listen(self._engine, "connect", functools.partial(_sqlschema.on_sqlite_connect, may_write=create))
            sa.event.listen(self._engine, "begin", _sqlschema.on_sqlite_begin)
            sa.event.listen(self._engine, "handle_error", _sqlschema.on_sqlite_error)
        elif self._is_postgres:
            sa.event.listen(self._engine, "connect", _sqlschema.on_postgres_connect)
        #: Whether the driver can send several statements in one round trip (psycopg 3 with libpq 14+).
        self._pipelines = self._is_postgres and _sqlschema.driver_has_pipelines(self._engine)
        try:
            self._ensure_schema()
        except BaseException:
            self._engine.dispose()
            raise

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str], *, create: bool = True) -> SQLStore:
        """Open (creating if needed) a store in a SQLite database file.

        New directories are created with mode 0o700 and a new file with mode
        0o600: snapshots hold the task's inputs and exceptions, which are
        nobody else's business. The file must hold nothing but pylo's tables.
        A new store is built under a temporary name and linked into place
        whole, so an empty file is never a store pylo made: it is refused
        as damage (a truncated store) rather than silently reused.

        Args:
            path: The database file.
            create: Create the store when the file does not exist; when
                False a missing file is a StoreError and nothing is written.

        Raises:
            StoreError: The file cannot be created, does not exist (with
                ``create=False``), is empty, is not a SQLite database, or is
                not a pylo store of a known version.
        """
        file = Path(path)
        if file.is_dir():
            raise StoreError(f"cannot open the store at {file}: it is a directory, not a SQLite file")
        if not os.path.lexists(file):
            if not create:
                raise StoreError(f"there is no pylo store at {file}: the file does not exist")
            # Building the schema in the temporary file: open the store on it once.
            create_sqlite_file(file, lambda temporary: cls(sqlite_url(temporary), exclusive=True).close())
        return cls(sqlite_url(file), exclusive=True, create=create)

    # -- plumbing --------------------------------------------------------------

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn driver and SQLAlchemy errors into a StoreError naming the store."""
        try:
            yield
        except (SQLAlchemyError, UnicodeError) as exc:
            # UnicodeError: drivers encode text themselves, unwrapped by SQLAlchemy.
            raise StoreError(f"cannot {action} in the store at {self.location}: {_sqlschema.describe(exc)}") from exc

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
                conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    def _driver_write(
        self,
        statements: Sequence[DriverStatement],
        check: Callable[[list[int]], None] | None = None,
        *,
        one_message: bool = False,
    ) -> None:
        """Run ``statements`` in one write transaction on the driver's own connection from SQLAlchemy's pool.

        For the small hot writes (an execution's flushes, a pipeline run's
        creation and updates), where a SQLAlchemy ``Connection`` and its
        transaction cost more than the database's work. Each statement is
        ``(sql, parameters, many)``: compiled by SQLAlchemy once
        (:mod:`pylo.stores._sqlraw`), run with the driver's ``execute`` or,
        when ``many``, its ``executemany``. ``check`` gets each statement's
        row count before the commit; what it raises rolls the transaction
        back. The connection is the pool's (set up by the same ``connect``
        hooks), and the driver's errors are wrapped as SQLAlchemy's own, so
        :meth:`_guard` and ``IntegrityError`` see what they would see
        through a ``Connection``.

        On PostgreSQL the statements go in one round trip (psycopg's
        pipeline mode), the commit in a second; in turn they took five.

        ``one_message``, on PostgreSQL: the caller's promise that the
        statements write nothing when ``check`` would fail (updates that then
        match no row, inserts that a foreign key or a guard refuses), so the
        transaction may commit before ``check`` sees the counts. They then go
        as one message, their values bound by psycopg on this side, run by
        the server as one implicit transaction and committed with it: one
        round trip and one wait, where a pipeline waits three or four times
        (each wait lets the task threads take the interpreter, which the
        coordinator must get back). A failure there has written nothing, and
        the statements run again the usual way, so its error is the one they
        give. See :mod:`pylo.stores._sqlmessage`.
        """
        dbapi_error = self._engine.dialect.loaded_dbapi.Error
        raw = self._engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None, "a connection just checked out of the pool is open"
            counts: list[int] = []
            if one_message and self._pipelines and _sqlmessage.write(raw, statements, counts, dbapi_error):
                if check is not None:
                    check(counts)  # nothing was written if it fails
                return
            try:
                if self._pipelines:
                    _pipelined(driver, statements, counts)
                else:
                    _in_turn(driver, statements, "BEGIN IMMEDIATE" if self._is_sqlite else None, counts)
                if check is not None:
                    check(counts)
                driver.commit()
            except dbapi_error as exc:
                _rollback_quietly(driver)
                if check is not None and counts[:1] == [0]:
                    # Pipelined, a later statement failed (a row for a missing
                    # execution breaks its foreign key): the first one's count
                    # tells the existence check what it would have seen in turn.
                    check(counts)
                raise DBAPIError.instance(None, None, exc, dbapi_error) from exc
            except BaseException:
                _rollback_quietly(driver)
                raise
        finally:
            raw.close()  # back to the pool

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
            if not self.create:
                raise StoreError(f"there is no pylo store at {self.location}: the database holds no pylo tables")
            with self._write() as conn:
                if self._is_postgres:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                if self._check_schema(conn):
                    return
                # Optional tables come with the first write that needs them,
                # as they do in a store written before they existed.
                required = [table for name, table in METADATA.tables.items() if name in REQUIRED_TABLES]
                METADATA.create_all(conn, tables=required, checkfirst=True)
                present = set(conn.execute(sa.select(META.c.key)).scalars())
                rows = [
                    {"key": key, "value": value}
                    for key, value in (("format", FORMAT_NAME), ("version", str(FORMAT_VERSION)))
                    if key not in present
                ]
                if rows:
                    conn.execute(META.insert(), rows)
                logger.debug("created the pylo schema in %s", self.location)

    def _check_schema(self, conn: Connection) -> bool:
        """True when the pylo schema is complete (noting its tables); raise if the database is foreign."""
        names = _sqlschema.check_schema(conn, self.location, exclusive=self.exclusive)
        if names is None:
            return False
        self._tables = names
        return True

    def _not_found(self, execution_id: str) -> ExecutionNotFound:
        return ExecutionNotFound(execution_id, self.location)

    def _input_source(self, conn: Connection, execution_id: str) -> str:
        source = conn.execute(
            sa.select(EXECUTIONS.c.input_source).where(EXECUTIONS.c.id == execution_id)
        ).scalar_one_or_none()
        if source is None:
            raise self._not_found(execution_id)
        return str(source)

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
                    conn.execute(EXECUTIONS.insert(), row)
                    self._insert_labels(conn, record.id, record.labels)
            except IntegrityError as exc:
                # The primary key decides, inside the database, which of two
                # racing creators wins; any other integrity error is re-raised.
                with self._read() as conn:
                    exists = conn.execute(sa.select(EXECUTIONS.c.id).where(EXECUTIONS.c.id == record.id)).first()
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
        dialect = self._engine.dialect
        grow = _sqlraw.compiled("grow", dialect, _sqlschema.grow_statement)
        insert = _sqlraw.compiled("batches", dialect, _sqlschema.batches_statement)
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
        statements: list[DriverStatement] = [
            (grow.sql, grow.one({"x_id": execution_id, "x_added": added, "x_updated_at": time.time()}), False)
        ]
        if rows:
            statements.extend(_sqlraw.statements_for(insert, insert.params(rows)))
        with self._guard(f"add batches to execution {execution_id!r}"):
            self._driver_write(statements, self._exists_check(execution_id))

    def record_flush(self, execution_id: str, flush: Flush) -> None:
        """See :meth:`Store.record_flush`.

        Most flushes change counts, states and rows only: they run on the
        driver's own connection (:meth:`_driver_write`), every statement
        compiled once. A flush that sets the status, the end or
        ``inputs_complete`` (a handful per execution), or the first to meet
        a table this store may predate, goes through SQLAlchemy.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: A failure or result position is already recorded, or
                the database cannot be written.
            ValueError: The flush sets the derived ``CRASHED`` status.
        """
        check_flush(execution_id, flush)
        now = time.time()
        final = flush.status is not None or flush.ended_at is not None or flush.inputs_complete
        with self._guard(f"record a flush of execution {execution_id!r}"):
            driver_path = not final and (not flush.chunks or CHUNKS.name in self._tables)
            # One message (PostgreSQL): every statement after the counts' writes
            # nothing for a missing execution (foreign keys; chunks are guarded).
            one_message = driver_path and self._pipelines and _sqlmessage.fits(flush)
            statements = self._flush_statements(execution_id, flush, guarded_chunks=one_message)
            counts = _sqlraw.compiled("counts", self._engine.dialect, _sqlschema.counts_statement)
            if driver_path:
                self._driver_write(
                    [(counts.sql, counts.one(self._counts_row(execution_id, flush, now)), False), *statements],
                    self._exists_check(execution_id),
                    one_message=one_message,
                )
                return
            with self._write() as conn:
                if final:
                    values: dict[str, Any] = {
                        "total": flush.total,
                        "finished": flush.finished,
                        "failed": flush.failed,
                        "updated_at": now,
                    }
                    if flush.status is not None:
                        values["status"] = ExecutionStatus(flush.status).value
                    if flush.ended_at is not None:
                        values["ended_at"] = float(flush.ended_at)
                    if flush.inputs_complete:
                        values["inputs_complete"] = True
                    updated = conn.execute(EXECUTIONS.update().where(EXECUTIONS.c.id == execution_id).values(**values))
                else:
                    updated = conn.exec_driver_sql(counts.sql, counts.one(self._counts_row(execution_id, flush, now)))
                if updated.rowcount == 0:
                    raise self._not_found(execution_id)
                if flush.status is not None:
                    self._write_stop(conn, execution_id, flush)
                if flush.chunks:
                    self._ensure_table(conn, CHUNKS)
                for sql, parameters, many in statements:
                    conn.exec_driver_sql(sql, parameters if many else tuple(parameters))

    def _exists_check(self, execution_id: str) -> Callable[[list[int]], None]:
        """A :meth:`_driver_write` check: the first statement updates the execution row; 0 rows means none."""

        def check(rowcounts: list[int]) -> None:
            if rowcounts[0] == 0:
                raise self._not_found(execution_id)

        return check

    @staticmethod
    def _counts_row(execution_id: str, flush: Flush, now: float) -> dict[str, Any]:
        return {
            "x_id": execution_id,
            "x_total": flush.total,
            "x_finished": flush.finished,
            "x_failed": flush.failed,
            "x_updated_at": now,
        }

    def _flush_statements(
        self, execution_id: str, flush: Flush, *, guarded_chunks: bool = False
    ) -> list[DriverStatement]:
        """A flush's statements after the execution row's, as the driver runs them (:func:`_sqlraw.statements_for`).

        ``guarded_chunks``: chunk rows are inserted only if the execution
        exists (``pylo_chunks`` has no foreign key to refuse them).
        """
        dialect = self._engine.dialect
        postgres = self._is_postgres
        statements: list[DriverStatement] = []

        def add(name: str, build: Callable[[], Any], rows: list[dict[str, Any]]) -> None:
            raw = _sqlraw.compiled(name, dialect, build)
            statements.extend(_sqlraw.statements_for(raw, raw.params(rows)))

        def add_tuples(name: str, build: Callable[[], Any], columns: tuple[str, ...], rows: list[Any]) -> None:
            """For rows by the hundred or thousand: tuples in ``columns`` order, not a dict each."""
            raw = _sqlraw.compiled(name, dialect, build)
            statements.extend(_sqlraw.statements_for(raw, raw.from_tuples(columns, rows)))

        if flush.states:
            add(
                "states",
                _sqlschema.states_statement,
                [
                    {"b_execution_id": execution_id, "b_batch_no": batch_no, "b_states": bytes(data)}
                    for batch_no, data in flush.states.items()
                ],
            )
        if flush.failures:
            text = _sqlschema.storable_text
            failure_rows = [
                (
                    execution_id,
                    row.position,
                    text(row.exc_type, postgres=postgres),
                    text(row.message, postgres=postgres),
                    text(row.traceback, postgres=postgres),
                    None if row.exception is None else bytes(row.exception),
                    row.attempts,
                    row.worker,
                    float(row.failed_at),
                )
                for row in flush.failures
            ]
            add_tuples("failures", _sqlschema.failures_statement, _FAILURE_COLUMNS, failure_rows)
        if flush.results:
            rows = [(execution_id, at, bytes(value)) for at, value in flush.results]
            add_tuples("results", _sqlschema.results_statement, _RESULT_COLUMNS, rows)
        if flush.chunks:
            # In position order, so that most rows land at the end of the
            # table's key, the cheapest insert there is.
            chunk_rows = sorted(
                [(execution_id, row.first_position, row.last_position, row.worker) for row in flush.chunks],
                key=itemgetter(1),
            )
            if guarded_chunks:
                add_tuples("guarded_chunks", _sqlschema.guarded_chunks_statement, _CHUNK_COLUMNS, chunk_rows)
            else:
                add_tuples("chunks", _sqlschema.chunks_statement, _CHUNK_COLUMNS, chunk_rows)
        return statements

    # -- reads -----------------------------------------------------------------

    def get_execution(self, execution_id: str) -> ExecutionRecord:
        """See :meth:`Store.get_execution`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The database cannot be read or the row is damaged.
        """
        with self._guard(f"read execution {execution_id!r}"), self._read() as conn:
            row = conn.execute(sa.select(EXECUTIONS).where(EXECUTIONS.c.id == execution_id)).first()
            labels = self._labels_of(conn, [execution_id])
            stops = self._stops_of(conn, [execution_id])
        if row is None:
            raise self._not_found(execution_id)
        return _sqlschema.record_from_row(row, self.location, labels.get(execution_id, {}), stops.get(execution_id))

    def list_executions(self, *, labels: Mapping[str, str] | None = None) -> list[ExecutionRecord]:
        """See :meth:`Store.list_executions`.

        With ``labels``, the ``pylo_labels`` index picks the executions.

        Raises:
            DamagedExecutions: Some rows are damaged; the error names them
                and carries the intact executions.
            StoreError: The database cannot be read.
        """
        query = sa.select(EXECUTIONS).order_by(EXECUTIONS.c.created_at, EXECUTIONS.c.id)
        with self._guard("list executions"), self._read() as conn:
            if labels and not self._has_table(conn, LABELS):
                return []  # a store in which no execution has labels
            for key, value in (labels or {}).items():
                labelled = sa.select(LABELS.c.execution_id).where(LABELS.c.key == key, LABELS.c.value == value)
                query = query.where(EXECUTIONS.c.id.in_(labelled))
            rows = conn.execute(query).all()
            ids = [str(row.id) for row in rows] if labels else None
            found, stops = self._labels_of(conn, ids), self._stops_of(conn, ids)
        records = []
        damaged: dict[str, StoreError] = {}
        for row in rows:
            try:
                execution_id = str(row.id)
                records.append(
                    _sqlschema.record_from_row(row, self.location, found.get(execution_id, {}), stops.get(execution_id))
                )
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
            found = conn.execute(
                sa.select(EXECUTIONS.c.input_source, EXECUTIONS.c.total).where(EXECUTIONS.c.id == execution_id)
            ).first()
            if found is None:
                raise self._not_found(execution_id)
            source, total = str(found.input_source), int(found.total)
            rows = conn.execute(
                sa.select(BATCHES.c.batch_no, BATCHES.c.first_position, BATCHES.c.size, BATCHES.c.states)
                .where(BATCHES.c.execution_id == execution_id)
                .order_by(BATCHES.c.batch_no)
            ).all()
        records = [
            BatchRecord(int(row.batch_no), int(row.first_position), int(row.size), bytes(row.states)) for row in rows
        ]
        problem = batches_problem(records, total)
        if problem is not None:
            raise StoreError(f"execution {execution_id!r} in the store at {self.location} is damaged: it has {problem}")
        if not payloads:
            return iter(records)
        return self._attach_payloads(execution_id, source, records)

    def _attach_payloads(self, execution_id: str, source: str, records: list[BatchRecord]) -> Iterator[BatchRecord]:
        for start in range(0, len(records), _sqlschema.PAYLOAD_GROUP):
            group = records[start : start + _sqlschema.PAYLOAD_GROUP]
            with self._guard(f"read the inputs of execution {execution_id!r}"), self._read() as conn:
                found = dict(
                    conn.execute(
                        sa.select(BATCHES.c.batch_no, BATCHES.c.payload).where(
                            BATCHES.c.execution_id == source,
                            BATCHES.c.batch_no.in_([record.batch_no for record in group]),
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
        own = BATCHES.alias("own")
        src = BATCHES.alias("src")
        # Joining on the execution's own batches skips numbers it does not
        # have, even when its input source has them.
        joined = own.join(src, sa.and_(src.c.execution_id == source, src.c.batch_no == own.c.batch_no))
        for group in _sqlschema.chunks(batch_nos, _sqlschema.PAYLOAD_GROUP):
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
                sa.select(FAILURES).where(FAILURES.c.execution_id == execution_id).order_by(FAILURES.c.position)
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

    def _open_runs(self) -> RunStore:
        """See :meth:`Store.runs`: runs live in this database, tables made by the first run."""
        from pylo.stores.sql_runs import SqlRunStore  # only when pipelines are used

        return SqlRunStore(self)

    def close(self) -> None:
        """Close the database connections."""
        self._engine.dispose()


def _rollback_quietly(driver: Any) -> None:
    """Roll back a driver connection whose transaction failed; a failure to do so changes nothing.

    The error that failed the transaction is the one to report; the pool
    resets (or discards) the connection on its return anyway.
    """
    try:
        driver.rollback()
    except Exception:  # the connection may be broken already
        logger.debug("rollback after a failed write failed too", exc_info=True)


def _in_turn(driver: Any, statements: Sequence[DriverStatement], begin: str | None, counts: list[int]) -> None:
    """Run the statements one after the other on one cursor, appending each one's row count to ``counts``."""
    cursor = driver.cursor()
    try:
        if begin is not None:
            cursor.execute(begin)  # SQLite: as _write's, writers queue on the busy timeout
        for sql, parameters, many in statements:
            if many:
                cursor.executemany(sql, parameters)
            else:
                cursor.execute(sql, parameters)
            counts.append(cursor.rowcount)
    finally:
        cursor.close()


#: The order of a failure row's values in :meth:`SQLStore._flush_statements` (the table's).
_FAILURE_COLUMNS = (
    "execution_id", "position", "exc_type", "message", "traceback", "exception", "attempts", "worker", "failed_at",
)  # fmt: skip
#: The order of a result row's values in :meth:`SQLStore._flush_statements`.
_RESULT_COLUMNS = ("execution_id", "position", "value")
#: The order of a chunk row's values there.
_CHUNK_COLUMNS = ("execution_id", "first_position", "last_position", "worker")


def _pipelined(driver: Any, statements: Sequence[DriverStatement], counts: list[int]) -> None:
    """Send the statements in one round trip (psycopg's pipeline mode), then append their row counts to ``counts``.

    Each statement has a cursor of its own, so that each count is kept:
    none is known until the pipeline's end. When one fails, the counts of
    those before it are still appended (-1 for the others).
    """
    cursors = [driver.cursor() for _ in statements]
    try:
        with driver.pipeline():
            for cursor, (sql, parameters, many) in zip(cursors, statements, strict=True):
                if many:
                    cursor.executemany(sql, parameters)
                else:
                    cursor.execute(sql, parameters)
    finally:
        counts.extend(cursor.rowcount for cursor in cursors)
        for cursor in cursors:
            cursor.close()
