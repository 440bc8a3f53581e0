"""Flush throughput of the SQL store: SQLite vs PostgreSQL, in one run.

Run from the repository root:

    python benchmarks/flush_throughput.py             # 1,000,000 outcomes (about a minute)
    python benchmarks/flush_throughput.py --quick     # 100,000, for a smoke check
    python benchmarks/flush_throughput.py --postgres-url postgresql+psycopg://user@host/db

Without ``--postgres-url`` a throwaway PostgreSQL server is started on
127.0.0.1 (``tests/pg_server.py``) with PostgreSQL's default durability
(``fsync`` and ``synchronous_commit`` on), and deleted afterwards; a given
database gets a schema of its own, dropped afterwards.

What is measured, for each store, on a fresh store:

[1] ``Store.record_flush`` alone: an execution of N inputs in batches of
    1,024 is recorded first (not timed); then N outcomes are flushed 1,024 at
    a time, as the coordinator does with the default
    ``task_executions_before_flush=1024``: each flush replaces the state
    bytes of the batch it touches,
    adds a failure record for 1 % of its outcomes (message and traceback
    text, pickled exception) and sets the counts, in one transaction. The
    figure is N / (wall time of the record_flush calls): the most outcomes
    per second a single coordinator can make durable.
[2] A whole engine run: ``Pylo.local_multithread(dir, 2,
    task_executions_before_flush=1024, store=...)`` over N no-op tasks, which
    records the inputs, runs them and flushes; the figure is N / wall time,
    the best of ``--rounds`` runs taking turns on the two stores, each store
    having run a warm-up execution of 1,000 inputs first (its first use
    creates tables a store may predate). This is what the store costs a
    user, diluted by everything else pylo does.

Durability is not the same on both sides by default: SQLite runs in WAL mode
with ``synchronous=NORMAL`` (a commit survives the crash of the application,
not of the machine), PostgreSQL with ``synchronous_commit=on`` (a commit
waits for its WAL to reach the disk). The third line of [1] sets
``synchronous_commit=off`` for pylo's sessions (in the URL:
``?options=-csynchronous_commit%3Doff``), which is closer to SQLite's setting.
PostgreSQL is reached over TCP on the loopback interface; on a network the
round trips cost more.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pg_server  # noqa: E402 - needs the sys.path entries above

from pylo import Pylo  # noqa: E402
from pylo.stores.base import (  # noqa: E402
    FAILED,
    FINISHED,
    PENDING,
    BatchRecord,
    ExecutionRecord,
    ExecutionStatus,
    FailureRow,
    Flush,
    Store,
)
from pylo.stores.sql import SQLStore  # noqa: E402

BATCH = 1024
FLUSH_EVERY = 1024  # the default task_executions_before_flush: one stored batch
FAILURE_EVERY = 100  # 1 % of outcomes fail

_TRACEBACK = 'Traceback (most recent call last):\n  File "job.py", line 12, in task\nValueError: bad input\n'


def noop(item: object) -> None:
    return None


def prepare(store: Store, execution_id: str, n: int) -> None:
    """Record an execution of n pending inputs in batches of BATCH, as the engine would (not timed)."""
    now = time.time()
    store.create_execution(
        ExecutionRecord(
            id=execution_id,
            parent_id=None,
            input_source=execution_id,
            status=ExecutionStatus.RUNNING,
            created_at=now,
            updated_at=now,
            ended_at=None,
            task_name="benchmarks.flush_throughput:noop",
            codec="pickle",
            pid=os.getpid(),
        )
    )
    batches = []
    for batch_no, first in enumerate(range(0, n, BATCH)):
        size = min(BATCH, n - first)
        payload = pickle.dumps(list(range(first, first + size)))
        batches.append(BatchRecord(batch_no, first, size, bytes([PENDING]) * size, payload))
        if len(batches) == 16:
            store.add_batches(execution_id, batches)
            batches = []
    store.add_batches(execution_id, batches)


def flush_plan(n: int) -> Iterator[Flush]:
    """The flushes of n outcomes, FLUSH_EVERY at a time, each one transaction's worth."""
    states = {batch_no: bytearray(min(BATCH, n - batch_no * BATCH)) for batch_no in range((n + BATCH - 1) // BATCH)}
    finished = failed = 0
    for start in range(0, n, FLUSH_EVERY):
        touched: set[int] = set()
        failures = []
        for position in range(start, min(start + FLUSH_EVERY, n)):
            batch_no, offset = divmod(position, BATCH)
            if position % FAILURE_EVERY == 0:
                states[batch_no][offset] = FAILED
                failed += 1
                failures.append(
                    FailureRow(
                        position=position,
                        exc_type="builtins.ValueError",
                        message=f"bad input {position}",
                        traceback=_TRACEBACK,
                        exception=pickle.dumps(ValueError(f"bad input {position}")),
                        attempts=1,
                        worker=position % 2,
                        failed_at=time.time(),
                    )
                )
            else:
                states[batch_no][offset] = FINISHED
                finished += 1
            touched.add(batch_no)
        yield Flush(
            states={batch_no: bytes(states[batch_no]) for batch_no in sorted(touched)},
            failures=failures,
            results=[],
            total=n,
            finished=finished,
            failed=failed,
        )


def measure_flushes(open_store: Callable[[], Store], n: int) -> tuple[float, float]:
    """Seconds the record_flush calls took for n outcomes, and the median flush in ms."""
    plan = list(flush_plan(n))
    with open_store() as store:
        execution_id = "flush-" + uuid.uuid4().hex[:8]
        prepare(store, execution_id, n)
        durations = []
        started = time.perf_counter()
        for flush in plan:
            before = time.perf_counter()
            store.record_flush(execution_id, flush)
            durations.append(time.perf_counter() - before)
        elapsed = time.perf_counter() - started
        record = store.get_execution(execution_id)
        assert (record.finished, record.failed) == (plan[-1].finished, plan[-1].failed), record
    return elapsed, statistics.median(durations) * 1000


def measure_engines(stores: list[Store], directory: str, n: int, rounds: int) -> list[tuple[float, int]]:
    """Best seconds of a whole run of n no-op tasks on each store, and how many flushes such a run made.

    Each store first runs a warm-up execution of 1,000 inputs (its first
    use: tables a store may predate, prepared statements), as a user's store
    has after its first job; then the stores take turns, ``rounds`` runs
    each, so that a change in the machine's load falls on both.
    """
    flushes = [0] * len(stores)
    with contextlib.ExitStack() as stack:
        pylos = []
        for index, store in enumerate(stores):
            record_flush = store.record_flush

            def counted(execution_id: str, flush: Flush, index: int = index, record: Any = record_flush) -> None:
                flushes[index] += 1
                record(execution_id, flush)

            store.record_flush = counted  # type: ignore[method-assign]
            pylo = stack.enter_context(
                Pylo.local_multithread(directory, 2, task_executions_before_flush=FLUSH_EVERY, store=store)
            )
            pylo.start_from_scratch(range(1_000), noop)
            pylos.append(pylo)
        best = [float("inf")] * len(stores)
        made = [0] * len(stores)
        for _ in range(rounds):
            for index, pylo in enumerate(pylos):
                before = flushes[index]
                started = time.perf_counter()
                execution_id = pylo.start_from_scratch(range(n), noop)
                best[index] = min(best[index], time.perf_counter() - started)
                made[index] = flushes[index] - before
                assert pylo.get_execution(execution_id).finished == n
    return list(zip(best, made, strict=True))


@contextmanager
def postgres_database(given: str | None) -> Iterator[tuple[str, str]]:
    """A URL of an empty schema to benchmark in, and a description of the server."""
    base: Path | None = None
    if given:
        url, where = given, "the given database"
    else:
        base = Path(tempfile.mkdtemp(prefix="pylo-bench-pg-"))
        server = pg_server.start(base, durable=True)
        url, where = server.url, f"a throwaway server from {server.bin_dir}, default settings"
    schema = pg_server.schema_name(f"bench-{uuid.uuid4()}")
    try:
        pg_server.create_schema(url, schema)
        yield pg_server.url_with_schema(url, schema), where
    finally:
        try:
            pg_server.drop_schema(url, schema)
        finally:
            if base is not None:
                pg_server.stop(base)


def with_session_option(url: str, option: str) -> str:
    """Add ``-c option`` to the libpq options of ``url``."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    options = " ".join(filter(None, [str(parsed.query.get("options", "")), f"-c{option}"]))
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


def line(label: str, n: int, seconds: float, extra: str = "") -> None:
    print(f"    {label:<44} {seconds:8.3f} s  {n / seconds:>12,.0f} outcomes/s{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 outcomes instead of 1,000,000")
    parser.add_argument("--rounds", type=int, default=3, help="whole runs on each store, alternating (best kept)")
    parser.add_argument("--postgres-url", help="benchmark this PostgreSQL database instead of a throwaway server")
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000

    with tempfile.TemporaryDirectory() as scratch, postgres_database(args.postgres_url) as (pg_url, where):
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; PostgreSQL: {where}, over TCP on 127.0.0.1")
        print(f"load average {os.getloadavg()[0]:.2f}")
        print()
        print(f"[1] Store.record_flush: {n:,} outcomes, {FLUSH_EVERY:,} per flush, 1 % failures (one transaction each)")
        sqlite_s, sqlite_ms = measure_flushes(lambda: SQLStore.sqlite(Path(scratch, "flush.sqlite")), n)
        pg_s, pg_ms = measure_flushes(lambda: SQLStore(pg_url), n)
        relaxed = with_session_option(pg_url, "synchronous_commit=off")
        relaxed_s, relaxed_ms = measure_flushes(lambda: SQLStore(relaxed), n)
        line("SQLite (WAL, synchronous=NORMAL)", n, sqlite_s, f"  median flush {sqlite_ms:6.2f} ms")
        line("PostgreSQL (synchronous_commit=on)", n, pg_s, f"  median flush {pg_ms:6.2f} ms")
        line("PostgreSQL (synchronous_commit=off)", n, relaxed_s, f"  median flush {relaxed_ms:6.2f} ms")
        print(f"    PostgreSQL's throughput / SQLite's: {sqlite_s / pg_s:.2f} (on), {sqlite_s / relaxed_s:.2f} (off)")
        print()

        print(
            f"[2] whole run: {n:,} no-op tasks, 2 thread workers, task_executions_before_flush={FLUSH_EVERY:,}; "
            f"best of {args.rounds} alternating runs, after a warm-up run of 1,000 on each store"
        )
        (sqlite_run, sqlite_flushes), (pg_run, pg_flushes) = measure_engines(
            [SQLStore.sqlite(Path(scratch, "engine.sqlite")), SQLStore(pg_url)], scratch, n, args.rounds
        )
        line("SQLite (WAL, synchronous=NORMAL)", n, sqlite_run, f"  {sqlite_flushes:,} flushes")
        line("PostgreSQL (synchronous_commit=on)", n, pg_run, f"  {pg_flushes:,} flushes")
        print(f"    PostgreSQL's time / SQLite's: {pg_run / sqlite_run:.2f}x (goal: <= 2x)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
