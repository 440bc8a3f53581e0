"""Pipeline runs in the SQL store's database, through SQLAlchemy Core.

Two tables next to the executions' (:mod:`pylo.stores.sql`)::

    pylo_runs(id PK, parent_id, name, status, ..., options JSON)
    pylo_nodes(run_id, key PK, seq, task_name, ..., upstream JSON,
               state, attempts, ..., result, exception, execution_id, ...)

A run's nodes are read whole, found by the primary key's leading ``run_id``
and sorted by ``seq`` as they are read. Stores made before that keep an
index on ``(run_id, seq)``; new ones have none, as every node's creation
wrote one index page more for an order that a sort of one run's rows gives.

They are created by the first :meth:`SqlRunStore.create_run`, in its own
transaction, and never by a read: a store written before pipelines existed
opens, reads and resumes exactly as before, and lists no runs, until a run is
created in it. The execution store's schema check ignores these tables, so
a pylo that predates pipelines still opens a store that has them.

Every write is one transaction through the execution store's own helpers
(``BEGIN IMMEDIATE`` on SQLite, errors turned into a
:class:`~pylo.errors.StoreError` naming the database).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pylo.errors import PipelineExists, PipelineNotFound, StoreError
from pylo.stores import _sqlschema
from pylo.stores._common import dump_options, load_options
from pylo.stores._run_rows import (
    MAX_KEY_LENGTH,
    check_new_run,
    check_update,
    last_change_per_key,
    node_problem,
    run_problem,
)
from pylo.stores._sqlraw import DriverStatement, Raw, compiled, statements_for
from pylo.stores._sqlschema import SCHEMA_LOCK_KEY
from pylo.stores.runs import CONTROL_ACTIONS, NodeRow, RunRow, RunStore, RunUpdate
from pylo.stores.sql import SQLStore

__all__ = ["SqlRunStore"]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Schema: a MetaData of its own, so that the execution store neither creates
# these tables when it opens nor calls a store without them damaged.

_metadata = sa.MetaData()
_ID = sa.String(255)

_runs = sa.Table(
    "pylo_runs",
    _metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("parent_id", _ID, nullable=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("ended_at", sa.Double, nullable=True),
    sa.Column("codec", sa.String(64), nullable=False),
    sa.Column("pid", sa.BigInteger, nullable=True),
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("options", sa.Text, nullable=False),
    # list_runs sorts by (created_at, id).
    sa.Index("ix_pylo_runs_created", "created_at", "id"),
)

_nodes = sa.Table(
    "pylo_nodes",
    _metadata,
    sa.Column("run_id", _ID, sa.ForeignKey("pylo_runs.id"), primary_key=True),
    sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("task_name", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("upstream", sa.Text, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Double, nullable=True),
    sa.Column("ended_at", sa.Double, nullable=True),
    sa.Column("result", sa.LargeBinary, nullable=True),
    sa.Column("exc_type", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("traceback", sa.Text, nullable=True),
    sa.Column("exception", sa.LargeBinary, nullable=True),
    sa.Column("execution_id", _ID, nullable=True),
    sa.Column("child_run_id", _ID, nullable=True),
    # No index on (run_id, seq): see the module docstring.
)

#: Columns a RunUpdate may change; the others are fixed by create_run.
_MUTABLE = (
    "state",
    "attempts",
    "started_at",
    "ended_at",
    "result",
    "exc_type",
    "message",
    "traceback",
    "exception",
    "execution_id",
    "child_run_id",
)

# Built once; compiled once per kind of database (pylo.stores._sqlraw), and
# record_run sends all of an update's nodes through it in one executemany.
_update_node = (
    _nodes.update()
    .where(_nodes.c.run_id == sa.bindparam("n_run_id"), _nodes.c.key == sa.bindparam("n_key"))
    .values({name: sa.bindparam(f"n_{name}") for name in _MUTABLE})
)
#: The update's parameters, in the order :func:`_mutable_values` gives them (then run id, key).
_UPDATE_PARAMS = (*(f"n_{name}" for name in _MUTABLE), "n_run_id", "n_key")

_WITHOUT_BLOBS = [column for column in _nodes.c if column.name not in ("result", "exception")]

_insert_node = _nodes.insert()
_NODE_COLUMNS = tuple(column.name for column in _nodes.c)
_RUN_COLUMNS = [column.name for column in _runs.c]

# A flush's run-row update: a status or end left None keeps the stored one.
_update_run = (
    _runs.update()
    .where(_runs.c.id == sa.bindparam("u_id"))
    .values(
        updated_at=sa.bindparam("u_updated_at"),
        status=sa.func.coalesce(sa.bindparam("u_status", type_=_runs.c.status.type), _runs.c.status),
        ended_at=sa.func.coalesce(sa.bindparam("u_ended_at", type_=sa.Double), _runs.c.ended_at),
    )
)

#: How each node statement is built, by the name it is compiled under.
_BUILDERS: dict[str, Any] = {
    "pylo_nodes.insert": lambda: (_insert_node, list(_NODE_COLUMNS)),
    "pylo_nodes.update": lambda: (_update_node, None),
    "pylo_nodes.select": lambda: (_select_nodes(True), None),
    "pylo_nodes.select-without-blobs": lambda: (_select_nodes(False), None),
    "pylo_runs.insert": lambda: (_runs.insert(), _RUN_COLUMNS),
    "pylo_runs.update": lambda: (_update_run, None),
    "pylo_runs.options": lambda: (sa.select(_runs.c.options).where(_runs.c.id == sa.bindparam("o_id")), None),
}


def _select_nodes(results: bool) -> sa.Select[Any]:
    columns = list(_nodes.c) if results else _WITHOUT_BLOBS
    return sa.select(*columns).where(_nodes.c.run_id == sa.bindparam("s_run_id")).order_by(_nodes.c.seq)


class _UnknownKeys(Exception):
    """An update named a node the run does not have: its transaction rolls back, then the keys are named."""


#: Keys that json.dumps writes as they are, between quotes (what graph keys are made of).
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._-]+")


def _keys_json(keys: tuple[str, ...]) -> str:
    """``json.dumps(list(keys))``, without the encoder for the plain keys a graph gives (one per edge)."""
    if not keys:
        return "[]"
    if all(_PLAIN_KEY.fullmatch(key) for key in keys):
        return '["' + '", "'.join(keys) + '"]'
    return json.dumps(list(keys))


def _mutable_values(node: NodeRow, postgres: bool) -> tuple[Any, ...]:
    """The values of a node's ``_MUTABLE`` columns, in that order, as the driver takes them."""
    text = _sqlschema.storable_text
    started_at, ended_at, result, exception = node.started_at, node.ended_at, node.result, node.exception
    return (
        node.state,
        node.attempts,
        None if started_at is None else float(started_at),
        None if ended_at is None else float(ended_at),
        None if result is None else bytes(result),
        None if node.exc_type is None else text(node.exc_type, postgres=postgres),
        None if node.message is None else text(node.message, postgres=postgres),
        None if node.traceback is None else text(node.traceback, postgres=postgres),
        None if exception is None else bytes(exception),
        node.execution_id,
        node.child_run_id,
    )


