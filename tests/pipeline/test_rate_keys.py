"""Keyed rate limits: one token bucket per key for a whole run, shared by threads and processes.

Assertions are on recorded start times, never on how long the test took:
with one token at most, the k-th start (in time order) of a key cannot come
before ``k / rate`` seconds after the bucket's first use. Separate buckets
(no sharing) would let the two callers' first starts come together.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from env_tasks import KEY, RATE, STARTS, FixedClock, assert_spaced, process_caller, starts_per_caller

from pylo._ratekeys import KeyedRateLimits, bucket_key, resolve_rate_limits
from pylo.errors import PipelineValidationError


@pytest.fixture
def limits(tmp_path: Path) -> Any:
    with KeyedRateLimits.create({KEY: RATE, "other": "10/s"}, parent=tmp_path) as made:
        yield made


def test_two_copies_book_from_one_bucket(tmp_path: Path) -> None:
    with KeyedRateLimits.create({KEY: "10/s"}, clock=FixedClock(), parent=tmp_path) as first:
        second = pickle.loads(pickle.dumps(first))
        delays = [first.reserve(KEY), second.reserve(KEY), first.reserve(KEY), second.reserve(KEY)]
        assert delays == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_each_run_has_its_own_buckets(tmp_path: Path) -> None:
    with (
        KeyedRateLimits.create({KEY: "1/s"}, parent=tmp_path) as run_a,
        KeyedRateLimits.create({KEY: "1/s"}, parent=tmp_path) as run_b,
    ):
        assert run_a.reserve(KEY) == 0.0
        assert run_b.reserve(KEY) == 0.0
        assert run_a.reserve(KEY) > 0.9


def test_keys_have_their_own_buckets(limits: KeyedRateLimits) -> None:
    assert limits.reserve(KEY) == 0.0
    assert limits.reserve("other") == 0.0
    with pytest.raises(
        KeyError, match=r"no rate limit for key 'nope'; the run's keys are \['jobs/runs/get', 'other'\]"
    ):
        limits.reserve("nope")
    assert KEY in limits and "nope" not in limits


def test_threads_with_their_own_copies_share_the_bucket(limits: KeyedRateLimits) -> None:
    copies = [pickle.loads(pickle.dumps(limits)) for _ in range(2)] + [limits]
    results: list[list[float]] = [[] for _ in copies]
    first_use_not_before = time.monotonic()
    threads = [
        threading.Thread(target=lambda i=i, c=c: results[i].extend(starts_per_caller(c, KEY, STARTS)))
        for i, c in enumerate(copies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert_spaced([s for found in results for s in found], first_use_not_before, RATE)


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_processes_share_the_bucket(limits: KeyedRateLimits, start_method: str) -> None:
    context = multiprocessing.get_context(start_method)
    results = context.Queue()
    first_use_not_before = time.monotonic()
    # The parent takes starts too, before and while the children run: a
    # forked child must not share the parent's open bucket file (and lock).
    parent_starts = starts_per_caller(limits, KEY, 1)
    children = [context.Process(target=process_caller, args=(limits, KEY, STARTS, results)) for _ in range(2)]
    for child in children:
        child.start()
    parent_starts += starts_per_caller(limits, KEY, STARTS)
    starts = parent_starts + [s for _ in children for s in results.get(timeout=60)]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert len(starts) == 1 + 3 * STARTS
    assert_spaced(starts, first_use_not_before, RATE)


def test_the_creator_removes_the_buckets_and_copies_do_not(tmp_path: Path) -> None:
    made = KeyedRateLimits.create({KEY: 5}, parent=tmp_path)
    made.reserve(KEY)
    copy = pickle.loads(pickle.dumps(made))
    copy.reserve(KEY)
    copy.close()
    assert os.path.isdir(made.directory)
    made.close()
    assert not os.path.exists(made.directory)
    made.close()  # twice is fine
    with pytest.raises(ValueError, match="are closed: their run has ended"):
        made.reserve(KEY)


async def _acquire_twice(limits: KeyedRateLimits) -> list[float]:
    return [await limits.acquire_async(KEY), await limits.acquire_async(KEY)]


def test_async_acquire(limits: KeyedRateLimits) -> None:
    import asyncio

    first, second = asyncio.run(_acquire_twice(limits))
    assert first == 0.0
    assert 0 < second <= 1 / RATE


@pytest.mark.parametrize(
    ("limits_arg", "kwargs", "error", "message"),
    [
        ({"": 1}, {}, ValueError, "rate keys must be non-empty strings"),
        ({1: 1}, {}, TypeError, "rate keys must be strings, got int"),
        ({"k": 0}, {}, ValueError, "rate_limit must be > 0"),
        ({"k": None}, {}, ValueError, "rate of key 'k' must be given"),
        ({"k": 1}, {"burst": 0.5}, ValueError, "burst must be a number >= 1, got 0.5"),
    ],
)
def test_registry_arguments_are_checked(
    tmp_path: Path, limits_arg: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        KeyedRateLimits.create(limits_arg, parent=tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []  # a refused registry leaves no directory


# -- a run's buckets from its tasks --------------------------------------------


def test_tasks_sharing_a_key_share_its_rate() -> None:
    declared = [
        ("get_run", "10/s", KEY),
        ("get_run", "10/s", KEY),  # a second node of the same task
        ("poll_run", None, KEY),  # joins the key declared elsewhere
        ("cancel_run", 600, KEY.replace("get", "cancel")),
        ("download", "100/min", None),  # its own bucket
        ("plain", None, None),
    ]
    assert resolve_rate_limits(declared) == {KEY: 10.0, "jobs/runs/cancel": 600.0, "task:download": 100 / 60}
    assert bucket_key("download", "100/min", None) == "task:download"
    assert bucket_key("poll_run", None, KEY) == KEY
    assert bucket_key("plain", None, None) is None


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (
            [("a", "10/s", "k"), ("b", "5/s", "k")],
            "rate_key 'k' has two rates: rate_limit='10/s' on task a and rate_limit='5/s' on task b",
        ),
        ([("a", None, "k")], "rate_key 'k' of task a has no rate: give rate_limit on a task with this rate_key"),
        ([("a", "fast", None)], "task a: rate_limit 'fast' is not a rate"),
        ([("a", "1/s", "")], "rate_key of task a must be a non-empty string, got ''"),
    ],
)
def test_rate_declarations_that_cannot_run(declared: list[tuple[str, Any, Any]], message: str) -> None:
    with pytest.raises(PipelineValidationError, match=message):
        resolve_rate_limits(declared)
