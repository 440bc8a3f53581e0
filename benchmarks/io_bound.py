"""I/O-bound throughput: asyncio lanes beside thread lanes, in one run.

Run from the repository root:

    python benchmarks/io_bound.py

The job: 10,000 inputs, each waiting 10 ms (``await asyncio.sleep(0.01)`` on
asyncio, ``time.sleep(0.01)`` on threads), on the default SQLite store. With
500 tasks in flight the waiting alone takes 10,000 x 10 ms / 500 = 0.2 s;
the *ideal* of a run is that plus its fixed start-up (creating the
execution, starting the workers, the final flush), measured as a run of one
input. The goal for asyncio is a total within 1.3x its ideal.

Beside it: the same job in plain asyncio without durability (500 worker
coroutines on a queue, the floor of the loop's own cost; and ``gather``
under a ``Semaphore``, the common idiom), and on pylo's thread lanes with
500 and 64 threads. Each configuration runs in a fresh subprocess (on a
fresh store), after a warm-up run, so imports and caches do not leak between
them. Figures are printed, not asserted; on a busy machine the loop's timer
latency grows, plain asyncio's too (compare the first two rows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _child import run_child  # noqa: E402  (the benchmarks' directory is on the path of a script run from it)

INPUTS = 10_000
WAIT = 0.01
GOAL = 1.3


async def wait_async(item: int) -> None:
    await asyncio.sleep(WAIT)


def wait_sync(item: int) -> None:
    time.sleep(WAIT)


async def nothing_async(item: int) -> None:
    return None


def nothing_sync(item: int) -> None:
    return None


def measure_plain_asyncio(style: str, concurrency: int, inputs: int) -> dict[str, float]:
    """The same job without pylo (no durability), as a user might write it.

    ``gather``: one task per input under a semaphore, the common idiom.
    ``pool``: ``concurrency`` worker coroutines sharing a queue, the
    cheapest plain form and so the floor for the loop's own cost.
    """

    async def gathered(items: range) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(item: int) -> None:
            async with gate:
                await wait_async(item)

        await asyncio.gather(*(one(item) for item in items))

    async def pooled(items: range) -> None:
        todo: asyncio.Queue[int] = asyncio.Queue()
        for item in items:
            todo.put_nowait(item)

        async def worker() -> None:
            while not todo.empty():
                await wait_async(todo.get_nowait())

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    job = gathered if style == "gather" else pooled
    figures = {}
    for label, items in (("warm-up", range(1)), ("startup", range(1)), ("total", range(inputs))):
        started = time.perf_counter()
        asyncio.run(job(items))
        figures[label] = time.perf_counter() - started
    del figures["warm-up"]
    return figures


def measure(backend: str, workers: int, inputs: int) -> dict[str, float]:
    """Seconds for a one-input run (the start-up) and for the whole job."""
    if backend in ("gather", "pool"):
        return measure_plain_asyncio(backend, workers, inputs)
    from pylo import Pylo

    def make(directory: str) -> Pylo:
        if backend == "asyncio":
            return Pylo.local_asyncio(directory, workers, progress=False)
        return Pylo.local_multithread(directory, workers, progress=False)

    wait, nothing = (wait_async, nothing_async) if backend == "asyncio" else (wait_sync, nothing_sync)
    figures: dict[str, float] = {}
    for label, items, task in (("warm-up", [0], nothing), ("startup", [0], nothing), ("total", range(inputs), wait)):
        with tempfile.TemporaryDirectory() as directory:
            pylo = make(directory)
            started = time.perf_counter()
            execution_id = pylo.start_from_scratch(items, task)
            figures[label] = time.perf_counter() - started
            assert pylo.get_execution(execution_id).finished == len(items)
            pylo.close()
    del figures["warm-up"]
    return figures


def in_subprocess(backend: str, workers: int, inputs: int) -> dict[str, float]:
    return dict(run_child(__file__, backend, str(workers), str(inputs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("BACKEND", "WORKERS", "INPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backend, workers, inputs = args.child
        print(json.dumps(measure(backend, int(workers), int(inputs))))
        return

    print(f"{INPUTS:,} inputs, each waiting {WAIT * 1000:g} ms; default SQLite store; one run each")
    print(f"{'how':<32}{'start-up':>10}{'total':>9}{'ideal':>9}{'total/ideal':>13}{'vs pylo asyncio':>17}")
    rows = [("asyncio", 500), ("pool", 500), ("gather", 500), ("threads", 500), ("threads", 64)]
    reference = None
    for backend, workers in rows:
        figures = in_subprocess(backend, workers, INPUTS)
        ideal = INPUTS * WAIT / workers + figures["startup"]
        reference = reference or figures["total"]
        label = {
            "asyncio": f"pylo asyncio, {workers} lanes",
            "pool": f"plain asyncio, {workers} workers",
            "gather": f"asyncio.gather, Semaphore({workers})",
            "threads": f"pylo threads, {workers}",
        }[backend]
        print(
            f"{label:<32}{figures['startup']:>9.3f}s{figures['total']:>8.3f}s{ideal:>8.3f}s"
            f"{figures['total'] / ideal:>12.2f}x{figures['total'] / reference:>16.2f}x"
        )
    print(f"goal: asyncio total within {GOAL}x its ideal (waiting time / concurrency + start-up)")


if __name__ == "__main__":
    main()
