"""Per-worker setup: ``initializer(*initargs)`` runs once in each worker, before its first input.

Run on every backend (threads, processes with spawn and fork, asyncio,
Dask), like the worker contract suite: the same meaning everywhere.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from pathlib import Path

import pytest
from backends import Workers
from contract_tasks import Async, noop
from init_tasks import crash_at, refuse, set_up, set_up_async, uses_setup
from tasks import calls

from pylo import ExecutionStatus, InitializerFailed, Pylo


def tokens_in(log: str) -> list[str]:
    """The tokens ``set_up`` made (or ``uses_setup`` saw) in a log, oldest first."""
    return [line.strip("'") for line in calls(log)]


def test_each_worker_runs_the_initializer_once_with_its_initargs_before_its_first_input(
    workers: Workers, tmp_path: Path
) -> None:
    made, seen = str(tmp_path / "made.log"), str(tmp_path / "seen.log")
    pylo = workers.make(2, initializer=set_up, initargs=(made, "db"))
    execution_id = pylo.start_from_scratch(range(400), workers.task(uses_setup, seen))
    assert pylo.get_state(execution_id) == (list(range(400)), [])
    tokens = Counter(tokens_in(made))
    # Two workers: at most two set-ups (Dask: one per worker process that ran a chunk), each made once.
    assert 1 <= len(tokens) <= 2 and set(tokens.values()) == {1}
    assert all(token.startswith("db-") for token in tokens)
    # Every input ran in a worker that was set up, by its own set-up.
    used = Counter(tokens_in(seen))
    assert sum(used.values()) == 400 and set(used) <= set(tokens)


def test_an_initializer_that_raises_fails_the_start_and_leaves_every_input_pending(
    workers: Workers, tmp_path: Path
) -> None:
    pylo = workers.make(2, initializer=refuse, initargs=("db.example",))
    with pytest.raises(InitializerFailed) as caught:
        pylo.start_from_scratch(range(300), workers.task(noop), execution_id="broken")
    error = caught.value
    assert error.initializer == "init_tasks:refuse" and error.type_name == "ConnectionRefusedError"
    assert "init_tasks:refuse" in str(error) and "cannot reach db.example" in str(error)
    assert "raise ConnectionRefusedError" in error.traceback_text
    record = pylo.get_execution("broken")
    assert record.status is ExecutionStatus.ABORTED
    assert (record.pending, record.failed, record.finished) == (300, 0, 0)
    assert pylo.get_failures("broken") == []
    # Nothing was lost: once the initializer is fixed, a resume runs everything.
    made, seen = str(tmp_path / "made.log"), str(tmp_path / "seen.log")
    fixed = pylo.with_options(initializer=set_up, initargs=(made, "fixed"))
    resumed = fixed.start_from_past_execution("broken", workers.task(uses_setup, seen))
    assert pylo.get_state(resumed) == (list(range(300)), [])


def test_a_process_that_replaces_a_dead_one_is_set_up_again(tmp_path: Path) -> None:
    made, seen = str(tmp_path / "made.log"), str(tmp_path / "seen.log")
    with Pylo.local_multiprocess(
        tmp_path / "store", 1, start_method="fork", initializer=set_up, initargs=(made, "db"), progress=False
    ) as pylo:
        execution_id = pylo.start_from_scratch(range(20), functools.partial(crash_at, 5, seen))
        assert pylo.get_state(execution_id)[1] == [5]
    tokens = set(tokens_in(made))
    used = tokens_in(seen)
    assert len(tokens) == 2 and set(used) == tokens  # the first process, then its replacement


def test_asyncio_awaits_an_async_initializer_in_each_lane(tmp_path: Path) -> None:
    made, seen = str(tmp_path / "made.log"), str(tmp_path / "seen.log")
    with Pylo.local_asyncio(
        tmp_path / "store", 3, initializer=set_up_async, initargs=(made, "loop"), progress=False
    ) as pylo:
        execution_id = pylo.start_from_scratch(range(300), Async(functools.partial(uses_setup, seen)))
        assert pylo.get_state(execution_id) == (list(range(300)), [])
    tokens = set(tokens_in(made))
    used = Counter(tokens_in(seen))
    # One set-up per lane, each lane's tasks see their own (a ContextVar per lane).
    assert len(tokens) == 3 and set(used) <= tokens and sum(used.values()) == 300


# -- checked where the Pylo is made --------------------------------------------------


def test_bad_initializer_arguments_are_refused_with_the_option_named(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(TypeError, match="initializer must be a callable"):
        Pylo.local_multithread(store, 2, initializer="pkg:open_db")  # type: ignore[typeddict-item]
    with pytest.raises(TypeError, match=r"initargs must be a tuple .* got list \['db'\]"):
        Pylo.local_multithread(store, 2, initializer=set_up, initargs=["db"])  # type: ignore[typeddict-item]
    with pytest.raises(ValueError, match=r"initargs .* without an initializer"):
        Pylo.local_multithread(store, 2, initargs=("db",))
    with pytest.raises(TypeError, match="initializer init_tasks:set_up_async is an async function"):
        Pylo.local_multithread(store, 2, initializer=set_up_async, initargs=("x", "y"))
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"initargs .* cannot be sent to worker processes"):
        Pylo.local_multiprocess(store, 2, initializer=set_up, initargs=(lock, "db"))

    def holds_the_lock() -> None:
        with lock:
            pass

    with pytest.raises(TypeError, match=r"initializer .*holds_the_lock cannot be sent to worker processes"):
        Pylo.local_multiprocess(store, 2, initializer=holds_the_lock)
    assert not store.exists()  # refused before the store was made


def test_with_options_initializer_none_drops_its_initargs(tmp_path: Path) -> None:
    with Pylo.local_multithread(tmp_path / "store", 2, initializer=set_up, initargs=("log", "db")) as pylo:
        plain = pylo.with_options(initializer=None)
        assert (plain.options.initializer, plain.options.initargs) == (None, ())
        assert pylo.options.initargs == ("log", "db")


def test_the_record_names_the_initializer_and_says_whether_it_can_be_imported(tmp_path: Path) -> None:
    made = str(tmp_path / "made.log")
    with Pylo.local_multithread(tmp_path / "store", 1, initializer=set_up, initargs=(made, "db"), progress=False) as p:
        by_name = p.start_from_scratch([1], noop)
        assert p.get_execution(by_name).options["initializer"] == {
            "name": "init_tasks:set_up",
            "path": "init_tasks:set_up",
            "args": [made, "db"],
        }
        local = p.with_options(initializer=lambda path: None, initargs=(tmp_path,))
        made_here = local.start_from_scratch([1], noop)
        recorded = p.get_execution(made_here).options["initializer"]
        assert recorded["path"] is None and recorded["args"] == "custom"
        assert recorded["name"].endswith("<lambda>")
