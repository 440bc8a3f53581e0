"""wait_for: a probe polled with back-off until ready, or ResourceUnavailable naming it. Nothing really waits."""

from __future__ import annotations

import asyncio
import functools
import pickle
from typing import Any

import pytest

from pylo.errors import PyloError, ResourceUnavailable
from pylo.pipeline._resources import probe_name, wait_for_resource, wait_for_resource_async


class FakeTime:
    """A clock that only its own sleep advances; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class ReadyAfter:
    """A probe that is ready on its ``polls``-th call; raises ``error`` before that when given."""

    def __init__(self, polls: int, error: Exception | None = None) -> None:
        self.polls = polls
        self.calls = 0
        self.error = error

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls >= self.polls:
            return True
        if self.error is not None:
            raise self.error
        return False


def database_is_up() -> bool:
    return False


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def test_ready_at_once_polls_once(fake: FakeTime) -> None:
    assert wait_for_resource(lambda: True, 10, sleep=fake.sleep, clock=fake.clock) == 1
    assert fake.sleeps == []


def test_ready_after_some_polls_backs_off_exponentially(fake: FakeTime) -> None:
    probe = ReadyAfter(5)
    assert wait_for_resource(probe, 60, sleep=fake.sleep, clock=fake.clock) == 5
    assert probe.calls == 5
    assert fake.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4])


def test_waits_are_capped_at_maximum(fake: FakeTime) -> None:
    assert wait_for_resource(ReadyAfter(8), None, sleep=fake.sleep, clock=fake.clock, initial=1, maximum=5) == 8
    assert fake.sleeps == [1, 2, 4, 5, 5, 5, 5]


def test_timing_out_names_the_probe_after_a_last_poll_at_the_deadline(fake: FakeTime) -> None:
    with pytest.raises(ResourceUnavailable) as info:
        wait_for_resource(database_is_up, 1.0, sleep=fake.sleep, clock=fake.clock)
    error = info.value
    # Polls at 0, 0.05, 0.15, 0.35, 0.75, and the last wait cut to end at 1.0.
    assert fake.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.25])
    assert fake.now == pytest.approx(1001.0)
    assert (error.probe, error.timeout, error.polls, error.last_error) == (
        f"{__name__}.database_is_up",
        1.0,
        6,
        None,
    )
    assert isinstance(error, PyloError)
    assert str(error) == (
        f"resource not available: probe {__name__}.database_is_up was not true within wait_timeout=1.0 s "
        "(6 poll(s); it returned a false value); start the resource, fix the probe or raise wait_timeout"
    )
    assert error.__cause__ is None


def test_a_zero_timeout_polls_once(fake: FakeTime) -> None:
    with pytest.raises(ResourceUnavailable, match=r"\(1 poll\(s\)"):
        wait_for_resource(database_is_up, 0, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == []


def test_a_probe_that_raises_is_not_ready_yet(fake: FakeTime) -> None:
    probe = ReadyAfter(3, ConnectionRefusedError("connection refused"))
    assert wait_for_resource(probe, 5, sleep=fake.sleep, clock=fake.clock) == 3


def test_timing_out_after_a_raise_says_what_it_raised(fake: FakeTime) -> None:
    refused = ConnectionRefusedError("connection refused")
    with pytest.raises(ResourceUnavailable, match="its last poll raised ConnectionRefusedError: connection refused"):
        try:
            wait_for_resource(ReadyAfter(100, refused), 0.5, sleep=fake.sleep, clock=fake.clock)
        except ResourceUnavailable as error:
            assert error.__cause__ is refused
            assert error.polls == 5
            raise


def test_interrupts_are_not_swallowed(fake: FakeTime) -> None:
    def interrupted() -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wait_for_resource(interrupted, 5, sleep=fake.sleep, clock=fake.clock)


def test_the_error_pickles_for_the_store(fake: FakeTime) -> None:
    error = ResourceUnavailable("db.is_up", 2.0, 7, "OSError: no route")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.probe, copy.timeout, copy.polls, copy.last_error, str(copy)) == (
        "db.is_up",
        2.0,
        7,
        "OSError: no route",
        str(error),
    )


def test_probe_names() -> None:
    assert probe_name(database_is_up) == f"{__name__}.database_is_up"
    assert probe_name(ReadyAfter(1).__call__).endswith("ReadyAfter.__call__")
    assert probe_name(functools.partial(database_is_up)).startswith("functools.partial(")


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"probe": "not callable"}, TypeError, "wait_for must be a callable"),
        ({"timeout": -1}, ValueError, "wait_timeout must be a number of seconds >= 0 or None .*got -1"),
        ({"timeout": "10"}, ValueError, "wait_timeout must be a number"),
        ({"initial": 0}, ValueError, "initial must be a positive number of seconds, got 0"),
        ({"maximum": float("inf")}, ValueError, "maximum must be a positive number of seconds, got inf"),
    ],
)
def test_arguments_are_checked(arguments: dict[str, Any], error: type[Exception], message: str) -> None:
    call: dict[str, Any] = {"probe": database_is_up, "timeout": 1.0, **arguments}
    with pytest.raises(error, match=message):
        wait_for_resource(call.pop("probe"), call.pop("timeout"), **call)


def test_async_wait_with_an_async_probe(fake: FakeTime) -> None:
    calls = []

    async def queue_exists() -> bool:
        calls.append(fake.now)
        return len(calls) == 4

    polls = asyncio.run(wait_for_resource_async(queue_exists, 10, sleep=fake.async_sleep, clock=fake.clock))
    assert polls == 4
    assert fake.sleeps == pytest.approx([0.05, 0.1, 0.2])


def test_async_wait_times_out_with_a_plain_probe(fake: FakeTime) -> None:
    with pytest.raises(ResourceUnavailable, match=r"database_is_up was not true within wait_timeout=0\.3"):
        asyncio.run(wait_for_resource_async(database_is_up, 0.3, sleep=fake.async_sleep, clock=fake.clock))
    assert fake.sleeps == pytest.approx([0.05, 0.1, 0.15])
