"""What durability costs a pipeline: pylo against a plain thread pool and Dask, in one run.

Run from the repository root (Dask is optional: ``pip install ".[dask]"``):

    python benchmarks/pipelines.py            # 10,000 nodes, best of 3
    python benchmarks/pipelines.py --quick    # 1,000 nodes, a smoke check
    python benchmarks/pipelines.py --no-dask  # without Dask's minute-long chain

Two graphs of no-op task calls, so that only the machinery is measured:

* **fan-out**: 10,000 independent calls gathered by one ``in_parallel``;
* **chain**: 10,000 calls, each taking the result of the one before
  (``continue_with``), so nothing runs in parallel.

Each graph runs on

* pylo: ``Pylo.local_multithread`` with 4 workers on the default SQLite
  store, every node's outcome recorded durably (a fresh store each time;
  opening it is timed, describing the pipeline is not, as building the
  baselines' graph is not; its cost is printed apart);
* a plain ``ThreadPoolExecutor(4)`` running the same functions in dependency
  order (a node is submitted when the last of its upstream calls is done)
  and nothing recorded: what a user would write by hand;
* ``dask.delayed`` on Dask's threaded scheduler with 4 workers, nothing
  recorded.

Wall-clock figures are the best of ``--repeat`` runs (Dask's: of one, as it
takes tens of seconds per graph of 10,000 delayed calls). The process's CPU
time over the same runs is printed too: on a shared machine other processes
take the CPU from all of them, which stretches wall time (thread hand-offs
most) far more than CPU time.

Then a **batch node**: ``noop.map(range(N))`` as a one-node pipeline against
the same execution started directly with ``start_from_scratch``, in
alternated pairs, each on a store used before by one execution and one
batch node (as a user's store is after its first jobs: each side's
one-time costs, such as the run tables, the first execution's optional
tables or a batch node's derived Pylo, are paid). The goal is about a
millisecond, far below the noise between two runs of the execution itself
(its last flush alone carries anything from a few to a thousand outcomes),
so the figure to read is measured around the execution, not across two of
them: the pipeline's wall time less that of the ``start_from_scratch`` call
its batch node makes (timed by wrapping ``Pylo.start_from_scratch`` in this
process; the wrapper's own cost, measured on the direct side the same way,
is taken off). That is everything the batch node adds: describing and
checking the graph, the run's rows, the coordinator, deriving the batch
Pylo, recording the node's end. The wall-time difference of each pair is
printed beside it, to show nothing else moved; its spread is the
execution's own noise.

Last, the run store alone (SQLite and files): what creating a run,
recording its nodes done and reading them back cost per node.

Figures are to read, not assertions; docs/performance.md records them.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pylo import Pylo  # noqa: E402 - needs the sys.path entry above
from pylo.pipeline import Pipeline, in_parallel, task  # noqa: E402

WORKERS = 4


def noop(value: Any = None) -> Any:
    return value


noop_task = task(noop)


# -- the graphs, as (function, upstream indices) for the baselines --------------------


def fan_out_graph(count: int) -> list[tuple[int, list[int]]]:
    return [(i, []) for i in range(count)]


def chain_graph(count: int) -> list[tuple[int, list[int]]]:
    return [(i, [i - 1] if i else []) for i in range(count)]


def fan_out_pipeline(count: int) -> Pipeline:
    return in_parallel([noop_task.send(i) for i in range(count)])


def chain_pipeline(count: int) -> Pipeline:
    flow = noop_task.send(0)
    for _ in range(count - 1):
        flow = flow.continue_with(noop_task)
    return flow


# -- the runners ----------------------------------------------------------------------


def run_thread_pool(graph: list[tuple[int, list[int]]]) -> tuple[float, float]:
    """Run ``noop`` for each node once its upstream calls are done; wall and CPU seconds taken.

    One scheduling loop submits a node when the last of its upstream calls
    has reported, as a hand-written dependency scheduler would.
    """
    start, cpu = time.perf_counter(), time.process_time()
    dependents: list[list[int]] = [[] for _ in graph]
    waiting = [len(upstream) for _, upstream in graph]
    for index, (_, upstream) in enumerate(graph):
        for up in upstream:
            dependents[up].append(index)
    results: list[Any] = [None] * len(graph)
    finished: queue.SimpleQueue[tuple[int, Future[Any]]] = queue.SimpleQueue()
    with ThreadPoolExecutor(WORKERS) as pool:

        def submit(index: int) -> None:
            argument, upstream = graph[index]
            value = results[upstream[0]] if upstream else argument
            future = pool.submit(noop, value)
            future.add_done_callback(lambda future, index=index: finished.put((index, future)))

        for index, count in enumerate(waiting):
            if count == 0:
                submit(index)
        for _ in range(len(graph)):
            index, future = finished.get(timeout=600)
            results[index] = future.result()
            for dependent in dependents[index]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    submit(dependent)
    return time.perf_counter() - start, time.process_time() - cpu


def run_dask(graph: list[tuple[int, list[int]]]) -> tuple[float, float] | None:
    try:
        import dask
    except ImportError:
        return None
    start, cpu = time.perf_counter(), time.process_time()
    nodes: list[Any] = []
    call = dask.delayed(noop, pure=False)
    for argument, upstream in graph:
        nodes.append(call(nodes[upstream[0]]) if upstream else call(argument))
    used = {up for _, upstream in graph for up in upstream}
    sinks = [node for index, node in enumerate(nodes) if index not in used]
    dask.compute(*sinks, scheduler="threads", num_workers=WORKERS)
    return time.perf_counter() - start, time.process_time() - cpu


def run_pylo(make: Callable[[], Pipeline]) -> tuple[float, float]:
    """Wall and CPU seconds to open a fresh store and run the pipeline ``make`` describes.

    The pipeline is described before the clocks start, and its status read back after they stop.
    """
    flow = make()
    with tempfile.TemporaryDirectory() as directory:
        start, cpu = time.perf_counter(), time.process_time()
        with Pylo.local_multithread(Path(directory) / "store", WORKERS) as pylo:
            run_id = pylo.run_pipeline(flow)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            status = pylo.get_pipeline(run_id).status
    if str(status) != "completed":
        raise RuntimeError(f"the pylo run ended {status}")
    return seconds, cpu


def describe(make: Callable[[], Pipeline]) -> float:
    """Seconds to describe the pipeline (``task.send`` and friends), which :func:`run_pylo` leaves out."""
    start = time.perf_counter()
    make()
    return time.perf_counter() - start


#: Seconds spent inside ``Pylo.start_from_scratch`` calls (wall, and CPU of the calling thread), by
#: :func:`timing_executions`.
_INSIDE: list[tuple[float, float]] = []


def timing_executions() -> None:
    """Time every ``Pylo.start_from_scratch`` call from now on (a batch node's included) into ``_INSIDE``."""
    inner = Pylo.start_from_scratch

    def timed(self: Pylo, *args: Any, **kwargs: Any) -> str:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return inner(self, *args, **kwargs)
        finally:
            _INSIDE.append((time.perf_counter() - start, time.thread_time() - cpu))

    Pylo.start_from_scratch = timed  # type: ignore[method-assign]


def run_batch(count: int, *, as_pipeline: bool) -> tuple[float, float, float]:
    """Seconds of wall time, of it those outside the ``start_from_scratch`` call, and their CPU time.

    The CPU time is the calling thread's (where a lone batch node's run and
    its coordinator live): it leaves out the time other processes took the
    CPU, which on a shared machine moves the wall-clock figure by as much
    as the figure itself.
    """
    with (
        tempfile.TemporaryDirectory() as directory,
        Pylo.local_multithread(Path(directory) / "store", WORKERS, store_results=True) as pylo,
    ):
        pylo.start_from_scratch([0], noop)
        pylo.run_pipeline(noop_task.map([0]))
        flow = noop_task.map(range(count))  # described before the clock starts, as the graphs below are
        _INSIDE.clear()
        start, cpu = time.perf_counter(), time.thread_time()
        if as_pipeline:
            run_id = pylo.run_pipeline(flow)
        else:
            pylo.start_from_scratch(range(count), noop)
        wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
        ((inside, inside_cpu),) = _INSIDE
        if as_pipeline:
            assert pylo.get_pipeline(run_id).status.value == "completed"
        return wall, wall - inside, cpu - inside_cpu


def store_costs(count: int, kind: str) -> tuple[float, float, float]:
    """Seconds per node to create a run, record its nodes done (1,000 per update) and read them back."""
    from pylo.stores.files import FileStore
    from pylo.stores.runs import NodeRow, RunRow, RunUpdate
    from pylo.stores.sql import SQLStore

    with tempfile.TemporaryDirectory() as directory:
        store = SQLStore.sqlite(Path(directory) / "pylo.sqlite") if kind == "sqlite" else FileStore(directory)
        with store:
            runs = store.runs()
            runs.create_run(RunRow("warm", None, "warm", "running", 0.0, 0.0, None, "pickle"), [])
            nodes = [
                NodeRow(f"noop-{i:08x}", i, "bench:noop", "noop", upstream=(f"noop-{i - 1:08x}",) if i else ())
                for i in range(count)
            ]
            start = time.perf_counter()
            runs.create_run(RunRow("run", None, "bench", "running", 0.0, 0.0, None, "pickle"), nodes)
            created = time.perf_counter()
            for first in range(0, count, 1000):
                done = [
                    NodeRow(node.key, node.seq, node.task_name, node.display_name, state="done", attempts=1,
                            started_at=1.0, ended_at=2.0, result=b"\x80\x04N.")
                    for node in nodes[first : first + 1000]
                ]  # fmt: skip
                runs.record_run("run", RunUpdate(nodes=done))
            recorded = time.perf_counter()
            runs.read_nodes("run")
            read = time.perf_counter()
    return (created - start) / count, (recorded - created) / count, (read - recorded) / count


# -- reporting --------------------------------------------------------------------------


def best(repeat: int, measure: Callable[[], tuple[float, float] | None]) -> tuple[float | None, float | None]:
    """The best wall time of ``repeat`` runs, and the least CPU time one took (over the same span)."""
    found = [times for times in (measure() for _ in range(repeat)) if times is not None]
    if not found:
        return None, None
    return min(wall for wall, _ in found), min(cpu for _, cpu in found)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """The median and the quartiles either side of it."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return median, low, high


def per_node(seconds: float | None, count: int) -> str:
    if seconds is None:
        return "    (not installed)"
    return f"{seconds:8.3f} s  {seconds / count * 1e6:8.1f} µs/node"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs of the batch node")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=15, help="alternated runs of the batch node and its execution")
    parser.add_argument("--quick", action="store_true", help="1,000 nodes and inputs, 2 repeats, 3 pairs")
    parser.add_argument("--no-dask", action="store_true", help="leave Dask out (its chain alone takes a minute)")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.inputs, args.repeat, args.pairs = 1_000, 1_000, 2, 3
    count = args.nodes
    print(f"command: python benchmarks/pipelines.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    print(f"{count:,} no-op nodes, {WORKERS} workers, best of {args.repeat} (Dask: 1 run)\n")
    # First, in a process whose heap the big graphs below have not grown yet.
    # Alternated and repeated more: the difference sought is small beside the noise of a shared machine.
    timing_executions()
    pairs = []
    for _ in range(args.pairs):
        pairs.append((run_batch(args.inputs, as_pipeline=False), run_batch(args.inputs, as_pipeline=True)))
    print(f"batch node of {args.inputs:,} no-op inputs ({len(pairs)} alternated pairs; medians, quartiles):")
    direct_wall = statistics.median(direct[0] for direct, _ in pairs) * 1e3
    pipeline_wall = statistics.median(pipeline[0] for _, pipeline in pairs) * 1e3
    print(f"  start_from_scratch directly  {direct_wall:7.1f} ms")
    print(f"  as a one-node pipeline       {pipeline_wall:7.1f} ms")
    for label, i, goal in (("added around the execution:", 1, "  goal <= 1 ms"), ("  of which CPU time:", 2, "")):
        median, low, high = quartiles([(pipeline[i] - direct[i]) * 1e3 for direct, pipeline in pairs])
        print(f"  {label:28}{median:5.2f} ms  ({low:.2f} .. {high:.2f}) {goal}")
    median, low, high = quartiles([(pipeline[0] - direct[0]) * 1e3 for direct, pipeline in pairs])
    print(f"  wall difference per pair:   {median:5.2f} ms  ({low:.2f} .. {high:.2f})   (the execution's own noise)\n")
    for name, graph, make in (
        ("fan-out", fan_out_graph(count), lambda: fan_out_pipeline(count)),
        ("chain", chain_graph(count), lambda: chain_pipeline(count)),
    ):
        pool, pool_cpu = best(args.repeat, lambda graph=graph: run_thread_pool(graph))
        # Once: dask.delayed takes seconds per graph of this size.
        dask_time, _ = (None, None) if args.no_dask else best(1, lambda graph=graph: run_dask(graph))
        pylo_time, pylo_cpu = best(args.repeat, lambda make=make: run_pylo(make))
        described = min(describe(make) for _ in range(args.repeat))
        assert pool is not None and pylo_time is not None and pool_cpu and pylo_cpu is not None
        print(f"{name}:")
        print(f"  ThreadPoolExecutor  {per_node(pool, count)}   CPU {pool_cpu / count * 1e6:6.1f} µs/node")
        print(f"  dask.delayed        {'    (left out)' if args.no_dask else per_node(dask_time, count)}")
        print(f"  pylo (durable)      {per_node(pylo_time, count)}   CPU {pylo_cpu / count * 1e6:6.1f} µs/node")
        print(f"  pylo / thread pool: {pylo_time / pool:.2f}x   (goal <= 4x); in CPU time {pylo_cpu / pool_cpu:.2f}x")
        if dask_time is not None:
            print(f"  pylo / dask:        {pylo_time / dask_time:.2f}x")
        print(f"  (describing the pipeline, not timed above: {described / count * 1e6:.1f} µs/node)")
        print()
    print(f"run store alone, {count:,} nodes (best of {args.repeat}):")
    for kind in ("sqlite", "files"):
        costs = [store_costs(count, kind) for _ in range(args.repeat)]
        create, record, read = (min(cost[i] for cost in costs) * 1e6 for i in range(3))
        print(f"  {kind:<6}  create_run {create:5.1f} µs/node, record_run {record:5.1f} µs/node, "
              f"read_nodes {read:5.1f} µs/node")  # fmt: skip
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
