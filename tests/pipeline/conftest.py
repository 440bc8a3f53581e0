"""Pipeline tests: clean call logs and gates for every test, and one Dask cluster for the modules that ask."""

from __future__ import annotations

import copyreg
import importlib.util
from collections.abc import Iterator
from typing import Any

import control_tasks
import pipeline_tasks
import pytest


@pytest.fixture(autouse=True)
def clean_calls() -> Iterator[None]:
    pipeline_tasks.reset()
    control_tasks.reset()
    yield
    for event in list(control_tasks.GATES.values()):
        event.set()  # never leave a node thread waiting
    control_tasks.reset()
    pipeline_tasks.reset()


@pytest.fixture(scope="package")
def dask_cluster_client() -> Iterator[Any]:
    """One Dask LocalCluster (one worker process, two threads) for every pipeline module that asks."""
    if importlib.util.find_spec("distributed") is None:
        pytest.skip("distributed is not part of this build")
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def dask_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The package's Dask client; exception pickling is put back as it was at the end of each module.

    Importing distributed installs tblib's exception pickling in copyreg for
    the whole process: saved before the cluster is first made, restored after
    each module that used it, as tests/workers does.
    """
    saved = dict(copyreg.dispatch_table)
    client = request.getfixturevalue("dask_cluster_client")
    client.wait_for_workers(1, timeout=60)
    yield client
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(saved)
