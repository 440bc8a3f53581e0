"""The task environment through ``run_pipeline``: context, configuration, resource waits, rate keys; real stores."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from env_pipeline_tasks import (
    KEY,
    RATE,
    Probe,
    async_started,
    change_config,
    fails_until_fixed,
    output_started,
    seen,
    seen_async,
    seen_unless_flagged,
    status_started,
    third_time_lucky,
    third_time_lucky_async,
)

from pylo import Pylo
from pylo.errors import ConfigError, PipelineValidationError, ResourceUnavailable
from pylo.pipeline import PipelineStatus, TaskState, in_parallel, register_config_loader, task

CONFIG = {"api": {"url": "https://example.test", "page_size": 50}, "tags": ["a", "b"]}


def by_kind(pylo: Pylo, run_id: str) -> dict[str, Any]:
    return {node.kind: node for node in pylo.get_pipeline(run_id).nodes}


# -- the context -------------------------------------------------------------------------


def test_a_context_reaches_a_call_node_and_every_input_of_a_batch_node(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    run_id = pylo.run_pipeline([seen.send("one"), seen.map(["a", "b", "c"])], config=CONFIG)
    single, batch = pylo.get_pipeline_result(run_id)
    nodes = by_kind(pylo, run_id)
    assert single["run_id"] == run_id and single["node_key"] == nodes["call"].key
    assert single["task_name"] == seen.name and single["logger"] == f"pylo.task.{seen.name}"
    assert single["attempt"] == 1 and single["config"] == CONFIG and single["trace_id"] is None
    assert [item["value"] for item in batch] == ["a", "b", "c"]
    assert {(item["run_id"], item["node_key"], item["attempt"]) for item in batch} == {(run_id, nodes["batch"].key, 1)}
    assert all(item["config"] == CONFIG for item in batch)


def test_context_attempt_counts_retries_of_a_call_and_of_each_batch_input(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    run_id = pylo.run_pipeline([third_time_lucky.send("x"), third_time_lucky.map([1, 2, 3])])
    assert pylo.get_pipeline_result(run_id) == [("x", 3), [(1, 3), (2, 3), (3, 3)]]
    assert by_kind(pylo, run_id)["call"].attempts == 3


def test_the_configuration_is_read_only_for_tasks(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    run_id = pylo.run_pipeline(change_config.send(), config=CONFIG)
    (node,) = pylo.get_pipeline(run_id).nodes
    assert node.state is TaskState.FAILED and node.failure is not None
    assert isinstance(node.failure.exception, TypeError)
    assert node.failure.message.startswith("cannot set 'url': the run's configuration is read-only")


def test_tasks_without_context_run_as_before_next_to_ones_with_it(make_pylo: Callable[..., Pylo]) -> None:
    @task
    def plain(value: int) -> int:
        return value + 1

    pylo = make_pylo()
    run_id = pylo.run_pipeline(plain.send(seen.send(1).continue_with(lambda_value_of)), config={"k": 1})
    assert pylo.get_pipeline_result(run_id) == 2


@task
def lambda_value_of(found: dict[str, Any]) -> int:
    return int(found["value"])


@pytest.fixture
def process_pylo(tmp_path: Path) -> Iterator[Pylo]:
    with Pylo.local_multiprocess(tmp_path / "store", 2, start_method="spawn", progress=False) as pylo:
        yield pylo


def test_the_context_reaches_worker_processes_with_its_attempts(process_pylo: Pylo) -> None:
    import os

    run_id = process_pylo.run_pipeline(
        [seen.send("one"), seen.map([1, 2]), third_time_lucky.send("x"), third_time_lucky.map([1, 2])], config=CONFIG
    )
    single, batch, retried, retried_batch = process_pylo.get_pipeline_result(run_id)
    assert single["pid"] != os.getpid() and single["config"] == CONFIG and single["run_id"] == run_id
    assert [(item["value"], item["attempt"], item["config"]) for item in batch] == [(1, 1, CONFIG), (2, 1, CONFIG)]
    assert all(item["pid"] != os.getpid() for item in batch)
    assert retried == ("x", 3) and retried_batch == [(1, 3), (2, 3)]


def test_async_tasks_get_the_context_on_an_asyncio_pylo(tmp_path: Path) -> None:
    with Pylo.local_asyncio(tmp_path / "store", 4, progress=False) as pylo:
        run_id = pylo.run_pipeline(
            [seen_async.send(1), seen_async.map([2, 3]), third_time_lucky_async.map([4]), seen.map([5])],
            config=CONFIG,
        )
        single, batch, retried, plain = pylo.get_pipeline_result(run_id)
        nodes = pylo.get_pipeline(run_id).nodes
    assert (single["node_key"], single["config"], single["attempt"]) == (nodes[0].key, CONFIG, 1)
    assert [(item["value"], item["node_key"]) for item in batch] == [(2, nodes[1].key), (3, nodes[1].key)]
    assert retried == [(4, 3)]
    assert plain[0]["config"] == CONFIG and plain[0]["run_id"] == run_id


# -- configuration -----------------------------------------------------------------------


def test_configuration_files_and_environment_merge_in_order_and_are_stored(
    make_pylo: Callable[..., Pylo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "base.json").write_text(json.dumps({"api": {"url": "https://a.test", "page_size": 50}, "n": 1}))
    (tmp_path / "prod.toml").write_text('n = 2\n[api]\nurl = "https://prod.test"\n')
    (tmp_path / "local.yaml").write_text("api:\n  page_size: 10\n")
    monkeypatch.setenv("RUNTEST16_N", "4")
    sources = [str(tmp_path / "base.json"), tmp_path / "prod.toml", str(tmp_path / "local.yaml"), "env://RUNTEST16_"]
    pylo = make_pylo()
    run_id = pylo.run_pipeline(seen.send(0), config=sources)
    expected = {"api": {"url": "https://prod.test", "page_size": 10}, "n": "4"}
    assert pylo.get_pipeline_result(run_id)["config"] == expected
    assert pylo.get_pipeline(run_id).config == expected
    assert [record.config for record in pylo.list_pipelines()] == [expected]


def test_a_source_that_cannot_load_fails_before_the_run_exists(make_pylo: Callable[..., Pylo], tmp_path: Path) -> None:
    pylo = make_pylo()
    with pytest.raises(ConfigError, match=r"missing\.json"):
        pylo.run_pipeline(seen.send(0), config=[{"a": 1}, str(tmp_path / "missing.json")])
    assert pylo.list_pipelines() == []


VAULT: dict[str, dict[str, Any]] = {}


def read_vault(address: str) -> dict[str, Any]:
    return VAULT[address.removeprefix("runtest16vault://")]


def test_secret_values_are_not_stored_and_are_resolved_again_on_resume(
    make_pylo: Callable[..., Pylo], tmp_path: Path
) -> None:
    register_config_loader("runtest16vault://", read_vault, secret=True)
    VAULT["db"] = {"db": {"password": "s3cr3t"}}
    flag = tmp_path / "broken.flag"
    flag.touch()
    pylo = make_pylo()
    flow = in_parallel([seen.send(0), fails_until_fixed.send(str(flag))])
    first = pylo.run_pipeline(flow, config=[{"db": {"host": "h"}}, "runtest16vault://db"])
    assert pylo.get_pipeline(first).status is PipelineStatus.FAILED
    assert pylo.get_pipeline(first).config == {"db": {"host": "h"}}  # the password is not stored
    flag.unlink()
    VAULT["db"] = {"db": {"password": "rotated"}}
    second = pylo.resume_pipeline(first, flow)
    seen_first, config = pylo.get_pipeline_result(second)
    assert seen_first["config"] == {"db": {"host": "h", "password": "s3cr3t"}}  # kept from the first run
    assert config == {"db": {"host": "h", "password": "rotated"}}
    assert pylo.get_pipeline(second).config == {"db": {"host": "h"}}


def failed_then_fixed(pylo: Pylo, tmp_path: Path, config: Any) -> tuple[str, Any, Path]:
    flag = tmp_path / "broken.flag"
    flag.touch()
    flow = fails_until_fixed.send(str(flag))
    run_id = pylo.run_pipeline(flow, config=config)
    assert pylo.get_pipeline(run_id).status is PipelineStatus.FAILED
    flag.unlink()
    return run_id, flow, flag


def test_a_resume_runs_with_the_configuration_stored_with_the_run(
    make_pylo: Callable[..., Pylo], tmp_path: Path
) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(CONFIG))
    pylo = make_pylo()
    first, flow, _ = failed_then_fixed(pylo, tmp_path, str(settings))
    settings.write_text(json.dumps({"changed": True}))  # the file changes; the run's configuration does not
    second = pylo.resume_pipeline(first, flow)
    assert pylo.get_pipeline_result(second) == CONFIG
    record = pylo.get_pipeline(second)
    assert record.parent_id == first and record.config == CONFIG and record.config_changes == ()


def test_a_resume_given_a_changed_configuration_warns_records_it_and_keeps_the_stored_one(
    make_pylo: Callable[..., Pylo], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pylo = make_pylo()
    first, flow, _ = failed_then_fixed(pylo, tmp_path, CONFIG)
    changed = {"api": {"url": "https://other.test", "page_size": 50}, "tags": ["a", "b"]}
    with caplog.at_level(logging.WARNING, logger="pylo.pipeline"):
        second = pylo.resume_pipeline(first, flow, config=changed)
    assert f"the configuration changed since run {first}" in caplog.text
    assert "api.url: was 'https://example.test', now 'https://other.test'" in caplog.text
    assert pylo.get_pipeline_result(second) == CONFIG
    record = pylo.get_pipeline(second)
    assert record.config == CONFIG
    assert record.config_changes == ("api.url: was 'https://example.test', now 'https://other.test'",)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pylo.pipeline"):
        third = pylo.resume_pipeline(first, flow, config=CONFIG)  # the same: nothing to say
    assert not caplog.records and pylo.get_pipeline(third).config_changes == ()


def test_a_resumed_batch_node_gives_its_remaining_inputs_the_new_run_and_the_stored_configuration(
    make_pylo: Callable[..., Pylo], tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    pylo = make_pylo()
    flow = seen_unless_flagged.map([str(tmp_path / "fine"), str(flag)])
    first = pylo.run_pipeline(flow, config=CONFIG)
    assert pylo.get_pipeline(first).status is PipelineStatus.FAILED
    flag.unlink()
    second = pylo.resume_pipeline(first, flow)
    kept, rerun = pylo.get_pipeline_result(second)
    assert (kept["run_id"], rerun["run_id"]) == (first, second)  # only the failed input ran again
    assert kept["node_key"] == rerun["node_key"] and rerun["config"] == CONFIG


# -- waiting for a resource ----------------------------------------------------------------


@task
def release(event: threading.Event) -> str:
    event.set()
    return "released"


def test_a_node_waits_for_its_resource_while_other_nodes_run(make_pylo: Callable[..., Pylo]) -> None:
    event = threading.Event()
    probe = Probe(event=event)
    pylo = make_pylo()
    # The waiting node is ready only once the other node has run: had the
    # wait blocked the coordinator, the other node would never start.
    flow = [seen.send("late").set(wait_for=probe, wait_timeout=60), release.send(event)]
    run_id = pylo.run_pipeline(flow, max_parallel=2)
    late, released = pylo.get_pipeline_result(run_id)
    assert late["value"] == "late" and released == "released" and probe.calls >= 2


def test_a_batch_node_waits_once_for_its_resource(make_pylo: Callable[..., Pylo]) -> None:
    probe = Probe(ready_after=3)
    pylo = make_pylo()
    run_id = pylo.run_pipeline(seen.map([1, 2, 3, 4]).set(wait_for=probe, wait_timeout=60))
    assert [item["value"] for item in pylo.get_pipeline_result(run_id)] == [1, 2, 3, 4]
    assert probe.calls == 3


def test_a_resource_that_stays_unavailable_fails_only_its_node(make_pylo: Callable[..., Pylo]) -> None:
    probe = Probe()
    pylo = make_pylo()
    waiting = seen.send("never").set(wait_for=probe, wait_timeout=0.2)
    run_id = pylo.run_pipeline([lambda_value_of.send(waiting), seen.send("other")])
    record = pylo.get_pipeline(run_id)
    states = {node.display_name: node.state for node in record.nodes}
    waited = next(node for node in record.nodes if node.display_name == "seen" and node.state is TaskState.FAILED)
    assert record.status is PipelineStatus.FAILED
    assert states["lambda_value_of"] is TaskState.FAILED_DEPENDENCY
    assert [node.state for node in record.nodes if node.display_name == "seen"].count(TaskState.DONE) == 1
    assert waited.failure is not None and isinstance(waited.failure.exception, ResourceUnavailable)
    assert "Probe()" in waited.failure.message and waited.attempts == 0
    assert probe.calls >= 2


# -- rate limits by key -----------------------------------------------------------------------


def starts(results: Any) -> list[float]:
    found: list[float] = []
    for item in results:
        if isinstance(item, list):
            found.extend(starts(item))
        else:
            found.append(item[2])
    return found


def assert_spaced(times: list[float], rate: float) -> None:
    """One bucket of one token: the k-th start is at least ``k / rate`` after the first, give or take one slot."""
    ordered = sorted(times)
    for k, started in enumerate(ordered[1:], start=1):
        assert started - ordered[0] >= (k - 1) / rate, (k, [round(t - ordered[0], 4) for t in ordered])


def keyed_flow() -> Any:
    return in_parallel(
        [status_started.map(range(4)), output_started.map(range(4)), status_started.send(9), output_started.send(9)]
    )


def test_two_tasks_with_one_rate_key_share_one_bucket_across_nodes_and_inputs(tmp_path: Path) -> None:
    with Pylo.local_multithread(tmp_path / "store", 4) as pylo:
        results = pylo.get_pipeline_result(pylo.run_pipeline(keyed_flow(), max_parallel=4))
    times = starts(results)
    assert len(times) == 10
    assert_spaced(times, RATE)


def test_a_rate_key_is_shared_by_worker_processes(process_pylo: Pylo) -> None:
    results = process_pylo.get_pipeline_result(process_pylo.run_pipeline(keyed_flow(), max_parallel=4))
    assert_spaced(starts(results), RATE)


def test_a_rate_key_holds_for_async_tasks_on_an_event_loop(tmp_path: Path) -> None:
    with Pylo.local_asyncio(tmp_path / "store", 4, progress=False) as pylo:
        flow = in_parallel([async_started.map(range(4)), status_started.map(range(4))])
        results = pylo.get_pipeline_result(pylo.run_pipeline(flow))
    assert_spaced(starts(results), RATE)


def test_two_rates_for_one_key_fail_before_the_run_exists(make_pylo: Callable[..., Pylo]) -> None:
    pylo = make_pylo()
    faster = output_started.send(1).set(rate_limit="100/s")
    with pytest.raises(PipelineValidationError, match=f"rate_key '{KEY}' has two rates"):
        pylo.run_pipeline([status_started.send(1), faster])
    with pytest.raises(PipelineValidationError, match="has no rate"):
        pylo.run_pipeline(output_started.send(1))
    assert pylo.list_pipelines() == []


# -- the options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"with_context": "yes"}, TypeError, "with_context must be True or False, got str 'yes'"),
        ({"wait_for": 3}, TypeError, "wait_for must be a callable returning true when the resource is ready"),
        ({"wait_for": Probe(), "wait_timeout": -1}, ValueError, "wait_timeout must be a finite number of seconds"),
        ({"wait_for": Probe(), "wait_timeout": "1"}, TypeError, "wait_timeout must be a number of seconds >= 0"),
        ({"wait_for": Probe(), "wait_timeout": 1e10}, ValueError, "wait_timeout must be at most 604800 seconds"),
        ({"wait_timeout": 5}, ValueError, "wait_timeout needs wait_for: give the probe to wait for too"),
        ({"rate_limit": "fast"}, ValueError, "rate_limit 'fast' is not a rate"),
        ({"rate_limit": 0}, ValueError, "rate_limit must be > 0 task starts per second, got 0"),
        ({"rate_key": ""}, TypeError, "rate_key must be a non-empty str, got str ''"),
    ],
)  # fmt: skip
def test_bad_environment_options_fail_at_decoration_and_in_set(
    options: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error) as raised:
        task(**options)(len)
    assert str(raised.value).startswith(message)
    with pytest.raises(error) as raised:
        seen.send(1).set(**options)
    assert str(raised.value).startswith(message)
