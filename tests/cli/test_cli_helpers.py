"""The command line's building blocks, in process."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
from pylo._cli_outcomes import matches_type
from pylo._cli_run import InputLineError, build_retry, read_inputs
from pylo._options import RunOptions
from pylo._progress import ProgressBar
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
        ("session 3fa9c2d1-1b2e-4aaa-8bbb-0123456789ab expired", "session <uuid> expired"),
        ("<Client object at 0x7f3a9c2e1d90> is closed", "<Client object at #> is closed"),
        ("blob 9f86d081884c7d659a2feaa0c55ad015 missing in run 285ad1e8", "blob # missing in run #"),
        ("cannot parse 2026-11-22 16:20:28 (-3 days)", "cannot parse #-#-# #:#:# (# days)"),
        ("can't reach 'db-7' from v2 in 1e-05s", "can't reach '…' from v2 in #s"),
        # A KeyError's message is the key, quoted: keys of one kind group,
        # different keys stay apart.
        ("'user-17'", "'user-#'"),
        ("'price'", "'price'"),
        ("deadbeef is a word", "deadbeef is a word"),
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


def test_three_hundred_failures_of_three_causes_make_three_groups() -> None:
    causes = [
        lambda n: ("ConnectionError", f"request {uuid.UUID(int=n * 7919)} to shard {n % 13} refused"),
        lambda n: (
            "RuntimeError",
            f"<Session object at {hex(0x7F3A00000000 + n * 4096)}> was closed after {n / 7:.3f}s",
        ),
        lambda n: ("ValueError", f"checksum {hashlib.sha1(str(n).encode()).hexdigest()} does not match 'part-{n}.bin'"),
    ]
    groups = group_failures((n, *causes[n % 3](n)) for n in range(300))
    assert [(g.exception_type, len(g.positions)) for g in groups] == [
        ("ConnectionError", 100),
        ("RuntimeError", 100),
        ("ValueError", 100),
    ]
    assert [g.shape for g in groups] == [
        "request <uuid> to shard # refused",
        "<Session object at #> was closed after #s",
        "checksum # does not match '…'",
    ]


def test_missing_keys_group_by_key_and_show_the_real_message() -> None:
    failures = [(n, "KeyError", f"'user-{n}'") for n in range(5)] + [(9, "KeyError", "'price'")]
    groups = group_failures(failures)
    assert [(g.title, len(g.positions), g.example) for g in groups] == [
        ("KeyError: 'user-#'", 5, "'user-0'"),
        ("KeyError: 'price'", 1, "'price'"),
    ]


# -- messages made from templates: fixed words, and values that vary --------------------

_WORDS = st.from_regex(r"[a-z]{1,10}", fullmatch=True)
# The kinds of values that vary between messages of one cause.
_KINDS = {
    "integer": st.integers().map(str),
    "float": st.floats(allow_nan=False, allow_infinity=False).map(str),
    "uuid": st.uuids().map(str),
    "address": st.integers(min_value=0).map(hex),
    "digest": st.binary(min_size=8, max_size=32).map(bytes.hex),
    "quoted": st.text(st.characters(blacklist_characters="'\"\n", blacklist_categories=["Cs"]), max_size=12).map(
        lambda text: f"'{text}'"
    ),
}
# A template: fixed words, and slots (a kind of value) where values go; at least one word.
_TEMPLATES = st.lists(
    st.one_of(
        _WORDS.map(lambda word: ("word", word)), st.sampled_from(sorted(_KINDS)).map(lambda kind: ("slot", kind))
    ),
    min_size=1,
    max_size=5,
).filter(lambda parts: any(part[0] == "word" for part in parts))


def _fill(template: list[tuple[str, str]], data: st.DataObject) -> str:
    return " ".join(text if what == "word" else data.draw(_KINDS[text]) for what, text in template)


def _words(template: list[tuple[str, str]]) -> tuple[str, ...]:
    return tuple(text for what, text in template if what == "word")


@settings(max_examples=40, deadline=None)
@given(templates=st.lists(_TEMPLATES, min_size=1, max_size=3, unique_by=_words), data=st.data())
def test_messages_of_a_template_make_one_group_per_template(
    templates: list[list[tuple[str, str]]], data: st.DataObject
) -> None:
    failures = [
        (position, "ValueError", _fill(templates[position % len(templates)], data))
        for position in range(len(templates) * 3)
    ]
    groups = group_failures(failures)
    assert len(groups) == len(templates)
    for group in groups:  # never merged: each group holds one template's messages
        assert {position % len(templates) for position in group.positions} == {group.positions[0] % len(templates)}


@settings(max_examples=60, deadline=None)
@given(template=_TEMPLATES, text=st.text(max_size=30), data=st.data())
def test_normalizing_twice_changes_nothing(template: list[tuple[str, str]], text: str, data: st.DataObject) -> None:
    for message in (text, _fill(template, data)):
        once = normalize_message(message)
        assert normalize_message(once) == once


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


def test_progress_bars_route_the_pylo_loggers_console_output_until_the_last_one_closes() -> None:
    logger = logging.getLogger("pylo")
    console = logging.StreamHandler(sys.stderr)
    logger.addHandler(console)
    try:
        first = ProgressBar("a", 10)
        routed = list(logger.handlers)
        assert console not in routed  # swapped for one that writes through tqdm
        second = ProgressBar("b", 10)
        first.close()  # bars of two executions end in any order
        assert logger.handlers == routed
        second.close()
        second.close()
        assert console in logger.handlers and len(logger.handlers) == len(routed)
    finally:
        logger.removeHandler(console)


def test_progress_bars_add_no_handler_where_the_pylo_logger_has_none() -> None:
    logger = logging.getLogger("pylo")
    before = list(logger.handlers)
    bar = ProgressBar("a", 10)
    assert logger.handlers == before  # records keep going to the application's handlers, once
    bar.close()


_IDENTIFIER = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@given(module=st.lists(_IDENTIFIER, max_size=3), name=_IDENTIFIER)
def test_type_names_match_with_or_without_the_builtins_module(module: list[str], name: str) -> None:
    stored = ".".join([*module, name])  # as pylo stores it: builtins bare, others qualified
    for asked in (stored, name, f"builtins.{stored}" if not module else stored):
        assert matches_type(stored, asked)
        assert matches_type(f"builtins.{stored}", asked)  # stored the other way: the same answer
    assert not matches_type(stored, f"{name}x")
