"""Fixtures that build a Pylo on every backend: ``workers``, and the Dask ``cluster`` and ``client``.

A plain module, imported by the conftest of each suite that runs over every
backend (the worker contract suite, the hardening suite), so they all build
backends the same way.
"""

from __future__ import annotations

import copyreg
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS, MODULES, Workers

from pylo import Pylo


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A real Dask LocalCluster with two worker processes, for one test module."""
    # Importing distributed installs tblib's pickling of exceptions for the
    # whole process (copyreg), which changes which exceptions other tests can
    # rebuild; it is imported only here, and copyreg is put back after.
    saved = dict(copyreg.dispatch_table)
    import dask
    from distributed import LocalCluster

    # Dask gives up on a task (KilledWorker) after 2 worker deaths instead of
    # 4, so the crash tests kill fewer processes. Read when the scheduler starts.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    yield local
    local.close()
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(saved)


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    from distributed import Client

    connected = Client(cluster, set_as_default=False)
    yield connected
    connected.close()


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
        elif kind == "dask":
            dask_client = request.getfixturevalue("client")
            dask_client.wait_for_workers(2, timeout=60)
            pylo = Pylo.dask(dask_client, tmp_path / "store", number_of_workers, **kwargs)
        elif kind == "processes":
            pylo = Pylo.local_multiprocess(tmp_path / "store", number_of_workers, start_method=start_method, **kwargs)
        else:
            pylo = Pylo.local_asyncio(tmp_path / "store", number_of_workers, **kwargs)
        made.append(pylo)
        return pylo

    yield Workers(name, make)
    for pylo in made:
        pylo.close()
