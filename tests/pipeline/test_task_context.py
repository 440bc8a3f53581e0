"""TaskContext: what a with_context task receives; it pickles and its configuration is read-only."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from env_tasks import CONFIG, context, describe, describe_async, fails_twice_then_reports_attempt
from tenacity import Retrying, stop_after_attempt, wait_none

from pylo import Pylo
from pylo.pipeline import FrozenConfig
from pylo.pipeline._context import AsyncContextCall, ContextCall, bind_context, counting_attempts


def test_context_pickles_with_its_configuration() -> None:
    ctx = context()
    for dumps in (pickle.dumps, cloudpickle.dumps):
        copy = pickle.loads(dumps(ctx))
        assert copy == ctx
        assert isinstance(copy.config, FrozenConfig)
        assert copy.config["api"]["retries"][2]["deep"] is True


def test_configuration_is_read_only_at_every_depth() -> None:
    ctx = context()
    with pytest.raises(TypeError, match="read-only"):
        ctx.config["name"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        ctx.config["api"]["url"] = "https://elsewhere.test"
    with pytest.raises(TypeError, match="read-only"):
        del ctx.config["api"]  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="read-only"):
        ctx.config._data = {}  # type: ignore[misc]
    assert isinstance(ctx.config["api"]["retries"], tuple)  # lists are frozen as tuples
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.config = FrozenConfig()  # type: ignore[misc]


def test_the_source_mapping_and_the_copy_are_independent_of_the_context() -> None:
    source = {"api": {"url": "a"}}
    ctx = context(config=source)
    source["api"]["url"] = "changed after"
    assert ctx.config["api"]["url"] == "a"
    mutable = ctx.config.to_dict()
    mutable["api"]["url"] = "b"
    assert ctx.config["api"]["url"] == "a"
    assert mutable == {"api": {"url": "b"}}
    assert context().config.to_dict() == {
        "api": {"url": "https://example.test", "retries": [1, 2, {"deep": True}]},
        "name": "nightly",
    }


def test_configuration_reads_like_a_mapping() -> None:
    config = context().config
    assert dict(config)["name"] == "nightly"
    assert config.get("missing", 3) == 3
    assert config == FrozenConfig(CONFIG)
    assert set(config) == {"api", "name"}
    assert "FrozenConfig" in repr(config)


def test_logger_is_named_for_the_task() -> None:
    ctx = context()
    assert ctx.logger is logging.getLogger("pylo.task.download")
    assert pickle.loads(pickle.dumps(ctx)).logger is ctx.logger


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"run_id": ""}, "run_id must be a non-empty string"),
        ({"node_key": None}, "node_key must be a non-empty string"),
        ({"attempt": 0}, "attempt must be an int >= 1, got 0"),
        ({"attempt": True}, "attempt must be an int >= 1, got True"),
    ],
)
def test_context_fields_are_validated(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        context(**changes)


def test_config_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="config must be a mapping, got list"):
        context(config=[1])


def test_context_call_passes_the_context_first_and_pickles() -> None:
    call = bind_context(describe, context())
    assert isinstance(call, ContextCall)
    copy = pickle.loads(pickle.dumps(call))
    assert copy(21) == ("run-1", "download#0", "download", 1, "https://example.test", context().trace_id, 42)
    assert "download#0" in repr(copy)


def test_an_async_task_gets_an_async_call() -> None:
    call = bind_context(describe_async, context())
    assert isinstance(call, AsyncContextCall)
    assert asyncio.run(pickle.loads(pickle.dumps(call))(1)) == ("download#0", 2)


def test_counting_attempts_tells_each_input_its_attempt() -> None:
    seen: list[int] = []
    user_before = seen.append
    policy = counting_attempts(Retrying(stop=stop_after_attempt(3), wait=wait_none(), before=lambda s: user_before(1)))
    call = ContextCall(fails_twice_then_reports_attempt, context())
    results = []
    for value in (5, 6):  # as a lane runner drives the policy
        for attempt in policy:
            with attempt:
                results.append(call(value))
    assert results == [(5, 3), (6, 3)]
    assert len(seen) == 6  # the policy's own before hook still runs
    assert counting_attempts(policy).before.then is policy.before.then  # not wrapped twice
    pickle.loads(cloudpickle.dumps(policy))


def test_a_stale_attempt_does_not_reach_a_call_without_retries() -> None:
    policy = counting_attempts(Retrying(stop=stop_after_attempt(3), wait=wait_none()))
    for attempt in policy:
        with attempt:
            ContextCall(fails_twice_then_reports_attempt, context())(1)
    assert ContextCall(describe, context())(1)[3] == 1


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_batch_inputs_get_the_context_and_their_attempt_on_every_worker(tmp_path: Path, backend: str) -> None:
    make = Pylo.local_multithread if backend == "threads" else Pylo.local_multiprocess
    retry = counting_attempts(Retrying(stop=stop_after_attempt(3), wait=wait_none()))
    pylo = make(str(tmp_path / "store"), number_of_workers=2, retry=retry, store_results=True, progress=False)
    try:
        execution_id = pylo.start_from_scratch(range(4), ContextCall(fails_twice_then_reports_attempt, context()))
        assert pylo.get_results(execution_id) == [(value, (value, 3)) for value in range(4)]
        execution_id = pylo.start_from_scratch(range(3), ContextCall(describe, context()))
        assert [result[-1] for _, result in pylo.get_results(execution_id)] == [0, 2, 4]
        assert {result[:6] for _, result in pylo.get_results(execution_id)} == {
            ("run-1", "download#0", "download", 1, "https://example.test", context().trace_id)
        }
    finally:
        pylo.close()


def test_async_batch_inputs_get_the_context(tmp_path: Path) -> None:
    pylo = Pylo.local_asyncio(str(tmp_path / "store"), 2, store_results=True, progress=False)
    try:
        execution_id = pylo.start_from_scratch(range(3), bind_context(describe_async, context()))
        assert pylo.get_results(execution_id) == [(value, ("download#0", value + 1)) for value in range(3)]
    finally:
        pylo.close()
