"""What durability costs a pipeline: pylo against a plain thread pool and Dask, in one run.

Run from the repository root (Dask is optional: ``pip install ".[dask]"``):

    python benchmarks/pipelines.py            # 10,000 nodes, best of 3
    python benchmarks/pipelines.py --quick    # 1,000 nodes, a smoke check

Two graphs of no-op task calls, so that only the machinery is measured:

* **fan-out**: 10,000 independent calls gathered by one ``in_parallel``;
* **chain**: 10,000 calls, each taking the result of the one before
  (``continue_with``), so nothing runs in parallel.

Each graph runs on

* pylo: ``Pylo.local_multithread`` with 4 workers on the default SQLite
  store, every node's outcome recorded durably (a fresh store each time);
* a plain ``ThreadPoolExecutor(4)`` running the same functions in dependency
  order (a node is submitted when the last of its upstream calls is done)
  and nothing recorded: what a user would write by hand;
* ``dask.delayed`` on Dask's threaded scheduler with 4 workers, nothing
  recorded.

Then a **batch node**: ``noop.map(range(N))`` as a one-node pipeline against
the same execution started directly with ``start_from_scratch``; the
difference is what the pipeline layer adds to an execution (each on a
store used once before, as a user's store is after its first job). Last, the run
store alone (SQLite and files): what creating a run, recording its nodes
done and reading them back cost per node.

Each figure is the best of ``--repeat`` runs (Dask's: of one, as it takes
tens of seconds per graph of 10,000 delayed calls); the load average is printed
too, since on a shared machine other processes take CPU from all of them.
Figures are to read, not assertions; docs/performance.md records them.
"""

from __future__ import annotations

import argparse
import os
import queue
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


def run_thread_pool(graph: list[tuple[int, list[int]]]) -> float:
    """Run ``noop`` for each node once its upstream calls are done; seconds taken.

    One scheduling loop submits a node when the last of its upstream calls
    has reported, as a hand-written dependency scheduler would.
    """
    start = time.perf_counter()
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
    return time.perf_counter() - start


def run_dask(graph: list[tuple[int, list[int]]]) -> float | None:
    try:
        import dask
    except ImportError:
        return None
    start = time.perf_counter()
    nodes: list[Any] = []
    call = dask.delayed(noop, pure=False)
    for argument, upstream in graph:
        nodes.append(call(nodes[upstream[0]]) if upstream else call(argument))
    used = {up for _, upstream in graph for up in upstream}
    sinks = [node for index, node in enumerate(nodes) if index not in used]
    dask.compute(*sinks, scheduler="threads", num_workers=WORKERS)
    return time.perf_counter() - start


def run_pylo(make: Callable[[], Pipeline]) -> float:
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        flow = make()
        with Pylo.local_multithread(Path(directory) / "store", WORKERS) as pylo:
            run_id = pylo.run_pipeline(flow)
            status = pylo.get_pipeline(run_id).status
        seconds = time.perf_counter() - start
    if str(status) != "completed":
        raise RuntimeError(f"the pylo run ended {status}")
    return seconds


def run_batch(count: int, *, as_pipeline: bool) -> float:
    with (
        tempfile.TemporaryDirectory() as directory,
        Pylo.local_multithread(Path(directory) / "store", WORKERS, store_results=True) as pylo,
    ):
        # Each store is used once first, as a user's store is after its first
        # job: the first pipeline in a store also creates the run tables, a
        # one-time cost that is no batch node's.
        if as_pipeline:
            pylo.run_pipeline(noop_task.send(0))
        else:
            pylo.start_from_scratch([0], noop)
        start = time.perf_counter()
        if as_pipeline:
            pylo.run_pipeline(noop_task.map(range(count)))
        else:
            pylo.start_from_scratch(range(count), noop)
        return time.perf_counter() - start


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


def best(repeat: int, measure: Callable[[], float | None]) -> float | None:
    times = [measure() for _ in range(repeat)]
    found = [t for t in times if t is not None]
    return min(found) if found else None


def per_node(seconds: float | None, count: int) -> str:
    if seconds is None:
        return "    (not installed)"
    return f"{seconds:8.3f} s  {seconds / count * 1e6:8.1f} µs/node"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs of the batch node")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 nodes and inputs, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.inputs, args.repeat = 1_000, 1_000, 2
    count = args.nodes
    print(f"command: python benchmarks/pipelines.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    print(f"{count:,} no-op nodes, {WORKERS} workers, best of {args.repeat} (Dask: 1 run)\n")
    # First, in a process whose heap the big graphs below have not grown yet.
    # Alternated and repeated more: the difference sought is small beside the noise of a shared machine.
    directs, batches = [], []
    for _ in range(max(args.repeat, 7)):
        directs.append(run_batch(args.inputs, as_pipeline=False))
        batches.append(run_batch(args.inputs, as_pipeline=True))
    direct, batch = min(directs), min(batches)
    print(f"batch node of {args.inputs:,} no-op inputs (best of {len(directs)}, alternated):")
    print(f"  start_from_scratch directly  {direct * 1e3:8.2f} ms")
    print(f"  as a one-node pipeline       {batch * 1e3:8.2f} ms")
    print(f"  added by the pipeline:       {(batch - direct) * 1e3:8.2f} ms   (goal <= 1 ms)\n")
    for name, graph, make in (
        ("fan-out", fan_out_graph(count), lambda: fan_out_pipeline(count)),
        ("chain", chain_graph(count), lambda: chain_pipeline(count)),
    ):
        pool = best(args.repeat, lambda graph=graph: run_thread_pool(graph))
        # Once: dask.delayed takes seconds per graph of this size.
        dask_time = best(1, lambda graph=graph: run_dask(graph))
        pylo_time = best(args.repeat, lambda make=make: run_pylo(make))
        assert pool is not None and pylo_time is not None
        print(f"{name}:")
        print(f"  ThreadPoolExecutor  {per_node(pool, count)}")
        print(f"  dask.delayed        {per_node(dask_time, count)}")
        print(f"  pylo (durable)      {per_node(pylo_time, count)}")
        print(f"  pylo / thread pool: {pylo_time / pool:.2f}x   (goal <= 4x)")
        if dask_time is not None:
            print(f"  pylo / dask:        {pylo_time / dask_time:.2f}x")
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
