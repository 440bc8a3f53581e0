"""Shared fixtures: a Pylo factory parametrized over every store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pylo import Pylo

STORE_NAMES = ["sqlite", "files"]


@pytest.fixture(params=STORE_NAMES)
def store_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def make_pylo(store_dir: Path, store_name: str) -> Iterator[Callable[..., Pylo]]:
    """Build Pylo objects on one store directory; all are closed at teardown."""
    made: list[Pylo] = []

    def make(number_of_workers: int = 2, **kwargs: Any) -> Pylo:
        kwargs.setdefault("store", store_name)
        pylo = Pylo.local_multithread(store_dir, number_of_workers, **kwargs)
        made.append(pylo)
        return pylo

    yield make
    for pylo in made:
        pylo.close()
