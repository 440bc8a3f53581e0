"""The text a failure record keeps of an exception: type, message and traceback.

Every failure is described here, wherever it happened (a lane of an
execution, a pipeline's task call, a dead worker process). Failing fast tasks
made the standard formatter the largest cost of a failed input:
``traceback.format_exception`` stats every frame's source file on disk
(``linecache.checkcache``) and, since Python 3.11, parses each source line to
draw carets under the failing expression. A record needs neither, so the
traceback is written here from the frames themselves, in the standard
layout: ``File "...", line N, in function`` and the source line of every
frame, the chain of causes and contexts, repeated recursive frames folded.

Source lines come from ``linecache`` without a check of the file on disk per
failure; :func:`refresh_sources` drops what was read, and is called once per
run, so a file edited between runs is read again. Exceptions the standard
formatter draws specially (syntax errors, exception groups, notes) still go
through it.
"""

from __future__ import annotations

import builtins
import linecache
import traceback
from types import TracebackType
from typing import Any, NamedTuple, Protocol

__all__ = ["Described", "describe_exception", "exception_text", "qualified_name", "refresh_sources", "safe_str"]

#: Repeated frames shown before the rest are folded, as the standard formatter does.
_RECURSIVE_CUTOFF = 3
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_HEADER = "Traceback (most recent call last):\n"
#: Exceptions the standard formatter lays out in its own way (groups exist from Python 3.11).
_SPECIAL: tuple[type, ...] = (SyntaxError, getattr(builtins, "BaseExceptionGroup", SyntaxError))

#: The text of each frame (file, line, function) seen since the last refresh, its source line included.
_texts: dict[tuple[str, int | None, str], str] = {}
#: What the last refresh was for (see refresh_sources).
_refreshed_for: object = None


def refresh_sources(run: object = None) -> None:
    """Forget the frames read so far: the next failures read their source files again.

    Given ``run`` (anything one run's lanes share, such as its settings),
    only its first call does so: a run's many lanes check the files once.
    """
    global _refreshed_for
    if run is not None and run is _refreshed_for:
        return
    _refreshed_for = run
    _texts.clear()
    linecache.checkcache()


def qualified_name(kind: type) -> str:
    """``module.QualName`` of a type, without the module for builtins."""
    module = getattr(kind, "__module__", None)
    name = getattr(kind, "__qualname__", None) or getattr(kind, "__name__", repr(kind))
    if module in (None, "builtins"):
        return str(name)
    return f"{module}.{name}"


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, or a note saying it raised: a hostile ``__str__`` must not lose the failure."""
    try:
        return str(exc)
    except Exception as str_exc:
        return f"<str() of the exception raised {type(str_exc).__name__}>"


class _EncodesExceptions(Protocol):
    def encode_exception(self, exc: BaseException) -> bytes | None: ...


class Described(NamedTuple):
    """What a failure record keeps of an exception (a tuple: made once per failed input)."""

    exc_type: str
    message: str
    traceback: str
    exception: bytes | None


def describe_exception(
    exc: BaseException, codec: _EncodesExceptions, quiet_files: frozenset[str] = frozenset()
) -> Described:
    """Type name, message, traceback text and encoded object of ``exc``, for a failure record.

    The one recipe for every failure record (a lane's input, a pipeline's
    task call): the traceback is written and the exception encoded while its
    frames are there, then the frames are dropped, since they pin every
    local of the failed call in memory. Frames of ``quiet_files`` leading
    the traceback are left out (see :func:`exception_text`).
    """
    text = exception_text(exc, quiet_files)
    encoded = codec.encode_exception(exc)
    exc.__traceback__ = None
    return Described(qualified_name(type(exc)), safe_str(exc), text, encoded)


def exception_text(exc: BaseException, quiet_files: frozenset[str] = frozenset()) -> str:
    """The traceback of ``exc`` as ``traceback.format_exception`` lays it out, carets aside.

    The leading frames of ``exc``'s own traceback whose file is one of
    ``quiet_files`` (pylo calling the task) are left out. Never raises: when
    the traceback cannot be written, the text is the exception's type and
    message.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in quiet_files:
        tb = tb.tb_next
    try:
        chain = _chain(exc)
        if chain is None:
            return "".join(traceback.format_exception(type(exc), exc, tb))
        out: list[str] = []
        for position in range(len(chain) - 1, -1, -1):
            current = chain[position][0]
            _write(current, tb if position == 0 else current.__traceback__, out)
            if position:
                out.append(chain[position - 1][1])
        return "".join(out)
    except Exception:
        return f"{qualified_name(type(exc))}: {safe_str(exc)}\n"


def _chain(exc: BaseException) -> list[tuple[BaseException, str]] | None:
    """``exc`` and its causes or contexts, newest first, each with the sentence leading to it.

    None when one of them needs the standard formatter.
    """
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _SPECIAL) or hasattr(current, "__notes__"):
            return None
        seen.add(id(current))
        if current.__cause__ is not None:
            chain.append((current, _CAUSE))
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            chain.append((current, _CONTEXT))
            current = current.__context__
        else:
            chain.append((current, ""))
            current = None
    return chain


def _write(exc: BaseException, tb: TracebackType | None, out: list[str]) -> None:
    if tb is not None:
        out.append(_HEADER)
        _frames(tb, out)
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("__main__", "builtins"):
        name = f"{kind.__module__}.{name}"
    try:
        message = str(exc)
    except Exception:
        message = "<exception str() failed>"
    out.append(f"{name}: {message}\n" if message else f"{name}\n")


def _frames(tb: TracebackType | None, out: list[str]) -> None:
    last: tuple[str, int | None, str] | None = None
    count = 0
    texts = _texts
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        key = (code.co_filename, tb.tb_lineno, code.co_name)
        tb = tb.tb_next
        if key != last:
            if count > _RECURSIVE_CUTOFF:
                _folded(count - _RECURSIVE_CUTOFF, out)
            last = key
            count = 0
        count += 1
        if count > _RECURSIVE_CUTOFF:
            continue
        text = texts.get(key)
        if text is None:
            text = texts[key] = _frame_text(*key, frame.f_globals)
        out.append(text)
    if count > _RECURSIVE_CUTOFF:
        _folded(count - _RECURSIVE_CUTOFF, out)


def _frame_text(filename: str, lineno: int | None, name: str, module_globals: dict[str, Any]) -> str:
    text = f'  File "{filename}", line {lineno}, in {name}\n'
    if lineno is None:
        return text
    line = linecache.getline(filename, lineno, module_globals).strip()
    return f"{text}    {line}\n" if line else text


def _folded(repeats: int, out: list[str]) -> None:
    out.append(f"  [Previous line repeated {repeats} more time{'s' if repeats > 1 else ''}]\n")
