"""The task context through ``run_pipeline`` on a Dask LocalCluster (worker processes).

A module of its own: distributed changes exception pickling for the whole
process while its client lives (the fixture puts it back at the end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from env_pipeline_tasks import seen, third_time_lucky

from pylo import Pylo

CONFIG = {"api": {"url": "https://example.test", "page_size": 50}, "tags": ["a", "b"]}


def test_the_context_reaches_dask_workers_in_call_and_batch_nodes(tmp_path: Path, dask_client: Any) -> None:
    with Pylo.dask(dask_client, str(tmp_path / "store"), progress=False) as pylo:
        run_id = pylo.run_pipeline([seen.send(1), seen.map([2, 3]), third_time_lucky.map([4])], config=CONFIG)
        single, batch, retried = pylo.get_pipeline_result(run_id)
        keys = [node.key for node in pylo.get_pipeline(run_id).nodes]
    assert (single["run_id"], single["node_key"], single["config"]) == (run_id, keys[0], CONFIG)
    assert [(item["value"], item["node_key"], item["config"]) for item in batch] == [
        (2, keys[1], CONFIG),
        (3, keys[1], CONFIG),
    ]
    assert retried == [(4, 3)]
