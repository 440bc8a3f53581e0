"""Tasks of the composition tests (continuations, groups, error handlers, state, dynamic pipelines).

At module level so they pickle (a child pipeline is stored pickled). They
record calls in ``pipeline_tasks.CALLS`` and fail while their name is in
``pipeline_tasks.BROKEN``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from pipeline_tasks import BROKEN, _log_and_maybe_hang, record

from pylo.pipeline import in_parallel, task

#: Members of a group currently running, and the most seen at once.
RUNNING = [0, 0]
_LOCK = threading.Lock()


@task
def multiply(x: float, y: float) -> float:
    record("multiply")
    return x * y


@task
def divide(x: float, y: float) -> float:
    record("divide")
    return x / y


@task
def add(x: int, y: int = 0, *, z: int = 0) -> int:
    record("add")
    return x + y + z


@task
def pair(x: int) -> tuple[int, int]:
    return x, x + 1


@task
def to_list(*values: Any) -> list[Any]:
    return list(values)


@task
def total(values: list[float]) -> float:
    record("total")
    return sum(values)


@task
def maybe_fail(name: str, *upstream: Any) -> str:
    """Fails while ``name`` is broken."""
    record(name)
    if name in BROKEN:
        raise ValueError(f"{name} is broken")
    return name


@task
def fail(message: str, *upstream: Any) -> None:
    record("fail")
    raise ValueError(message)


@task
def recover(exc: BaseException, *extra: Any) -> str:
    record("recover")
    return f"recovered from {type(exc).__name__}: {exc}"


@task
def reraise(exc: BaseException) -> None:
    record("reraise")
    raise RuntimeError(f"still broken ({exc})")


@task
def cleanup(previous: Any, *extra: Any, **named: Any) -> str:
    record("cleanup")
    record(f"cleanup saw {previous!r}")
    return "cleanup's own value is dropped"


@task
def tracked(name: str) -> str:
    """Counts the members of a group running at once."""
    with _LOCK:
        RUNNING[0] += 1
        RUNNING[1] = max(RUNNING[1], RUNNING[0])
    try:
        return name
    finally:
        with _LOCK:
            RUNNING[0] -= 1


@task(with_state=True)
def remember(state: Any, key: str, value: Any) -> tuple[Any, Any]:
    return {**(state or {}), key: value}, value


@task(with_state=True)
def read_state(state: Any, *upstream: Any) -> tuple[Any, Any]:
    return state, state


@task(with_state=True)
def recover_with_state(state: Any, exc: BaseException) -> tuple[Any, Any]:
    return state, f"recovered with {state}"


@task(with_state=True)
def cleanup_with_state(state: Any, previous: Any, *, tag: str) -> tuple[Any, Any]:
    record(f"cleanup {tag} {state} {previous!r}")
    return state, None


# -- dynamic pipelines ----------------------------------------------------------


@task
def count_to(n: int, target: int) -> Any:
    record("count_to")
    if n >= target:
        return n
    return add.send(n, 1).continue_with(count_to, target)


@task
def choose(x: int) -> Any:
    """A conditional: the pipeline to run depends on a value."""
    return multiply.send(x, 2) if x > 0 else add.send(x, -100)


@task(with_state=True)
def spawn(state: Any, value: Any, inline: bool) -> tuple[Any, Any]:
    child = remember.send("child", value).continue_with(read_state)
    return state, (child.inline() if inline else child)


@task
def spawn_quietly() -> Any:
    return add.send(1, 2).set(is_fruitful=False)


@task
def parent_of_failing_child(n: int) -> Any:
    record("parent body")
    return in_parallel([maybe_fail.send("child-ok"), maybe_fail.send("child-broken")]).continue_with(to_list)


@task
def logged_parent() -> Any:
    """Logs its body, then returns a child whose second task hangs when asked (crash tests)."""
    _log_and_maybe_hang("parent")
    return logged_step.send("child-a").continue_with(logged_step_after, "child-b")


@task
def logged_step(name: str) -> str:
    _log_and_maybe_hang(name)
    return name


@task
def logged_step_after(previous: str, name: str) -> str:
    _log_and_maybe_hang(name)
    return f"{previous}+{name}"


@task
def logged_fail(name: str) -> None:
    _log_and_maybe_hang(name)
    raise ValueError(f"{name} fails")


@task
def logged_recover(exc: BaseException) -> str:
    _log_and_maybe_hang("recover")
    return f"recovered: {exc}"


@task
def logged_after(previous: str, name: str) -> str:
    _log_and_maybe_hang(name)
    return f"{previous} then {name}"


def pid() -> int:
    return os.getpid()


# -- return_exceptions across a resume ------------------------------------------------------


def describe(value: Any) -> Any:
    """An exception as (type, message, whether its recorded traceback shows the raise); else the value."""
    if isinstance(value, BaseException):
        text = getattr(value.__cause__, "traceback_text", "")
        return (type(value).__name__, str(value), "raise ValueError" in text)
    return value


@task
def fail_after(previous: Any, name: str) -> None:
    record(name)
    raise ValueError(f"{name} fails")


@task(with_state=True)
def state_and_values(state: Any, values: list[Any]) -> tuple[Any, Any]:
    record("state_and_values")
    if "state_and_values" in BROKEN:
        raise RuntimeError("not yet")
    return state, [state, [describe(v) for v in values]]


@task
def logged_describe(values: list[Any]) -> list[Any]:
    _log_and_maybe_hang("describe")
    return [describe(v) for v in values]
