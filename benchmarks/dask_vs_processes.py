"""Dask workers against local worker processes, on a CPU-bound job, in one run.

Run from the repository root (needs ``pip install ".[dask]"``):

    python benchmarks/dask_vs_processes.py            # 20,000 inputs of ~1 ms
    python benchmarks/dask_vs_processes.py --quick    # 2,000 inputs, a smoke check

The job: 20,000 inputs, each about 1 ms of pure-Python work (calibrated on
this machine first). It runs on

* ``Pylo.local_multiprocess`` with 2 worker processes (process start-up is
  part of every run, as it is for a user);
* ``Pylo.dask`` on a ``LocalCluster`` of 2 worker processes, one thread each
  (the cluster is started beforehand, as users keep a cluster up; its
  start-up time is printed apart);
* plain Dask, ``client.map`` over chunks of 20, 50 and 200 inputs with no
  snapshot, the best chunk size kept, to show what pylo's bookkeeping costs
  on top of Dask itself.

Each variant runs ``--repeat`` times (default 2), alternated, and its best
time is printed with the ideal time (serial work / 2 workers) and the ratio
dask / processes. The load average is printed too: on a shared machine other
processes take CPU from all three. Figures are to read, not assertions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKERS = 2
#: Chunk sizes tried for plain Dask; its best is kept (tuned batches, as a careful user would).
RAW_CHUNKS = (20, 50, 200)


def work(loops: int, item: int) -> int:
    """About a millisecond of pure-Python arithmetic (``loops`` is calibrated)."""
    total = item
    for i in range(loops):
        total = (total * 31 + i) % 1_000_003
    return total


def work_chunk(loops: int, items: list[int]) -> list[int]:
    return [work(loops, item) for item in items]


def calibrate(target_seconds: float = 0.001) -> tuple[int, float]:
    """Loops that take ``target_seconds`` here, and the measured seconds per call.

    Each figure is the best of several tries: on a busy machine a try that
    was preempted says nothing about the work itself.
    """

    def per_call(loops: int, calls: int) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for item in range(calls):
                work(loops, item)
            best = min(best, (time.perf_counter() - started) / calls)
        return best

    loops = max(1, int(10_000 * target_seconds / per_call(10_000, 10)))
    return loops, per_call(loops, 40)


def timed_run(make_pylo: Callable[[str], Any], task: partial[int], n: int) -> float:
    """Seconds one execution of ``task`` over ``n`` inputs takes, on a fresh store."""
    with tempfile.TemporaryDirectory() as directory:
        pylo = make_pylo(directory)
        started = time.perf_counter()
        execution_id = pylo.start_from_scratch(range(n), task)
        elapsed = time.perf_counter() - started
        assert pylo.get_execution(execution_id).finished == n
        pylo.close()
    return elapsed


def run_raw_dask(client: object, loops: int, n: int, size: int) -> float:
    chunks = [list(range(start, min(n, start + size))) for start in range(0, n, size)]
    started = time.perf_counter()
    futures = client.map(partial(work_chunk, loops), chunks, pure=False)  # type: ignore[attr-defined]
    results = client.gather(futures)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    assert sum(len(chunk) for chunk in results) == n
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 inputs instead of 20,000")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each variant; the best counts (default 2)")
    args = parser.parse_args()
    n = 2_000 if args.quick else 20_000
    repeat = max(1, args.repeat)

    from distributed import Client, LocalCluster

    loops, per_call = calibrate()
    task = partial(work, loops)
    ideal = n * per_call / WORKERS
    print(f"job: {n:,} inputs of {per_call * 1000:.2f} ms of pure-Python work ({loops:,} loops); {WORKERS} workers")
    print(f"ideal (serial work / {WORKERS}): {ideal:.2f} s; best of {repeat} runs each")
    print("load average before: {:.2f} {:.2f} {:.2f} on {} CPUs".format(*os.getloadavg(), os.cpu_count()))

    started = time.perf_counter()
    cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    client.wait_for_workers(WORKERS, timeout=60)
    print(f"LocalCluster start-up (not counted below): {time.perf_counter() - started:.2f} s")
    timings: dict[str, list[float]] = {"processes": [], "dask": [], "raw": []}
    raw_by_size: dict[int, float] = {}
    from pylo import Pylo

    def on_processes(directory: str) -> Pylo:
        return Pylo.local_multiprocess(directory, WORKERS, progress=False)

    def on_dask(directory: str) -> Pylo:
        return Pylo.dask(client, directory, WORKERS, progress=False)

    try:
        timed_run(on_dask, task, min(n, 500))  # warm the workers' imports, as a running cluster would be
        # Alternated and repeated: the best of each is kept, so a burst of
        # load from elsewhere on the machine does not decide the ratio.
        for _ in range(repeat):
            timings["processes"].append(timed_run(on_processes, task, n))
            timings["dask"].append(timed_run(on_dask, task, n))
            for size in RAW_CHUNKS:
                seconds = run_raw_dask(client, loops, n, size)
                raw_by_size[size] = min(raw_by_size.get(size, seconds), seconds)
                timings["raw"].append(seconds)
    finally:
        client.close()
        cluster.close()
    processes, dask, raw = (min(timings[name]) for name in ("processes", "dask", "raw"))

    rows = [
        ("Pylo.local_multiprocess (2 processes)", "processes"),
        ("Pylo.dask (LocalCluster, 2 processes)", "dask"),
        (f"plain Dask client.map, best chunk of {RAW_CHUNKS}", "raw"),
    ]
    print()
    print(f"{'run':<44}{'best s':>8}{'inputs/s':>10}{'vs ideal':>10}   every run (s)")
    for name, key in rows:
        seconds = min(timings[key])
        every = ", ".join(f"{t:.2f}" for t in timings[key])
        print(f"{name:<44}{seconds:>8.2f}{n / seconds:>10,.0f}{seconds / ideal:>9.2f}x   {every}")
    print("plain Dask by chunk size: " + ", ".join(f"{size}: {seconds:.2f} s" for size, seconds in raw_by_size.items()))
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print()
    print(f"ratio Pylo.dask / Pylo.local_multiprocess: {dask / processes:.2f}")
    print(f"ratio Pylo.dask / plain Dask:              {dask / raw:.2f}")


if __name__ == "__main__":
    main()