class SqlRunStore(RunStore):
    """Pipeline runs in the database of a :class:`~pylo.stores.sql.SQLStore`.

    Obtain one with ``store.runs()``. It shares the store's engine, so
    closing the store closes it too.

    Args:
        store: The execution store whose database keeps the runs.
    """

    def __init__(self, store: SQLStore) -> None:
        self._store = store
        self.location = store.location
        # Set once this process has seen both tables; they are never dropped.
        self._tables_seen = False
        self._dialect = store._engine.dialect

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # -- plumbing --------------------------------------------------------------

    def _has_tables(self, conn: Connection) -> bool:
        """True when the run tables exist; a store written before pipelines has neither."""
        if self._tables_seen:
            return True
        inspector = sa.inspect(conn)
        runs, nodes = (inspector.has_table(table.name) for table in (_runs, _nodes))
        if runs != nodes:
            # Both are created in one transaction: one alone was dropped.
            missing = _nodes.name if runs else _runs.name
            raise StoreError(
                f"the store at {self.location} is damaged: it has pipeline tables but not {missing}; "
                "restore it from a backup or give pylo another path"
            )
        self._tables_seen = runs
        return runs

    def _create_tables(self, conn: Connection) -> None:
        """Create the run tables inside the caller's write transaction, once per store."""
        if self._tables_seen:
            return
        if self._store._is_postgres:
            # Processes creating the first run of a store at once: the second
            # waits here, then finds the tables (READ COMMITTED sees them).
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        if not self._has_tables(conn):
            _metadata.create_all(conn, checkfirst=True)
            logger.debug("created the pipeline tables in %s", self.location)

    def _raw(self, name: str) -> Raw:
        """A statement compiled for this database, once per kind of database in a process.

        Compiling costs milliseconds; opening a store to read its executions
        (or a run's row) should not pay for statements it never runs.
        """
        return compiled(name, self._dialect, _BUILDERS[name])

    def _not_found(self, run_id: str) -> PipelineNotFound:
        return PipelineNotFound(run_id, self.location)

    def _damaged(self, run_id: str, problem: str) -> StoreError:
        return StoreError(f"pipeline run {run_id!r} in the store at {self.location} is damaged: {problem}")

    def _run_from_row(self, row: sa.Row[Any]) -> RunRow:
        try:
            run = RunRow(
                id=row.id,
                parent_id=row.parent_id,
                name=row.name,
                status=row.status,
                created_at=float(row.created_at),
                updated_at=float(row.updated_at),
                ended_at=None if row.ended_at is None else float(row.ended_at),
                codec=row.codec,
                pid=None if row.pid is None else int(row.pid),
                host=row.host,
                options=load_options(row.options),
            )
        except (TypeError, ValueError) as exc:
            raise self._damaged(str(row.id), f"{type(exc).__name__}: {exc}") from exc
        problem = run_problem(run)
        if problem is not None:
            raise self._damaged(run.id, f"it has {problem}")
        return run

    def _node_from_row(self, run_id: str, row: Sequence[Any], results: bool) -> NodeRow:
        # By position, in the order of _NODE_COLUMNS (names cost a lookup each).
        try:
            if results:
                (_, key, seq, task_name, display_name, kind, upstream_text, state, attempts, started_at, ended_at,
                 result, exc_type, message, traceback, exception, execution_id, child_run_id) = row  # fmt: skip
            else:
                (_, key, seq, task_name, display_name, kind, upstream_text, state, attempts, started_at, ended_at,
                 exc_type, message, traceback, execution_id, child_run_id) = row  # fmt: skip
                result = exception = None
            upstream = [] if upstream_text == "[]" else json.loads(upstream_text)
            if not isinstance(upstream, list):
                raise TypeError(f"the upstream keys of node {key!r} are not a JSON list")
            node = NodeRow(
                key,
                int(seq),
                task_name,
                display_name,
                kind,
                tuple(upstream),
                state,
                int(attempts),
                None if started_at is None else float(started_at),
                None if ended_at is None else float(ended_at),
                None if result is None else bytes(result),
                exc_type,
                message,
                traceback,
                None if exception is None else bytes(exception),
                execution_id,
                child_run_id,
            )
        except (TypeError, ValueError) as exc:
            raise self._damaged(run_id, f"{type(exc).__name__}: {exc}") from exc
        problem = node_problem(node)
        if problem is not None:
            raise self._damaged(run_id, problem)
        return node

    # -- writes ----------------------------------------------------------------

    def create_run(self, run: RunRow, nodes: Sequence[NodeRow]) -> None:
        """See :meth:`RunStore.create_run`.

        The first run of a store creates the run tables, in the same
        transaction.

        Raises:
            PipelineExists: A run with ``run.id`` exists.
            ValueError: Two nodes share a key or a ``seq``, a key is empty or
                too long, or a state or status is unknown.
            TypeError: ``run.options`` is not JSON-serializable.
            StoreError: The database cannot be written.
        """
        options = check_new_run(run, nodes)
        row = {
            "id": run.id,
            "parent_id": run.parent_id,
            "name": _sqlschema.storable_text(run.name, postgres=self._store._is_postgres),
            "status": run.status,
            "created_at": float(run.created_at),
            "updated_at": float(run.updated_at),
            "ended_at": None if run.ended_at is None else float(run.ended_at),
            "codec": run.codec,
            "pid": run.pid,
            "host": run.host,
            "options": options,
        }
        postgres = self._store._is_postgres
        text = _sqlschema.storable_text
        # Tuples in _NODE_COLUMNS order (_MUTABLE is its tail).
        node_rows = [
            (
                run.id,
                node.key,
                node.seq,
                node.task_name,
                text(node.display_name, postgres=postgres),
                node.kind,
                _keys_json(node.upstream),
                *_mutable_values(node, postgres),
            )
            for node in nodes
        ]
        store = self._store
        insert_run = self._raw("pylo_runs.insert")
        insert = self._raw("pylo_nodes.insert")
        with store._guard(f"create pipeline run {run.id!r}"):
            try:
                if self._tables_seen:  # every run of a store but its first: on the driver's connection
                    statements: list[DriverStatement] = [(insert_run.sql, insert_run.one(row), False)]
                    if node_rows:
                        statements.extend(statements_for(insert, insert.from_tuples(_NODE_COLUMNS, node_rows)))
                    store._driver_write(statements)
                else:
                    with store._write() as conn:
                        self._create_tables(conn)
                        conn.exec_driver_sql(insert_run.sql, insert_run.one(row))
                        if node_rows:
                            conn.exec_driver_sql(insert.sql, insert.from_tuples(_NODE_COLUMNS, node_rows))
            except IntegrityError as exc:
                # The primary key decides, inside the database, which of two
                # racing creators wins; any other integrity error is re-raised.
                with store._read() as conn:
                    exists = conn.execute(sa.select(_runs.c.id).where(_runs.c.id == run.id)).first()
                if exists is not None:
                    raise PipelineExists(run.id, self.location) from exc
                raise
        self._tables_seen = True

    def record_run(self, run_id: str, update: RunUpdate) -> None:
        """See :meth:`RunStore.record_run`.

        The nodes of an update go to the database in one ``executemany`` of
        one compiled statement; a node changed twice in one update is
        written once, as its last change says.

        Raises:
            PipelineNotFound: No such run.
            StoreError: A node key in the update is not one of the run's, or
                the database cannot be written.
            ValueError: A state or the status is unknown, or the status is
                the derived ``crashed``.
            TypeError: ``update.options`` is not JSON-serializable.
        """
        check_update(run_id, update)
        values: dict[str, Any] = {"updated_at": time.time()}
        if update.status is not None:
            values["status"] = update.status
        if update.ended_at is not None:
            values["ended_at"] = float(update.ended_at)
        changed = last_change_per_key(update.nodes)
        postgres = self._store._is_postgres
        params = [(*_mutable_values(node, postgres), run_id, node.key) for node in changed]
        store = self._store
        if update.options is None and self._tables_seen:
            self._record_on_driver(run_id, values, changed, params)
            return
        with store._guard(f"record an update of pipeline run {run_id!r}"), store._write() as conn:
            if not self._has_tables(conn):
                raise self._not_found(run_id)
            if update.options is not None:
                current = conn.execute(sa.select(_runs.c.options).where(_runs.c.id == run_id)).scalar_one_or_none()
                if current is None:
                    raise self._not_found(run_id)
                try:
                    merged = {**load_options(current), **update.options}
                except ValueError as exc:
                    raise self._damaged(run_id, f"its options cannot be read ({exc})") from exc
                values["options"] = dump_options(run_id, merged, owner="pipeline run")
            # The run row first: it doubles as the existence check, and an
            # exception inside the transaction rolls everything back. (Flushes
            # of a store whose tables were seen go through _record_on_driver.)
            updated = conn.execute(_runs.update().where(_runs.c.id == run_id).values(**values))
            if updated.rowcount == 0:
                raise self._not_found(run_id)
            if params:
                statement = self._raw("pylo_nodes.update")
                result = conn.exec_driver_sql(statement.sql, statement.from_tuples(_UPDATE_PARAMS, params))
                if result.rowcount != len(params):
                    self._raise_unknown_keys(conn, run_id, changed)

    def _record_on_driver(
        self, run_id: str, values: dict[str, Any], changed: Sequence[NodeRow], params: list[tuple[Any, ...]]
    ) -> None:
        """:meth:`record_run` of an update without options (each flush of a coordinator), on the driver connection."""
        store = self._store
        run_update = self._raw("pylo_runs.update")
        row = {
            "u_id": run_id,
            "u_updated_at": values["updated_at"],
            "u_status": values.get("status"),
            "u_ended_at": values.get("ended_at"),
        }
        statements: list[DriverStatement] = [(run_update.sql, run_update.one(row), False)]
        if params:
            statement = self._raw("pylo_nodes.update")
            statements.append((statement.sql, statement.from_tuples(_UPDATE_PARAMS, params), True))

        def check(rowcounts: list[int]) -> None:
            if rowcounts[0] == 0:  # the run row doubles as the existence check
                raise self._not_found(run_id)
            if params and rowcounts[1] != len(params):
                raise _UnknownKeys

        unknown_keys = False
        with store._guard(f"record an update of pipeline run {run_id!r}"):
            try:
                store._driver_write(statements, check)
            except _UnknownKeys:
                unknown_keys = True  # rolled back: name them from a read
            if unknown_keys:
                with store._read() as conn:
                    self._raise_unknown_keys(conn, run_id, changed)

    def _raise_unknown_keys(self, conn: Connection, run_id: str, changed: Sequence[NodeRow]) -> None:
        known = set(conn.execute(sa.select(_nodes.c.key).where(_nodes.c.run_id == run_id)).scalars())
        unknown = [node.key for node in changed if node.key not in known]
        raise StoreError(
            f"cannot record an update of pipeline run {run_id!r} in the store at {self.location}: "
            f"it has no node with the key(s) {', '.join(map(repr, unknown))}; nothing was written"
        )

    # -- reads -----------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRow:
        """See :meth:`RunStore.get_run`.

        Raises:
            PipelineNotFound: No such run.
            StoreError: The database cannot be read or the row is damaged.
        """
        store = self._store
        with store._guard(f"read pipeline run {run_id!r}"), store._read() as conn:
            row = None
            if self._has_tables(conn):
                row = conn.execute(sa.select(_runs).where(_runs.c.id == run_id)).first()
        if row is None:
            raise self._not_found(run_id)
        return self._run_from_row(row)

    def read_control(self, run_id: str) -> str | None:
        """See :meth:`RunStore.read_control`: the run's options text only, parsed only when it has a request.

        A running coordinator reads this several times a second, and a large
        run's options hold its result's shape (a key per node); parsing that
        each time cost more than the nodes it was read between.

        Raises:
            PipelineNotFound: No such run.
            StoreError: The database cannot be read or the options are damaged.
        """
        store = self._store
        select = self._raw("pylo_runs.options")
        with store._guard(f"read the control request of pipeline run {run_id!r}"), store._read() as conn:
            row = None
            if self._has_tables(conn):
                row = conn.exec_driver_sql(select.sql, select.one({"o_id": run_id})).first()
        if row is None:
            raise self._not_found(run_id)
        text = row[0]
        if '"control"' not in text:  # dump_options writes the key as this JSON string, when there is one
            return None
        try:
            action = load_options(text).get("control")
        except ValueError as exc:
            raise self._damaged(run_id, f"its options cannot be read ({exc})") from exc
        return action if action in CONTROL_ACTIONS else None

    def list_runs(self) -> list[RunRow]:
        """See :meth:`RunStore.list_runs`.

        Raises:
            StoreError: The database cannot be read, or a run row is damaged
                (the message names every damaged run).
        """
        store = self._store
        with store._guard("list pipeline runs"), store._read() as conn:
            if not self._has_tables(conn):
                return []
            rows = conn.execute(sa.select(_runs).order_by(_runs.c.created_at, _runs.c.id)).all()
        runs = []
        damaged = []
        for row in rows:
            try:
                runs.append(self._run_from_row(row))
            except StoreError as exc:  # name them all, not just the first
                damaged.append(str(exc))
        if damaged:
            raise StoreError("; ".join(damaged))
        return runs

    def node_durations(self, keys: Sequence[str], *, recent: int = 5) -> dict[str, list[float]]:
        """See :meth:`RunStore.node_durations`: one query over the ``recent`` newest runs' done nodes."""
        wanted = sorted(set(keys))
        found: dict[str, list[float]] = {}
        if not wanted or recent <= 0:
            return found
        store = self._store
        newest = (
            sa.select(_runs.c.id, _runs.c.created_at)
            .order_by(_runs.c.created_at.desc(), _runs.c.id.desc())
            .limit(recent)
            .subquery()
        )
        query = (
            sa.select(_nodes.c.key, _nodes.c.started_at, _nodes.c.ended_at)
            .join(newest, newest.c.id == _nodes.c.run_id)
            .where(_nodes.c.state == "done", _nodes.c.started_at.is_not(None), _nodes.c.ended_at.is_not(None))
            .order_by(newest.c.created_at.desc(), newest.c.id.desc())
        )
        wanted_set = frozenset(wanted)
        with store._guard("read node durations"), store._read() as conn:
            if not self._has_tables(conn):
                return found
            for key, started_at, ended_at in conn.execute(query):
                if key in wanted_set:
                    found.setdefault(key, []).append(max(0.0, float(ended_at) - float(started_at)))
        return found

    def read_nodes(self, run_id: str, *, results: bool = True) -> list[NodeRow]:
        """See :meth:`RunStore.read_nodes`.

        Raises:
            PipelineNotFound: No such run.
            StoreError: The database cannot be read or a row is damaged.
        """
        store = self._store
        select = self._raw("pylo_nodes.select" if results else "pylo_nodes.select-without-blobs")
        with store._guard(f"read the nodes of pipeline run {run_id!r}"), store._read() as conn:
            exists = self._has_tables(conn) and (
                conn.execute(sa.select(_runs.c.id).where(_runs.c.id == run_id)).first() is not None
            )
            if not exists:
                raise self._not_found(run_id)
            rows = conn.exec_driver_sql(select.sql, select.one({"s_run_id": run_id})).all()
        return [self._node_from_row(run_id, row, results) for row in rows]
