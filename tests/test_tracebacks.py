"""A failure record's traceback reads as Python's own, carets aside, and is never lost."""

from __future__ import annotations

import builtins
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pylo._tracebacks import describe_exception, exception_text, refresh_sources


def _deep(levels: int) -> None:
    if levels == 0:
        raise ValueError("bad input\nsecond line")
    _deep(levels - 1)


def _caused() -> None:
    try:
        _deep(2)
    except ValueError as exc:
        raise KeyError("missing") from exc


def _during_handling() -> None:
    try:
        _caused()
    except KeyError:
        raise RuntimeError()


def _suppressed() -> None:
    try:
        _deep(1)
    except ValueError:
        raise LookupError("context hidden") from None


def _recurse() -> None:
    _recurse()


class _HostileStr(Exception):
    def __str__(self) -> str:
        raise TypeError("no")


def _hostile() -> None:
    raise _HostileStr()


def _generated_code() -> None:
    exec("1 / 0")  # a frame whose file has no source: no source line


def _with_note() -> None:
    error = ValueError("noted")
    error.__notes__ = ["a note"]
    raise error


def _syntax() -> None:
    compile("def broken(:\n", "<broken>", "exec")


def _standard(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # The only thing left out: the carets Python 3.11 draws under the failing expression.
    return "".join(line for line in text.splitlines(keepends=True) if not line.strip() or set(line.strip()) - set("^~"))


@pytest.mark.parametrize(
    "failing",
    [lambda: _deep(3), _caused, _during_handling, _suppressed, _recurse, _hostile, _generated_code, _with_note],
    ids=["frames", "cause", "context", "suppressed", "recursion", "hostile-str", "no-source", "note"],
)
def test_the_text_is_pythons_own_traceback(failing: Callable[[], None]) -> None:
    with pytest.raises(BaseException) as caught:
        failing()
    assert exception_text(caught.value) == _standard(caught.value)


def test_a_syntax_error_keeps_pythons_pointer_to_the_error() -> None:
    with pytest.raises(SyntaxError) as caught:
        _syntax()
    assert exception_text(caught.value) == "".join(traceback.format_exception(SyntaxError, caught.value, caught.tb))


def test_leading_frames_of_quiet_files_are_left_out() -> None:
    with pytest.raises(ValueError) as caught:
        _deep(1)
    text = exception_text(caught.value, frozenset({__file__}))
    assert text == "".join(traceback.format_exception_only(ValueError, caught.value))


def test_a_source_file_edited_between_runs_is_read_again(tmp_path: Path) -> None:
    source = tmp_path / "edited_task.py"
    namespace: dict[str, Any] = {}

    def edit(text: str) -> None:
        source.write_text(text)
        exec(compile(text, str(source), "exec"), namespace)

    def failure_text() -> str:
        with pytest.raises(ValueError) as caught:
            namespace["task"]()
        return exception_text(caught.value)

    edit("def task():\n    raise ValueError('first')\n")
    assert "raise ValueError('first')" in failure_text()
    edit("def task():\n    raise ValueError('second one')\n")
    refresh_sources()  # a run starts
    assert "raise ValueError('second one')" in failure_text()


def test_the_lanes_of_one_run_read_a_source_file_once(tmp_path: Path) -> None:
    source = tmp_path / "task_of_a_run.py"
    namespace: dict[str, Any] = {}

    def edit_and_fail(text: str) -> str:
        source.write_text(text)
        exec(compile(text, str(source), "exec"), namespace)
        with pytest.raises(ValueError) as caught:
            namespace["task"]()
        return exception_text(caught.value)

    first_run, second_run = object(), object()
    refresh_sources(first_run)
    assert "'one'" in edit_and_fail("def task():\n    raise ValueError('one')\n")
    refresh_sources(first_run)  # another lane of the same run: the file is not read again
    assert "'one'" in edit_and_fail("def task():\n    raise ValueError('two, longer')\n")
    refresh_sources(second_run)
    assert "'two, longer'" in edit_and_fail("def task():\n    raise ValueError('two, longer')\n")


def test_a_failure_record_keeps_type_message_every_frame_and_the_object() -> None:
    from pylo._codec import get_codec

    with pytest.raises(KeyError) as caught:
        _caused()
    error = caught.value
    described = describe_exception(error, get_codec("pickle"))
    assert described.exc_type == "KeyError" and described.message == "'missing'"
    # File, line, function and source line of every frame, causes included.
    for function, source in [
        ("_caused", "_deep(2)"),
        ("_deep", "_deep(levels - 1)"),
        ("_deep", 'raise ValueError("bad'),
    ]:
        assert f", in {function}\n    {source}" in described.traceback
    assert f'File "{__file__}"' in described.traceback
    assert "The above exception was the direct cause" in described.traceback
    assert described.exception is not None and repr(get_codec("pickle").decode_exception(described.exception)) == repr(
        error
    )
    assert error.__traceback__ is None  # its frames would pin every local of the failed call


def test_a_failure_record_leaves_out_the_quiet_frames_and_keeps_what_cannot_be_encoded() -> None:
    from pylo._codec import get_codec

    with pytest.raises(_HostileStr) as caught:
        _hostile()
    described = describe_exception(caught.value, get_codec("json"), frozenset({__file__}))
    assert described.exc_type == f"{__name__}._HostileStr"
    assert described.message == "<str() of the exception raised TypeError>"
    assert "in _hostile" not in described.traceback  # this file's frames lead the traceback: left out
    assert described.exception is None  # the json codec keeps no exception objects


class _RebuildFails:
    """Pickles, but unpickling it calls its constructor without the argument it needs."""

    def __init__(self, needed: int) -> None:
        self.needed = needed

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RebuildFails, ())


class _RebuildFailsError(Exception):
    """Pickles, but cannot be rebuilt: its constructor needs two arguments."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")


def _with_attribute() -> ValueError:
    error = ValueError("plain")
    error.detail = _RebuildFails(1)  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        pytest.param(ValueError("input 3", 3, 1.5, b"x", None, True), True, id="built-in"),  # plain arguments
        pytest.param(KeyError("missing"), True, id="key-error"),
        pytest.param(ValueError(_RebuildFails(1)), False, id="argument"),  # one that cannot be rebuilt
        pytest.param(_with_attribute(), False, id="attribute"),  # one that cannot be rebuilt
        *(
            # A group holds exceptions of any kind (Python 3.11 and later).
            [pytest.param(builtins.ExceptionGroup("two", [_RebuildFailsError(2, "b")]), False, id="group")]
            if hasattr(builtins, "ExceptionGroup")
            else []
        ),
    ],
)
def test_an_exception_is_kept_only_when_it_can_be_rebuilt(error: BaseException, kept: bool) -> None:
    from pylo._codec import get_codec

    codec = get_codec("pickle")
    encoded = codec.encode_exception(error)
    if not kept:
        assert encoded is None
        return
    assert encoded is not None
    back = codec.decode_exception(encoded)
    assert type(back) is type(error) and back.args == error.args
