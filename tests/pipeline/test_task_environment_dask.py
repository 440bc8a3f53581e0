"""On a real Dask LocalCluster (worker processes): the context reaches every input, a keyed bucket is shared."""

from __future__ import annotations

import copyreg
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from env_tasks import (
    KEY,
    RATE,
    STARTS,
    assert_spaced,
    context,
    describe,
    fails_twice_then_reports_attempt,
    starts_per_caller,
)
from tenacity import Retrying, stop_after_attempt, wait_none

from pylo import Pylo
from pylo._ratekeys import KeyedRateLimits
from pylo.pipeline._context import ContextCall, counting_attempts

pytestmark = pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="needs dask[distributed]")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    # distributed installs tblib's exception pickling in copyreg for the whole
    # process; put it back after, as tests/workers does.
    saved = dict(copyreg.dispatch_table)
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    connected = Client(cluster, set_as_default=False)
    yield connected
    connected.close()
    cluster.close()
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(saved)


def test_batch_inputs_get_the_context_and_their_attempt_on_dask(tmp_path: Path, client: Any) -> None:
    retry = counting_attempts(Retrying(stop=stop_after_attempt(3), wait=wait_none()))
    pylo = Pylo.dask(client, str(tmp_path / "store"), retry=retry, store_results=True, progress=False)
    try:
        execution_id = pylo.start_from_scratch(range(4), ContextCall(fails_twice_then_reports_attempt, context()))
        assert pylo.get_results(execution_id) == [(value, (value, 3)) for value in range(4)]
        execution_id = pylo.start_from_scratch(range(2), ContextCall(describe, context()))
        assert [result for _, result in pylo.get_results(execution_id)] == [
            ("run-1", "download#0", "download", 1, "https://example.test", context().trace_id, value * 2)
            for value in range(2)
        ]
    finally:
        pylo.close()


def test_dask_worker_processes_and_the_parent_share_a_key(tmp_path: Path, client: Any) -> None:
    with KeyedRateLimits.create({KEY: RATE}, parent=tmp_path) as limits:
        first_use_not_before = time.monotonic()
        futures = [client.submit(starts_per_caller, limits, KEY, STARTS, pure=False) for _ in range(2)]
        starts = starts_per_caller(limits, KEY, STARTS)
        for found in client.gather(futures):
            starts += found
        assert len(starts) == 3 * STARTS
        assert_spaced(starts, first_use_not_before, RATE)
