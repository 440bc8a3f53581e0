"""The command line's building blocks, in process."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from tenacity import AsyncRetrying, Retrying

from pylo._cli_common import (
    StoreChoice,
    format_duration,
    group_failures,
    normalize_message,
    recorded_retries,
)
from pylo._cli_run import InputLineError, build_retry, read_inputs
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
    assert recorded_retries({"retry": repr(policy)}) == 3
    assert isinstance(build_retry(1, asynchronous=True), AsyncRetrying)
    assert recorded_retries({"retry": None}) == 0
    assert recorded_retries({}) == 0
    assert recorded_retries({"retry": repr(Retrying())}) is None  # made in Python: unknown


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
