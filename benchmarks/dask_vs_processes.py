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
  snapshot, to show what pylo's bookkeeping costs on top of Dask itself.
  Each size runs once first, and the fastest (tuned batches, as a careful
  user would pick) is the one compared.

Then each variant runs ``--repeat`` times (default 2), in turns whose order
reverses every round (so drift in the machine's load favours none), and its
best time is printed with the ideal time (serial work / 2 workers), the
ratios, and the CPU time this process used during its runs (the
coordinator, the client, and on a ``LocalCluster`` the scheduler: every
chunk's cost is paid there, and other programs on the machine stretch it
less than wall time). The load average is printed too. Figures are to
read, not assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def own_cpu() -> float:
    """CPU seconds this process has used so far (every thread; not the worker processes)."""
    times = os.times()
    return times.user + times.system


def timed_run(make_pylo: Callable[[str], Any], task: partial[int], n: int) -> tuple[float, float]:
    """Seconds one execution of ``task`` over ``n`` inputs takes on a fresh store, and this process's CPU seconds."""
    with tempfile.TemporaryDirectory() as directory:
        pylo = make_pylo(directory)
        cpu = own_cpu()
        started = time.perf_counter()
        execution_id = pylo.start_from_scratch(range(n), task)
        elapsed = time.perf_counter() - started
        cpu = own_cpu() - cpu
        assert pylo.get_execution(execution_id).finished == n
        pylo.close()
    return elapsed, cpu


def run_raw_dask(client: object, loops: int, n: int, size: int) -> tuple[float, float]:
    chunks = [list(range(start, min(n, start + size))) for start in range(0, n, size)]
    cpu = own_cpu()
    started = time.perf_counter()
    futures = client.map(partial(work_chunk, loops), chunks, pure=False)  # type: ignore[attr-defined]
    results = client.gather(futures)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    cpu = own_cpu() - cpu
    assert sum(len(chunk) for chunk in results) == n
    return elapsed, cpu


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
    cpu_used: dict[str, list[float]] = {"processes": [], "dask": [], "raw": []}
    raw_by_size: dict[int, float] = {}
    from pylo import Pylo

    def on_processes(directory: str) -> Pylo:
        return Pylo.local_multiprocess(directory, WORKERS, progress=False)

    def on_dask(directory: str) -> Pylo:
        return Pylo.dask(client, directory, WORKERS, progress=False)

    runs: dict[str, Callable[[], tuple[float, float]]] = {
        "processes": lambda: timed_run(on_processes, task, n),
        "dask": lambda: timed_run(on_dask, task, n),
    }
    try:
        timed_run(on_dask, task, min(n, 500))  # warm the workers' imports, as a running cluster would be
        # Tuning: each chunk size once; the fastest is plain Dask's contender.
        for size in RAW_CHUNKS:
            raw_by_size[size] = run_raw_dask(client, loops, n, size)[0]
        best_size = min(raw_by_size, key=raw_by_size.__getitem__)
        runs["raw"] = lambda: run_raw_dask(client, loops, n, best_size)
        # Alternated, the order reversed every round, and repeated: the best
        # of each is kept, so a burst of load from elsewhere on the machine
        # does not decide the ratio, and each contender gets as many tries.
        for round_number in range(repeat):
            order = list(runs) if round_number % 2 == 0 else list(reversed(runs))
            for name in order:
                seconds, cpu = runs[name]()
                timings[name].append(seconds)
                cpu_used[name].append(cpu)
    finally:
        client.close()
        cluster.close()
    processes, dask, raw = (min(timings[name]) for name in ("processes", "dask", "raw"))

    rows = [
        ("Pylo.local_multiprocess (2 processes)", "processes"),
        ("Pylo.dask (LocalCluster, 2 processes)", "dask"),
        (f"plain Dask client.map, chunks of {best_size}", "raw"),
    ]
    print()
    print(f"{'run':<44}{'best s':>8}{'inputs/s':>10}{'vs ideal':>10}   every run (s; this process's CPU s)")
    for name, key in rows:
        seconds = min(timings[key])
        every = ", ".join(f"{t:.2f} ({c:.2f})" for t, c in zip(timings[key], cpu_used[key], strict=True))
        print(f"{name:<44}{seconds:>8.2f}{n / seconds:>10,.0f}{seconds / ideal:>9.2f}x   {every}")
    tuning = ", ".join(f"{size}: {t:.2f} s" for size, t in raw_by_size.items())
    print(f"plain Dask tuning, one run per chunk size: {tuning}")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print()
    print(f"ratio Pylo.dask / Pylo.local_multiprocess: {dask / processes:.2f}")
    print(f"ratio Pylo.dask / plain Dask:              {dask / raw:.2f} (best times), ", end="")
    print(f"{statistics.median(timings['dask']) / statistics.median(timings['raw']):.2f} (median times)")
    cpu_ratio = min(cpu_used["dask"]) / min(cpu_used["raw"])
    print(f"this process's CPU, Pylo.dask / plain Dask: {cpu_ratio:.2f} (least of each)")


if __name__ == "__main__":
    main()
