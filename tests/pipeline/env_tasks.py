"""Task functions and helpers the task-environment tests share; module level so worker processes import them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pylo._ratekeys import KeyedRateLimits
from pylo.pipeline import TaskContext

CONFIG = {"api": {"url": "https://example.test", "retries": [1, 2, {"deep": True}]}, "name": "nightly"}

KEY = "jobs/runs/get"
RATE = 40.0  # starts per second: 12 starts take 0.275 s at least
STARTS = 4  # per caller


def context(**changes: Any) -> TaskContext:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "node_key": "download#0",
        "task_name": "download",
        "config": CONFIG,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    fields.update(changes)
    return TaskContext(**fields)


def describe(ctx: TaskContext, value: int) -> tuple[str, str, str, int, str, str | None, int]:
    return ctx.run_id, ctx.node_key, ctx.task_name, ctx.attempt, ctx.config["api"]["url"], ctx.trace_id, value * 2


def fails_twice_then_reports_attempt(ctx: TaskContext, value: int) -> tuple[int, int]:
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} of input {value}")
    return value, ctx.attempt


async def describe_async(ctx: TaskContext, value: int) -> tuple[str, int]:
    await asyncio.sleep(0)
    return ctx.node_key, value + ctx.attempt


def starts_per_caller(limits: KeyedRateLimits, key: str, count: int) -> list[float]:
    """Acquire ``count`` starts of ``key``; return when each began (``time.monotonic``)."""
    started = []
    for _ in range(count):
        limits.acquire(key)
        started.append(time.monotonic())
    return started


def process_caller(limits: KeyedRateLimits, key: str, count: int, results: Any) -> None:
    results.put(starts_per_caller(limits, key, count))


def assert_spaced(starts: list[float], first_use_not_before: float, rate: float) -> None:
    """With one token at most, the k-th start cannot come before ``k / rate`` after the first use."""
    ordered = sorted(starts)
    for k, started in enumerate(ordered):
        assert started >= first_use_not_before + k / rate - 1e-4, (k, [s - first_use_not_before for s in ordered])


class FixedClock:
    """A clock that never moves; a class so a registry holding it pickles."""

    def __call__(self) -> float:
        return 500.0


def started_at(ctx: TaskContext, value: int) -> tuple[str, int, float]:
    return ctx.node_key, value, time.monotonic()


async def started_at_async(ctx: TaskContext, value: int) -> tuple[str, int, float]:
    return ctx.node_key, value, time.monotonic()
