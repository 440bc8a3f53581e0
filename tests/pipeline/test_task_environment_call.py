"""prepare_call: a node's function with its context and rate key, as one picklable callable."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
from env_tasks import KEY, RATE, assert_spaced, context, describe, started_at, started_at_async

from pylo import Pylo
from pylo._ratekeys import KeyedRateLimits
from pylo.pipeline._context import ContextCall
from pylo.pipeline._environment import AsyncRateLimitedCall, RateLimitedCall, prepare_call


def test_without_context_or_key_the_function_itself() -> None:
    assert prepare_call(describe) is describe
    assert isinstance(prepare_call(describe, context=context()), ContextCall)


def test_a_key_needs_the_run_limits_and_must_be_one_of_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rate_key 'k' needs the run's KeyedRateLimits"):
        prepare_call(describe, rate_key="k")
    with KeyedRateLimits.create({KEY: RATE}, parent=tmp_path) as limits, pytest.raises(KeyError, match="'k'"):
        prepare_call(describe, limits=limits, rate_key="k")


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_batch_inputs_on_workers_share_the_key_and_get_the_context(tmp_path: Path, backend: str) -> None:
    make = Pylo.local_multithread if backend == "threads" else Pylo.local_multiprocess
    pylo = make(str(tmp_path / "store"), number_of_workers=3, store_results=True, progress=False)
    with KeyedRateLimits.create({KEY: RATE}, parent=tmp_path) as limits:
        call = prepare_call(started_at, context=context(), limits=limits, rate_key=KEY)
        assert isinstance(pickle.loads(pickle.dumps(call)), RateLimitedCall)
        first_use_not_before = time.monotonic()
        try:
            results = pylo.get_results(pylo.start_from_scratch(range(9), call))
        finally:
            pylo.close()
    assert [(key, value) for _, (key, value, _) in results] == [("download#0", value) for value in range(9)]
    assert_spaced([started for _, (_, _, started) in results], first_use_not_before, RATE)


def test_async_inputs_share_the_key(tmp_path: Path) -> None:
    pylo = Pylo.local_asyncio(str(tmp_path / "store"), 4, store_results=True, progress=False)
    with KeyedRateLimits.create({KEY: RATE}, parent=tmp_path) as limits:
        call = prepare_call(started_at_async, context=context(), limits=limits, rate_key=KEY)
        assert isinstance(call, AsyncRateLimitedCall)
        first_use_not_before = time.monotonic()
        try:
            results = pylo.get_results(pylo.start_from_scratch(range(8), call))
        finally:
            pylo.close()
    assert_spaced([started for _, (_, _, started) in results], first_use_not_before, RATE)
