"""Shared fixtures: a Pylo factory parametrized over every store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_server import fresh_schema, postgres_url

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start or use a Dask cluster all run in one xdist worker.

    Two clusters starting at once on a small machine can miss the
    cluster's start timeout; one worker runs them one after another and
    shares the session's cluster, as a plain run does.
    """
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "dask" in item.nodeid.lower() or any("dask" in name for name in fixtures):
            item.add_marker(pytest.mark.xdist_group("dask"))
