"""What a failed input costs beyond a finished one, with its full traceback stored.

Run from the repository root:

    python benchmarks/failures.py               # 200,000 inputs, 10% failing, best of 3
    python benchmarks/failures.py --rounds 5 -n 100000

Two runs of the same inputs on the default SQLite store, 2 threads,
``store_exceptions=True``: one where every input finishes, one where every
tenth raises (from three frames deep, so each traceback has several frames
to describe). The extra time of the second, divided by its failures, is the
price of a failed input: describing it (type, message, the traceback's file,
line, function and source line of every frame, the pickled exception) and
storing it. Each run is a fresh subprocess, alternating, best of each; CPU
time (all threads of the process, over the same span as the wall time) is
printed beside wall time because on a shared machine it moves less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _child import run_child  # noqa: E402  (the benchmarks' directory is on the path of a script run from it)

EVERY = 10  # one input in EVERY fails


def _check(item: int) -> None:
    if item % EVERY == 0:
        raise ValueError(f"input {item} is a multiple of {EVERY}")


def _validate(item: int) -> None:
    _check(item)


def task(item: int) -> None:
    _validate(item)


def run(n: int, failing: bool) -> tuple[float, float]:
    from pylo import Pylo

    with tempfile.TemporaryDirectory() as directory:
        pylo = Pylo.local_multithread(directory, 2, store_exceptions=True, max_worker_failures=n)
        inputs = [item for item in range(n)] if failing else [item * EVERY + 1 for item in range(n)]
        cpu = time.process_time()
        started = time.perf_counter()
        execution_id = pylo.start_from_scratch(inputs, task)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        record = pylo.get_execution(execution_id)
        assert record.failed == (n + EVERY - 1) // EVERY if failing else record.failed == 0, record
        if failing:
            first = pylo.get_failures(execution_id)[0]
            text = first.traceback or ""
            assert all(name in text for name in ("in task", "in _validate", "in _check", "raise ValueError")), text
        pylo.close()
    return wall, cpu


def in_subprocess(n: int, failing: bool) -> tuple[float, float]:
    wall, cpu = run_child(__file__, str(n), str(int(failing)))
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200_000, help="number of inputs")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(int(args.child[0]), bool(int(args.child[1])))))
        return

    n = args.n
    failures = (n + EVERY - 1) // EVERY
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{n:,} inputs, 2 threads, store_exceptions=True; best of {args.rounds} alternating rounds")
    best = {False: (float("inf"), float("inf")), True: (float("inf"), float("inf"))}
    for _ in range(args.rounds):
        for failing in (False, True):
            wall, cpu = in_subprocess(n, failing)
            best[failing] = (min(best[failing][0], wall), min(best[failing][1], cpu))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print()
    (ok_wall, ok_cpu), (bad_wall, bad_cpu) = best[False], best[True]
    print(f"  every input finishes     {ok_wall:7.3f} s   (CPU {ok_cpu:.3f} s)")
    print(f"  {failures:,} of them fail   {bad_wall:7.3f} s   (CPU {bad_cpu:.3f} s)")
    print(f"  ratio                    {bad_wall / ok_wall:7.2f}x  (CPU {bad_cpu / ok_cpu:.2f}x)")
    print()
    extra_wall = (bad_wall - ok_wall) / failures * 1e6
    extra_cpu = (bad_cpu - ok_cpu) / failures * 1e6
    print(f"  extra per failed input: {extra_wall:.1f} us wall, {extra_cpu:.1f} us CPU (goal: <= 50 us)")


if __name__ == "__main__":
    main()
