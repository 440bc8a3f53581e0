"""Bad calls fail fast, before anything is recorded, with messages that name the problem."""

from __future__ import annotations

import array
import collections
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tasks import noop

from pylo import Pylo


def build(tmp_path: Path, *args: Any, **kwargs: Any) -> Pylo:
    return Pylo.local_multithread(tmp_path / "store", *args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"number_of_workers": 0}, ValueError, "number_of_workers must be >= 1, got 0"),
        ({"number_of_workers": 2.5}, TypeError, "number_of_workers must be an int >= 1, got float 2.5"),
        ({"number_of_workers": True}, TypeError, "number_of_workers must be an int >= 1, got bool True"),
        ({"max_worker_failures": 0}, ValueError, "max_worker_failures must be >= 1, got 0"),
        ({"task_executions_before_flush": -3}, ValueError, "task_executions_before_flush must be >= 1, got -3"),
        ({"store_exceptions": "no"}, TypeError, "store_exceptions must be True or False, got str 'no'"),
        ({"flush_seconds": 0}, ValueError, "flush_seconds must be a finite number of seconds > 0, got 0"),
        ({"flush_seconds": float("nan")}, ValueError, "flush_seconds must be a finite number of seconds > 0"),
        ({"flush_seconds": 1e10}, ValueError, "flush_seconds must be at most 604800 seconds (one week), got 1e+10"),
        ({"max_failures": 0}, ValueError, "max_failures must be >= 1, got 0"),
        ({"timeout": 1e10}, ValueError, "timeout must be at most 604800 seconds (one week), got 1e+10"),
        (
            {"rate_limit": 1e-300},
            ValueError,
            "rate_limit must be at least one task start per week (1.65e-06/s), got 1e-300",
        ),
        ({"timeout": -1}, ValueError, "timeout must be a finite number of seconds > 0, got -1"),
        ({"rate_limit": "fast"}, ValueError, "rate_limit 'fast' is not a rate"),
        ({"rate_limit": 0}, ValueError, "rate_limit must be > 0 task starts per second, got 0"),
        ({"retry": 3}, TypeError, "retry must be a tenacity.Retrying object"),
        ({"store": "mongo"}, ValueError, "unknown store 'mongo'; valid names: 'sqlite', 'files'"),
        ({"store": 42}, ValueError, "store must be a store name"),
        ({"progress": "yes"}, TypeError, "progress must be True or False, got str 'yes'"),
    ],
)
def test_constructor_arguments_are_checked(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    kwargs.setdefault("number_of_workers", 2)
    with pytest.raises(error, match=re.escape(message)):
        build(tmp_path, **kwargs)
    assert not (tmp_path / "store").exists() or "store" in kwargs


def test_async_retrying_is_refused_for_threads(tmp_path: Path) -> None:
    from tenacity import AsyncRetrying

    with pytest.raises(TypeError, match=r"retry must be a tenacity\.Retrying object.*got AsyncRetrying"):
        build(tmp_path, 2, retry=AsyncRetrying())


def test_local_store_dir_must_be_a_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="local_store_dir must be a str or path-like, got int 5"):
        Pylo.local_multithread(5, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda p: p.start_from_scratch("abc", noop), TypeError, "task_inputs must be an iterable of inputs, got str"),
        (lambda p: p.start_from_scratch(5, noop), TypeError, "task_inputs must be an iterable of inputs"),
        (lambda p: p.start_from_scratch([1], "noop"), TypeError, "task_function must be callable, got str 'noop'"),
        (lambda p: p.start_from_scratch([1], noop, execution_id="a b"), ValueError, "is not a valid execution id"),
        (lambda p: p.start_from_scratch([1], noop, execution_id=""), ValueError, "is not a valid execution id"),
        (lambda p: p.start_from_scratch([1], noop, execution_id=7), TypeError, "execution_id must be a str, got int"),
        (lambda p: p.start_from_past_execution(None, noop), TypeError, "past_execution_id must be a str"),
        (lambda p: p.get_state(""), ValueError, "is not a valid execution id"),
    ],
)
def test_run_arguments_are_checked_before_anything_is_recorded(
    tmp_path: Path, call: Callable[[Pylo], Any], error: type[Exception], message: str
) -> None:
    pylo = build(tmp_path, 2)
    with pytest.raises(error, match=re.escape(message)):
        call(pylo)
    assert pylo.list_executions() == []


def test_async_functions_are_refused_by_thread_workers(tmp_path: Path) -> None:
    async def fetch(item: int) -> None:
        return None

    pylo = build(tmp_path, 2)
    with pytest.raises(TypeError, match="is an async function, but these workers run plain functions"):
        pylo.start_from_scratch([1], fetch)
    assert pylo.list_executions() == []


def test_local_store_dir_may_be_none_only_when_the_store_needs_no_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local_store_dir is None, but store 'sqlite' keeps its files there"):
        Pylo.local_multithread(None, 2)
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with Pylo.local_multithread(None, 2, store=url, progress=False) as pylo:
        execution_id = pylo.start_from_scratch([1, 2], noop)
        assert pylo.get_state(execution_id) == ([1, 2], [])


@pytest.mark.parametrize(
    "make_inputs",
    [
        lambda: collections.deque([3, 1, 2]),
        lambda: {3: "c", 1: "a", 2: "b"},
        lambda: (x for x in [3, 1, 2]),
        lambda: iter([3, 1, 2]),
        lambda: _OnlyIterable([3, 1, 2]),
        lambda: array.array("i", [3, 1, 2]),
    ],
    ids=["deque", "dict", "generator", "iterator", "only-iterable", "array"],
)
def test_every_iterable_is_accepted_as_inputs(tmp_path: Path, make_inputs: Callable[[], Any]) -> None:
    pylo = build(tmp_path, 2, progress=False)
    ran: list[int] = []
    execution_id = pylo.start_from_scratch(make_inputs(), ran.append)
    assert sorted(ran) == [1, 2, 3]
    assert pylo.get_state(execution_id) == ([3, 1, 2], [])


class _OnlyIterable:
    """Has __iter__ and nothing else: no len, no indexing."""

    def __init__(self, items: list[int]) -> None:
        self._items = items

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)
