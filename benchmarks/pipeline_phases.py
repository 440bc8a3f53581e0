"""Where a pipeline run's CPU time goes, phase by phase: the profile behind benchmarks/pipelines.py.

Run from the repository root:

    python benchmarks/pipeline_phases.py              # 10,000 nodes, best of 3
    python benchmarks/pipeline_phases.py --profile    # and the top functions by cProfile

For the fan-out and the chain of ``benchmarks/pipelines.py``, it runs each
graph on a fresh SQLite store and prints the CPU time per node of the run
(``run_pipeline``, every thread) and of its phases: building the graph and
its rows, ``create_run``, the coordinator (every thread while it runs),
and within it the flushes (``record_run``) and control-request reads, and
the garbage collector's passes wherever they fell. Phases are timed by
wrapping the functions named, so a phase's figure includes what it calls.
CPU time, not wall time: on a shared machine it moves far less.

``--profile`` adds a cProfile of one more run of each graph (the calling
thread: graph, store and coordinator; node threads are not profiled).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipelines

from pylo import Pylo
from pylo.pipeline import _api, _coordinator, _graph
from pylo.stores import sql_runs

#: Phase name -> CPU seconds, filled by the wrappers.
_SPENT: dict[str, float] = {}
_ORDER = (
    "build the graph",
    "its rows",
    "create_run",
    "coordinator (all threads)",
    "  of which flushes",
    "  of which control reads",
    "garbage collection",
)


def _timed(owner: Any, name: str, label: str, clock: Callable[[], float] = time.process_time) -> None:
    """Replace ``owner.name`` by a wrapper that adds its CPU time to ``_SPENT[label]``."""
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return function(*args, **kwargs)
        finally:
            _SPENT[label] = _SPENT.get(label, 0.0) + clock() - start

    setattr(owner, name, wrapper)


def _watch_gc() -> None:
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            _SPENT["garbage collection"] = _SPENT.get("garbage collection", 0.0) + time.process_time() - started[0]

    gc.callbacks.append(callback)


def run_once(flow: Any) -> float:
    """CPU seconds of one run of ``flow`` on a fresh store."""
    with tempfile.TemporaryDirectory() as directory, Pylo.local_multithread(Path(directory) / "s", 4) as pylo:
        start = time.process_time()
        pylo.run_pipeline(flow)
        return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print the top functions by cProfile")
    args = parser.parse_args()
    count = args.nodes
    print(f"command: python benchmarks/pipeline_phases.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    _timed(_graph, "build_graph", "build the graph")
    _timed(_api, "_fresh_rows", "its rows")
    _timed(sql_runs.SqlRunStore, "create_run", "create_run")
    _timed(_coordinator.RunCoordinator, "run", "coordinator (all threads)")
    _timed(sql_runs.SqlRunStore, "record_run", "  of which flushes", time.thread_time)
    _timed(sql_runs.SqlRunStore, "read_control", "  of which control reads", time.thread_time)
    _watch_gc()
    for name, make in (
        ("fan-out", lambda: pipelines.fan_out_pipeline(count)),
        ("chain", lambda: pipelines.chain_pipeline(count)),
    ):
        best: tuple[float, dict[str, float]] | None = None
        for _ in range(args.repeat):
            flow = make()
            _SPENT.clear()
            total = run_once(flow)
            if best is None or total < best[0]:
                best = (total, dict(_SPENT))
        assert best is not None
        total, spent = best
        print(f"\n{name}, {count:,} nodes, CPU µs per node (the best of {args.repeat} runs):")
        print(f"  {'run_pipeline, every thread':30} {total / count * 1e6:7.1f}")
        for label in _ORDER:
            print(f"  {label:30} {spent.get(label, 0.0) / count * 1e6:7.1f}")
        if args.profile:
            flow = make()
            profile = cProfile.Profile()
            profile.enable()
            run_once(flow)
            profile.disable()
            pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
