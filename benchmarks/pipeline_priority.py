"""Priority from runtime statistics: the same pipeline, first without statistics, then with them.

Run from the repository root:

    python benchmarks/pipeline_priority.py            # steps of 0.1 s
    python benchmarks/pipeline_priority.py --step 0.02

The pipeline has eight short independent jobs declared first, then a chain
of eight steps, every task sleeping ``--step`` seconds, on two nodes at a
time (``max_parallel=2``). The first run has no statistics: nodes start in
declaration order, so the chain starts only once the short jobs are done
(about 4 + 8 steps). The second run reads the first's durations: the chain's
head has the longest expected remaining path and starts at once, the short
jobs fill the other slot, and the run takes about 8 steps. The ratio of the
two is printed; it is about 1.5 whatever the step. Both runs are in one
store, so the second is what a nightly pipeline sees from its second night on.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from pylo import Pylo
from pylo.pipeline import in_parallel, task

STEP = [0.1]


@task
def job(name: str, *upstream: Any) -> str:
    time.sleep(STEP[0])
    return name


def pipeline(steps: int = 8, jobs: int = 8) -> Any:
    short = in_parallel([job.send(f"short-{n}").set(task_id=f"short-{n}") for n in range(jobs)])
    chain = job.send("chain-0").set(task_id="chain-0")
    for n in range(1, steps):
        chain = job.send(f"chain-{n}", chain).set(task_id=f"chain-{n}")
    return [short, chain]


def timed(pylo: Pylo, flow: Any) -> float:
    started = time.perf_counter()
    run_id = pylo.run_pipeline(flow, max_parallel=2)
    elapsed = time.perf_counter() - started
    assert pylo.get_pipeline(run_id).status.value == "completed"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=float, default=0.1, help="seconds each task sleeps (default 0.1)")
    args = parser.parse_args()
    STEP[0] = args.step
    with tempfile.TemporaryDirectory() as store, Pylo.local_multithread(store, 2) as pylo:
        pylo.run_pipeline(job.send("warm-up").set(task_id="warm-up"))  # the store's tables, the threads
        first = timed(pylo, pipeline())
        second = timed(pylo, pipeline())
    print(f"step {args.step:.3f} s, 8 short jobs + a chain of 8, 2 at a time")
    print(f"without statistics (declaration order): {first:.2f} s")
    print(f"with statistics (longest path first):   {second:.2f} s")
    print(f"ratio: {first / second:.2f}x")


if __name__ == "__main__":
    main()
