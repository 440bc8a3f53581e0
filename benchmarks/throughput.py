"""Throughput, scaling, memory and resume latency of pylo's core, in one run.

Run from the repository root:

    python benchmarks/throughput.py            # the full set (a few minutes)
    python benchmarks/throughput.py --quick    # smaller N, for a smoke check

Every figure is measured in this run, side by side with the alternative a
user would reach for (``concurrent.futures.ThreadPoolExecutor.map``), and
printed with its ratio. Each pylo measurement runs in a fresh subprocess on a
fresh default (SQLite) store, so peak RSS and timings do not leak between
them. Goals (2-core machine) are printed beside the figures; they are goals
to read, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _child import run_child  # noqa: E402  (the benchmarks' directory is on the path of a script run from it)


def noop(item: object) -> None:
    return None


# -- measurements, each run in its own process --------------------------------


def measure_run(n: int, generator: bool) -> dict[str, float]:
    from pylo import Pylo

    with tempfile.TemporaryDirectory() as directory:
        pylo = Pylo.local_multithread(directory, 2)
        cpu = time.process_time()
        started = time.perf_counter()
        inputs = (i for i in range(n)) if generator else list(range(n))
        execution_id = pylo.start_from_scratch(inputs, noop)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        record = pylo.get_execution(execution_id)
        assert record.finished == n, record
        pylo.close()
    return {"seconds": elapsed, "cpu": cpu, "peak_rss_mb": peak_rss_kib() / 1024}


def peak_rss_kib() -> int:
    """This process's own peak RSS.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` survives fork+exec on Linux, so a
    child would report its parent's peak (here, the ThreadPoolExecutor
    baseline's) if that was higher. ``VmHWM`` belongs to this process's own
    address space; getrusage is the fallback elsewhere.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_resume(n: int, failures: int) -> dict[str, float]:
    from pylo import Pylo

    step = n // failures

    def fail_some(item: int) -> None:
        if item % step == 0:
            raise ValueError(item)

    with tempfile.TemporaryDirectory() as directory:
        pylo = Pylo.local_multithread(directory, 2)
        past_id = pylo.start_from_scratch(range(n), fail_some)
        assert pylo.get_execution(past_id).failed == failures
        first_task: list[float] = []

        def mark(item: int) -> None:
            if not first_task:
                first_task.append(time.perf_counter())

        started = time.perf_counter()
        new_id = pylo.start_from_past_execution(past_id, mark)
        total = time.perf_counter() - started
        assert pylo.get_execution(new_id).finished == n
        pylo.close()
    return {"to_first_task": first_task[0] - started, "seconds": total}


def in_subprocess(kind: str, **kwargs: object) -> dict[str, float]:
    return dict(run_child(__file__, kind, json.dumps(kwargs)))


def thread_pool_map(n: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for _ in pool.map(noop, range(n)):
            pass
    return time.perf_counter() - started


# -- report -------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke check")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, kwargs = args.child[0], json.loads(args.child[1])
        result = measure_run(**kwargs) if kind == "run" else measure_resume(**kwargs)
        print(json.dumps(result))
        return

    scale = 10 if args.quick else 1
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, no-op task, 2 workers, default SQLite store")
    print(f"load average {os.getloadavg()[0]:.2f}")
    print()

    n = 200_000 // scale
    baseline = thread_pool_map(n)
    pylo_run = in_subprocess("run", n=n, generator=False)["seconds"]
    print(f"[1] {n:,} inputs: pylo vs ThreadPoolExecutor.map (goal: pylo >= 5x faster, while durable)")
    print(f"    ThreadPoolExecutor.map  {baseline:8.3f} s  {n / baseline:>12,.0f} inputs/s")
    print(f"    pylo                    {pylo_run:8.3f} s  {n / pylo_run:>12,.0f} inputs/s")
    print(f"    ratio                   {baseline / pylo_run:8.1f}x faster")
    print()

    small, large = 100_000 // scale, 1_000_000 // scale
    small_run = in_subprocess("run", n=small, generator=False)["seconds"]
    large_run = in_subprocess("run", n=large, generator=False)["seconds"]
    print("[2] end to end (record inputs, run, final flush) (goal: 1,000,000 in <= 5 s, linear)")
    print(f"    {small:>9,} inputs  {small_run:8.3f} s  {small_run / small * 1e6:6.2f} us/input")
    print(f"    {large:>9,} inputs  {large_run:8.3f} s  {large_run / large * 1e6:6.2f} us/input")
    print(f"    per-input cost ratio (large / small): {(large_run / large) / (small_run / small):.2f}")
    print()

    huge = 5_000_000 // scale
    memory = in_subprocess("run", n=huge, generator=True)
    print(f"[3] {huge:,} inputs from a generator (goal: peak RSS <= 250 MB)")
    print(f"    {memory['seconds']:8.3f} s  peak RSS {memory['peak_rss_mb']:.0f} MB")
    print()

    failures = 1000 // scale
    resume = in_subprocess("resume", n=large, failures=failures)
    print(f"[4] resume of a {large:,}-input execution with {failures:,} failures (goal: <= 2 s to first task)")
    print(f"    first task after {resume['to_first_task']:.3f} s; whole resume {resume['seconds']:.3f} s")
    print()

    # Alternated in fresh subprocesses, best of three each: one pair of runs
    # on a shared machine says little.
    best: dict[bool, tuple[float, float]] = {}
    for _ in range(3):
        for generator in (False, True):
            run = in_subprocess("run", n=large, generator=generator)
            wall, cpu = best.get(generator, (run["seconds"], run["cpu"]))
            best[generator] = (min(wall, run["seconds"]), min(cpu, run["cpu"]))
    print(f"[5] {large:,} inputs from a generator vs from a list, best of 3 alternating (goal: <= 1.1x)")
    for generator, label in ((False, "list"), (True, "generator")):
        print(f"    {label:<10} {best[generator][0]:8.3f} s  (CPU {best[generator][1]:.3f} s)")
    ratio_wall = best[True][0] / best[False][0]
    ratio_cpu = best[True][1] / best[False][1]
    print(f"    generator / list: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x CPU")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
