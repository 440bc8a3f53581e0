"""The worker contract suite runs over every backend through the ``workers`` fixture."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS, MODULES, Workers

from pylo import Pylo


@pytest.fixture(params=BACKENDS)
def workers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workers]:
    name = str(request.param)
    kind, _, start_method = name.partition("-")
    if importlib.util.find_spec(MODULES[kind]) is None:
        pytest.skip(f"{MODULES[kind]} is not part of this build")
    made: list[Pylo] = []

    def make(number_of_workers: int = 2, **kwargs: Any) -> Pylo:
        kwargs.setdefault("progress", False)
        if kind == "threads":
            pylo = Pylo.local_multithread(tmp_path / "store", number_of_workers, **kwargs)
        elif kind == "processes":
            pylo = Pylo.local_multiprocess(tmp_path / "store", number_of_workers, start_method=start_method, **kwargs)
        else:
            pylo = Pylo.local_asyncio(tmp_path / "store", number_of_workers, **kwargs)
        made.append(pylo)
        return pylo

    yield Workers(name, make)
    for pylo in made:
        pylo.close()
