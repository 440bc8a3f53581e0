"""Shared fixtures: a Pylo factory parametrized over every store."""

from __future__ import annotations

import compileall
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_server import fresh_schema, postgres_url

import pylo as pylo_package
from pylo import Pylo

__all__ = ["postgres_url"]  # a fixture: importing it here makes it visible to every test

#: Stores every ``make_pylo`` test runs on. "postgres" is a schema of its own
#: per test in the ``postgres_url`` database, and skips when there is none.
STORE_NAMES = ["sqlite", "files", "postgres"]


@pytest.fixture(params=STORE_NAMES)
def store_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store_arg(request: pytest.FixtureRequest, store_dir: Path, store_name: str) -> Iterator[str]:
    """What the test's Pylo objects get as ``store=``: a store name, or a PostgreSQL URL."""
    if store_name != "postgres":
        yield store_name
        return
    with fresh_schema(request.getfixturevalue("postgres_url"), str(store_dir)) as url:
        yield url


@pytest.fixture
def make_pylo(store_dir: Path, store_arg: str) -> Iterator[Callable[..., Pylo]]:
    """Build Pylo objects on one store directory; all are closed at teardown."""
    made: list[Pylo] = []

    def make(number_of_workers: int = 2, **kwargs: Any) -> Pylo:
        kwargs.setdefault("store", store_arg)
        pylo = Pylo.local_multithread(store_dir, number_of_workers, **kwargs)
        made.append(pylo)
        return pylo

    yield make
    for pylo in made:
        pylo.close()


def pytest_configure(config: pytest.Config) -> None:
    """Compile pylo's modules to bytecode once, before any test starts a ``pylo`` process.

    Many tests run the real ``pylo`` command in a subprocess. Where
    ``PYTHONDONTWRITEBYTECODE`` is set, no process writes bytecode, so each
    of them would compile pylo's modules from source again (a third of a
    second per process on a small machine). ``compileall`` writes it
    whatever that variable says, and skips modules already up to date.
    """
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controlling process compiled them
    compileall.compile_dir(Path(pylo_package.__file__).parent, quiet=2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start or use a Dask cluster all run in one xdist worker.

    Two clusters starting at once on a small machine can miss the
    cluster's start timeout; one worker runs them one after another (each
    module, or package, starts its own cluster and shares it among its tests).
    """
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "dask" in item.nodeid.lower() or any("dask" in name for name in fixtures):
            item.add_marker(pytest.mark.xdist_group("dask"))
