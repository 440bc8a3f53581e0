"""Tasks with a context, a resource wait or a rate key for the run tests; module level for worker processes."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from tenacity import AsyncRetrying, Retrying, stop_after_attempt, wait_none

from pylo.pipeline import TaskContext, task

KEY = "jobs/runs/get"
RATE = 20.0  # starts per second


def _seen(ctx: TaskContext, value: Any) -> dict[str, Any]:
    return {
        "run_id": ctx.run_id,
        "node_key": ctx.node_key,
        "task_name": ctx.task_name,
        "attempt": ctx.attempt,
        "config": ctx.config.to_dict(),
        "trace_id": ctx.trace_id,
        "logger": ctx.logger.name,
        "value": value,
        "pid": os.getpid(),
    }


@task(with_context=True)
def seen(ctx: TaskContext, value: Any) -> dict[str, Any]:
    return _seen(ctx, value)


@task(with_context=True)
async def seen_async(ctx: TaskContext, value: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return _seen(ctx, value)


@task(with_context=True, retry=Retrying(stop=stop_after_attempt(3), wait=wait_none()))
def third_time_lucky(ctx: TaskContext, value: Any) -> tuple[Any, int]:
    """Fails on attempts 1 and 2 of every call (or input); returns the attempt that succeeded."""
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} of {value}")
    return value, ctx.attempt


@task(with_context=True, retry=AsyncRetrying(stop=stop_after_attempt(3), wait=wait_none()))
async def third_time_lucky_async(ctx: TaskContext, value: Any) -> tuple[Any, int]:
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} of {value}")
    return value, ctx.attempt


@task(with_context=True)
def change_config(ctx: TaskContext) -> None:
    ctx.config["api"]["url"] = "https://elsewhere.test"


#: When a test's file exists, ``fails_until_fixed`` raises: a crash that a "fix" (deleting it) repairs.
BROKEN_FLAG = "broken.flag"


@task(with_context=True)
def fails_until_fixed(ctx: TaskContext, flag: str) -> dict[str, Any]:
    if os.path.exists(flag):
        raise RuntimeError("not fixed yet")
    return ctx.config.to_dict()


@task(rate_limit=RATE, rate_key=KEY)
def status_started(run: int) -> tuple[str, int, float]:
    return "status", run, time.monotonic()


@task(rate_key=KEY)  # joins the bucket declared above
def output_started(run: int) -> tuple[str, int, float]:
    return "output", run, time.monotonic()


@task(rate_limit=RATE, rate_key=KEY, with_context=True)
async def async_started(ctx: TaskContext, run: int) -> tuple[str, int, float]:
    return ctx.task_name, run, time.monotonic()


# -- waiting for a resource ------------------------------------------------------------


class Probe:
    """A probe that is true from its ``ready_after``-th call, or once ``event`` is set; counts its calls."""

    def __init__(self, ready_after: int | None = None, event: threading.Event | None = None) -> None:
        self.ready_after = ready_after
        self.event = event
        self.calls = 0

    def __repr__(self) -> str:
        return "Probe()"

    def __call__(self) -> bool:
        self.calls += 1
        if self.event is not None:
            return self.event.is_set()
        return self.ready_after is not None and self.calls >= self.ready_after


@task(with_context=True)
def seen_unless_flagged(ctx: TaskContext, path: str) -> dict[str, Any]:
    """Raises while the file ``path`` exists; else what the context said."""
    if os.path.exists(path):
        raise RuntimeError(f"{path} is still there")
    return _seen(ctx, path)


# -- child runs (a task that returns a pipeline) -------------------------------------------


@task
def child_of_fails_until_fixed(flag: str) -> Any:
    """Returns a child pipeline whose context-reading task fails while ``flag`` exists."""
    return fails_until_fixed.send(flag)


@task
def child_of_rated(count: int) -> Any:
    """Returns a child batch node on the rate key the parent's nodes use too."""
    return status_started.map(range(count))


@task(with_context=True)
def seen_max_parallel(ctx: TaskContext, value: Any) -> dict[str, Any]:
    return {"config": ctx.config.to_dict(), "run_id": ctx.run_id, "value": value}


@task
def child_of_seen(value: Any) -> Any:
    return seen_max_parallel.send(value)
