"""A child run (a task that returned a pipeline) runs in its parent run's environment:
its configuration, its rate-limit buckets, its max_parallel and its hooks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from env_pipeline_tasks import RATE, child_of_fails_until_fixed, child_of_rated, child_of_seen, status_started
from test_task_environment_runs import assert_spaced, starts

from pylo import Pylo
from pylo.pipeline import PipelineStatus, in_parallel

CONFIG = {"api": {"url": "https://example.test"}, "tags": ["a"]}


def test_a_child_run_sees_its_parent_runs_configuration(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    run_id = pylo.run_pipeline(child_of_seen.send(7), config=CONFIG, max_parallel=3)
    seen = pylo.get_pipeline_result(run_id)
    child_id = pylo.get_pipeline(run_id).nodes[0].child_run_id
    assert seen == {"config": CONFIG, "run_id": child_id, "value": 7}
    assert pylo.get_pipeline(child_id).config == CONFIG  # stored with the child, as with its parent
    assert pylo.store.runs().get_run(child_id).options["max_parallel"] == 3


def test_a_resumed_child_run_keeps_the_configuration_of_its_parent(
    make_pylo: Callable[..., Pylo], tmp_path: Path
) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(CONFIG))
    flag = tmp_path / "broken.flag"
    flag.touch()
    pylo = make_pylo()
    flow = child_of_fails_until_fixed.send(str(flag))
    first = pylo.run_pipeline(flow, config=str(settings))
    assert pylo.get_pipeline(first).status is PipelineStatus.FAILED
    flag.unlink()
    settings.write_text(json.dumps({"changed": True}))  # the run's configuration is the stored one
    second = pylo.resume_pipeline(first, flow)
    assert pylo.get_pipeline_result(second) == CONFIG
    child = pylo.get_pipeline(pylo.get_pipeline(second).nodes[0].child_run_id)
    assert child.parent_id == pylo.get_pipeline(first).nodes[0].child_run_id and child.config == CONFIG


def test_a_rate_key_is_one_bucket_for_a_run_and_its_child_runs(tmp_path: Path) -> None:
    flow = in_parallel([status_started.map(range(3)), child_of_rated.send(3), status_started.send(9)])
    with Pylo.local_multithread(tmp_path / "store", 4) as pylo:
        results: Any = pylo.get_pipeline_result(pylo.run_pipeline(flow, max_parallel=4))
    times = starts(results)
    assert len(times) == 7
    assert_spaced(times, RATE)


class Runs:
    def __init__(self) -> None:
        self.started: list[str] = []

    def pipeline_started(self, event: Any) -> None:
        self.started.append(event.run_id)


def test_a_child_run_tells_its_parents_hooks(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    hook = Runs()
    run_id = pylo.run_pipeline(child_of_seen.send(1), hooks=[hook])
    assert hook.started == [run_id, pylo.get_pipeline(run_id).nodes[0].child_run_id]
