"""On a real Dask LocalCluster (a worker process): the context reaches every input, a keyed bucket is shared.

The cluster is the pipeline tests' own (``dask_client``, tests/pipeline/conftest.py).
"""

from __future__ import annotations

import importlib.util
import time
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


def test_batch_inputs_get_the_context_and_their_attempt_on_dask(tmp_path: Path, dask_client: Any) -> None:
    retry = counting_attempts(Retrying(stop=stop_after_attempt(3), wait=wait_none()))
    pylo = Pylo.dask(dask_client, str(tmp_path / "store"), retry=retry, store_results=True, progress=False)
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


def test_a_dask_worker_process_and_the_parent_share_a_key(tmp_path: Path, dask_client: Any) -> None:
    with KeyedRateLimits.create({KEY: RATE}, parent=tmp_path) as limits:
        first_use_not_before = time.monotonic()
        futures = [dask_client.submit(starts_per_caller, limits, KEY, STARTS, pure=False) for _ in range(2)]
        starts = starts_per_caller(limits, KEY, STARTS)
        for found in dask_client.gather(futures):
            starts += found
        assert len(starts) == 3 * STARTS
        assert_spaced(starts, first_use_not_before, RATE)
