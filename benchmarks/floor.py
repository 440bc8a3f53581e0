"""pylo beside the hand-written durable floor and the pools a user would pick.

Run from the repository root:

    python benchmarks/floor.py              # 1,000,000 no-op inputs, best of 3
    python benchmarks/floor.py --quick      # 100,000 inputs, for a smoke check
    python benchmarks/floor.py --rounds 5

The floor is the least a durable runner can do with pylo's contract, written
plainly in one thread with ``sqlite3``: the inputs are pickled in batches of
1,024 and inserted into a SQLite database in WAL mode with
``synchronous=NORMAL`` before the run; each input has one state byte; the
state bytes of the batches touched are written back, with the execution's
counts, in one commit per ~1,000 outcomes. It keeps no failures, no results,
no status, no resume, no workers: whatever pylo spends above it is the price
of those.

Every contender runs in its own fresh subprocess, in rounds that alternate
between them, and the best of each is kept; the ratios printed compare bests
of the same run. ``joblib`` and ``mpire`` are measured when installed
(``pip install -e ".[bench]"``). Goals are printed beside the figures; they
are goals to read, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _child import run_child  # noqa: E402  (the benchmarks' directory is on the path of a script run from it)

BATCH = 1024
COMMIT_EVERY = 1000


def noop(item: object) -> None:
    return None


class Span:
    """Wall and CPU time (every thread of the process) of one contender's run, over the same span.

    Imports and set-up (pylo's and SQLAlchemy's modules, a store's tables,
    the floor's tables) are outside it for every contender alike.
    """

    def __enter__(self) -> Span:
        self.cpu = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    @property
    def times(self) -> tuple[float, float]:
        return self.wall, self.cpu


# -- contenders, each run in its own process -----------------------------------


def floor(n: int) -> tuple[float, float]:
    """The hand-written durable floor: record the inputs, run them, one commit per ~1,000 outcomes."""
    with tempfile.TemporaryDirectory() as directory:
        db = sqlite3.connect(os.path.join(directory, "floor.sqlite"), isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("CREATE TABLE execution (id INTEGER PRIMARY KEY, total INTEGER, finished INTEGER)")
        db.execute("CREATE TABLE batch (no INTEGER PRIMARY KEY, payload BLOB, states BLOB)")
        with Span() as span:
            floor_run(db, n)
        assert db.execute("SELECT finished FROM execution").fetchone()[0] == n
        db.close()
    return span.times


def floor_run(db: sqlite3.Connection, n: int) -> None:
    inputs = list(range(n))
    # Record every input before the run, in batches of 1,024.
    db.execute("BEGIN")
    db.execute("INSERT INTO execution VALUES (1, ?, 0)", (n,))
    for no, start in enumerate(range(0, n, BATCH)):
        chunk = inputs[start : start + BATCH]
        db.execute("INSERT INTO batch VALUES (?, ?, ?)", (no, pickle.dumps(chunk), bytes(len(chunk))))
    db.execute("COMMIT")
    # Run, marking each outcome by its state byte; one commit per 1,000
    # outcomes writes the states of the batches touched since the last.
    finished = 0
    dirty: dict[int, bytearray] = {}

    def commit() -> None:
        db.execute("BEGIN")
        db.executemany("UPDATE batch SET states = ? WHERE no = ?", [(bytes(s), no) for no, s in dirty.items()])
        db.execute("UPDATE execution SET finished = ? WHERE id = 1", (finished,))
        db.execute("COMMIT")
        dirty.clear()

    for no in range((n + BATCH - 1) // BATCH):
        chunk = pickle.loads(db.execute("SELECT payload FROM batch WHERE no = ?", (no,)).fetchone()[0])
        states = dirty[no] = bytearray(len(chunk))
        for index, item in enumerate(chunk):
            noop(item)
            states[index] = 1
            finished += 1
            if finished % COMMIT_EVERY == 0:
                commit()
                states = dirty[no] = states
    if dirty:
        commit()


def pylo_threads(n: int) -> tuple[float, float]:
    from pylo import Pylo

    with tempfile.TemporaryDirectory() as directory:
        pylo = Pylo.local_multithread(directory, 2)
        with Span() as span:
            inputs = list(range(n))
            execution_id = pylo.start_from_scratch(inputs, noop)
        assert pylo.get_execution(execution_id).finished == n
        pylo.close()
    return span.times


def thread_pool(n: int) -> tuple[float, float]:
    with Span() as span, ThreadPoolExecutor(2) as pool:
        for _ in pool.map(noop, list(range(n))):
            pass
    return span.times


def joblib_threads(n: int) -> tuple[float, float]:
    import joblib  # type: ignore[import-untyped]

    with Span() as span:
        joblib.Parallel(n_jobs=2, prefer="threads")(joblib.delayed(noop)(item) for item in list(range(n)))
    return span.times


def mpire_threads(n: int) -> tuple[float, float]:
    import mpire  # type: ignore[import-not-found]

    with Span() as span, mpire.WorkerPool(n_jobs=2, start_method="threading") as pool:
        pool.map(noop, list(range(n)))
    return span.times


CONTENDERS: dict[str, Callable[[int], tuple[float, float]]] = {
    "floor": floor,
    "pylo": pylo_threads,
    "ThreadPoolExecutor.map": thread_pool,
    "joblib threads": joblib_threads,
    "mpire threading": mpire_threads,
}
OPTIONAL = {"joblib threads": "joblib", "mpire threading": "mpire"}


def in_subprocess(name: str, n: int) -> tuple[float, float]:
    wall, cpu = run_child(__file__, name, str(n))
    return float(wall), float(cpu)


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 inputs instead of 1,000,000")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    parser.add_argument("-n", type=int, default=None, help="number of inputs")
    parser.add_argument("--only", nargs="*", default=None, help="contenders to run (default: all installed)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # CPU time of the whole process (every thread) beside the wall time:
        # on a shared machine it says more than the wall clock.
        print(json.dumps(CONTENDERS[args.child[0]](int(args.child[1]))))
        return

    n = args.n or (100_000 if args.quick else 1_000_000)
    names = [
        name
        for name in (args.only or CONTENDERS)
        if name not in OPTIONAL or installed(OPTIONAL[name]) or print(f"({name}: {OPTIONAL[name]} not installed)")
    ]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{n:,} no-op inputs, 2 threads (the floor: one), best of {args.rounds} alternating rounds")
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    for _ in range(args.rounds):
        for name in names:
            seconds, cpu = in_subprocess(name, n)
            best[name] = min(best.get(name, seconds), seconds)
            best_cpu[name] = min(best_cpu.get(name, cpu), cpu)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    for name in names:
        line = f"  {name:<24} {best[name]:8.3f} s  {best[name] / n * 1e6:6.2f} us/input  (CPU {best_cpu[name]:.3f} s)"
        if "pylo" in best and name != "pylo":
            line += f"   pylo is {best[name] / best['pylo']:5.2f}x faster" if name != "floor" else ""
        print(line)
    if "floor" in best and "pylo" in best:
        print()
        print(f"  pylo / floor: {best['pylo'] / best['floor']:.2f}x wall (goal: <= 2.0x), ", end="")
        print(f"{best_cpu['pylo'] / best_cpu['floor']:.2f}x CPU time")


if __name__ == "__main__":
    main()
