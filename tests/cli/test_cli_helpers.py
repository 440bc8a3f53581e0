"""The command line's building blocks, in process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_fixed,
)

from pylo._cli_common import (
    StoreChoice,
    describe_recorded_retry,
    format_duration,
    group_failures,
    normalize_message,
    recorded_retry,
)
from pylo._cli_run import InputLineError, build_retry, read_inputs
from pylo._options import RunOptions
from pylo._retry_spec import build_policy, describe_retry
from pylo.cli import main


@pytest.mark.parametrize(
    ("message", "shape"),
    [
        ("pricing service timed out for record 17", "pricing service timed out for record #"),
        ("could not convert string to float: '12,50 EUR'", "could not convert string to float: '…'"),
        ('no such key "user-42"', 'no such key "…"'),
        ("HTTP 503 after 2.5s", "HTTP # after #s"),
        ("x1 failed with code -3", "x1 failed with code #"),
        ("  spread \n over lines ", "spread over lines"),
        (None, ""),
    ],
)
def test_messages_are_normalized_so_that_alike_failures_group(message: str | None, shape: str) -> None:
    assert normalize_message(message) == shape


def test_failures_group_by_type_and_shape_largest_first() -> None:
    groups = group_failures(
        [
            (9, "TimeoutError", "timed out for record 9"),
            (1, "ValueError", "bad 'a'"),
            (4, "TimeoutError", "timed out for record 4"),
            (6, "TimeoutError", "timed out for record 6"),
            (2, None, None),
        ]
    )
    assert [(g.title, list(g.positions), g.example) for g in groups] == [
        ("TimeoutError: timed out for record #", [4, 6, 9], "timed out for record 9"),
        ("ValueError: bad '…'", [1], "bad 'a'"),
        ("(exception not stored: run with store_exceptions=True to keep it)", [2], None),
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.123, "0.12s"), (42.0, "42.0s"), (185, "3m05s"), (3725, "1h02m"), (2 * 86400 + 7200, "2d02h")],
)
def test_durations(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_input_lines_are_read_lazily() -> None:
    class Stream(io.BytesIO):
        lines_read = 0

        def __next__(self) -> bytes:
            Stream.lines_read += 1
            return super().__next__()

    inputs = read_inputs(Stream(b"a\n\nb\r\n \nc"), "test", as_json=False)
    assert next(inputs) == "a"
    assert Stream.lines_read == 1
    assert list(inputs) == ["b", "c"]


def test_bad_lines_name_their_number() -> None:
    with pytest.raises(InputLineError, match=r"^line 2 of f\.txt is not UTF-8 text \(invalid start byte at byte 0\)$"):
        list(read_inputs(io.BytesIO(b"ok\n\xff\n"), "f.txt", as_json=False))
    with pytest.raises(
        InputLineError, match=r"^line 3 of f\.txt is not JSON \(Expecting value at column 2\): ' nan!'$"
    ):
        list(read_inputs(io.BytesIO(b"1\n\n nan!\n"), "f.txt", as_json=True))


def test_retry_policy_round_trips_through_the_recorded_options() -> None:
    assert build_retry(0, asynchronous=False) is None
    policy = build_retry(3, asynchronous=False)
    assert isinstance(policy, Retrying)
    assert policy.reraise
    recorded = RunOptions(1, retry=policy).describe()
    assert recorded["retry_policy"]["attempts"] == 4
    assert describe_recorded_retry(recorded) == "retries=3"
    assert isinstance(build_retry(1, asynchronous=True), AsyncRetrying)
    assert recorded_retry({"retry": None, "retry_policy": None}) is None
    assert recorded_retry({}) is None
    # Made in Python with a predicate: recorded, but not as data.
    custom = RunOptions(1, retry=Retrying(retry=retry_if_exception_type(OSError))).describe()
    assert custom["retry_policy"] == "custom"
    assert describe_recorded_retry(custom) == "retry=custom tenacity policy"
    # A record from before retry_policy: its repr is not parsed back.
    assert recorded_retry({"retry": repr(policy)}) == "custom"


@pytest.mark.parametrize(
    "policy",
    [
        Retrying(stop=stop_after_attempt(2)),
        Retrying(stop=stop_after_attempt(5), wait=wait_fixed(1.5), reraise=True),
        AsyncRetrying(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=2, max=30)),
    ],
)
def test_retry_policies_of_the_common_shape_are_data_and_are_made_again(policy: Retrying) -> None:
    described = describe_retry(policy)
    assert isinstance(described, dict)
    assert json.loads(json.dumps(described)) == described
    again = build_policy(described, asynchronous=isinstance(policy, AsyncRetrying))
    assert type(again) is type(policy)
    assert describe_retry(again) == described


def test_store_choice_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYLO_STORE", raising=False)
    assert StoreChoice.resolve(None) == StoreChoice(".pylo", False)
    monkeypatch.setenv("PYLO_STORE", "/data/pylo")
    assert StoreChoice.resolve(None) == StoreChoice("/data/pylo", True)
    assert StoreChoice.resolve("other") == StoreChoice("other", True)
    assert StoreChoice("postgresql://u@h/db", True).is_url
    assert StoreChoice("my store", True).flag() == " --store 'my store'"
    assert StoreChoice(".pylo", False).flag() == ""
    assert StoreChoice("postgresql://me:secret@db/pylo", True).flag() == " --store 'postgresql://me:***@db/pylo'"


def test_main_in_process_returns_the_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--store", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("pylo: error: no pylo store at ")
