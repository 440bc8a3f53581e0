"""``pylo run`` and ``pylo resume``: start an execution from the command line and sum it up.

Both commands build a :class:`~pylo.execution.Pylo` from flags (``resume``
fills in the flags not given from the past execution's recorded options),
run it, and print a summary: counts, failures by type and the command that
resumes what is left. The exit status tells scripts whether anything is
left: 0 when every input finished, 1 when some did not, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TextIO

from pylo._cli_common import (
    CliError,
    StoreChoice,
    format_count,
    import_task,
    recorded_retry,
    resolve_execution_id,
)
from pylo._cli_summary import print_summary
from pylo._codec import short_repr
from pylo._retry_spec import build_policy
from pylo._running import process_is_gone
from pylo.errors import ExecutionExists, InitializerFailed, PyloError
from pylo.execution import Pylo, _new_execution_id
from pylo.stores.base import ExecutionRecord, ExecutionStatus

__all__ = ["build_retry", "read_inputs", "resume_command", "run_command"]

logger = logging.getLogger("pylo.cli")

#: Workers when ``--workers`` is not given (``--processes`` uses one per CPU).
DEFAULT_WORKERS = 8
# Options recorded on an execution that ``resume`` carries over, under the
# name the Pylo constructors use.
_CARRIED = (
    "max_worker_failures",
    "task_executions_before_flush",
    "flush_seconds",
    "store_exceptions",
    "store_results",
    "max_failures",
    "timeout",
    "rate_limit",
)


class InputLineError(CliError):
    """A line of the inputs cannot be turned into an input."""


# -- inputs -----------------------------------------------------------------------


def read_inputs(stream: BinaryIO, name: str, *, as_json: bool) -> Iterator[Any]:
    """Yield one input per line of ``stream``, reading it lazily.

    Lines are UTF-8. A line's ``\\n`` (or ``\\r\\n``) is removed; lines that
    are empty or hold only whitespace are skipped. With ``as_json`` each
    line is parsed as one JSON value, otherwise it is the input as a str.

    Raises:
        InputLineError: A line is not UTF-8, or not JSON with ``as_json``.
    """
    for number, raw in enumerate(stream, 1):
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputLineError(f"line {number} of {name} is not UTF-8 text ({exc.reason} at byte {exc.start})")
        if not text.strip():
            continue
        if not as_json:
            yield text
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputLineError(
                f"line {number} of {name} is not JSON ({exc.msg} at column {exc.colno}): {short_repr(text)}"
            ) from None
        except ValueError as exc:  # valid JSON Python refuses: an integer of more than 4,300 digits
            raise InputLineError(f"line {number} of {name} cannot be read as JSON: {exc}") from None
        if _SURROGATE_ESCAPE.search(text):
            _refuse_lone_surrogates(value, number, name)
        yield value


# A JSON string escape of a UTF-16 surrogate: the only way a lone surrogate
# gets into JSON text that is itself valid UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(value: Any, number: int, name: str) -> None:
    """Refuse a line whose JSON holds a lone surrogate: it is not text, and could never be printed."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputLineError(
            f"line {number} of {name} holds a lone surrogate ({exc.object[exc.start : exc.end]!r}), "
            "which is not Unicode text; pair it or remove it"
        ) from None


def _open_inputs(path: str | None) -> tuple[BinaryIO, str]:
    if path is None or path == "-":
        if sys.stdin is None:
            raise CliError("no inputs: stdin is closed; pass --inputs FILE")
        if sys.stdin.isatty():
            print("pylo: reading inputs from stdin, one per line; end with Ctrl-D", file=sys.stderr)
        return sys.stdin.buffer, "stdin"
    try:
        return open(path, "rb"), path  # closed by run_command after the run
    except OSError as exc:
        raise CliError(f"cannot read inputs from {path}: {exc.strerror or exc}") from None


# -- run options --------------------------------------------------------------------


#: The back-off of ``--retries N``: 0.1 s, doubling, at most 2 s between attempts.
_RETRY_WAIT = {"exponential": {"multiplier": 0.1, "min": 0.0, "max": 2.0, "exp_base": 2.0}}


def build_retry(retries: int, *, asynchronous: bool) -> Any:
    """The policy for ``--retries N``: N more attempts, short exponential back-off.

    Returns:
        A ``tenacity.Retrying`` (``AsyncRetrying`` for asyncio tasks), or
        None for ``N == 0``.
    """
    if retries == 0:
        return None
    return build_policy({"attempts": retries + 1, "wait": _RETRY_WAIT, "reraise": True}, asynchronous=asynchronous)


#: Kinds of workers the command line can run on, by recorded backend name.
_CLI_BACKENDS = ("threads", "processes", "asyncio")


def _backend(
    args: argparse.Namespace, function: Callable[..., Any], spec: str, past: ExecutionRecord | None = None
) -> str:
    """The kind of workers: the flags, else (for a resume) the kind the past execution ran on."""
    is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - objects with an async __call__
    )
    if args.processes and is_async:
        raise CliError(f"{spec} is an async function: run it with --asyncio (or without --processes)")
    if args.asyncio and not is_async:
        raise CliError(f"{spec} is a plain function; --asyncio runs `async def` functions (drop --asyncio)")
    if args.threads and is_async:
        raise CliError(f"{spec} is an async function: run it with --asyncio (or without --threads)")
    if args.processes:
        return "processes"
    if is_async:
        return "asyncio"
    if args.threads or past is None:
        return "threads"
    recorded = past.options.get("workers")
    if recorded == "processes":
        return "processes"
    if recorded is not None and recorded not in _CLI_BACKENDS:
        logger.warning(
            "execution %s ran on %s workers, which the command line cannot start; resuming on threads "
            "(pass --processes for worker processes, or resume it from Python)",
            past.id,
            recorded,
        )
    return "threads"


def _settings(args: argparse.Namespace, backend: str, past: ExecutionRecord | None) -> dict[str, Any]:
    """Constructor keywords from the flags, then the past execution's options, then defaults."""
    recorded = dict(past.options) if past is not None else {}
    settings: dict[str, Any] = {key: recorded[key] for key in _CARRIED if recorded.get(key) is not None}
    workers = args.workers or recorded.get("number_of_workers")
    if workers is None:
        workers = (os.cpu_count() or 1) if backend == "processes" else DEFAULT_WORKERS
    settings["concurrency" if backend == "asyncio" else "number_of_workers"] = workers
    for key in ("max_worker_failures", "timeout", "rate_limit", "max_failures", "store_results"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    asynchronous = backend == "asyncio"
    if args.retries is not None:
        settings["retry"] = build_retry(args.retries, asynchronous=asynchronous)
    else:
        policy = recorded_retry(recorded)
        if isinstance(policy, dict):
            settings["retry"] = build_policy(policy, asynchronous=asynchronous)
        else:
            if policy is not None:
                logger.warning(
                    "execution %s ran with a retry policy made in Python, which the command line cannot "
                    "make again; resuming without retries: pass --retries N to retry",
                    past.id if past is not None else "?",
                )
            settings["retry"] = None
    settings["progress"] = args.progress
    settings["initializer"], settings["initargs"] = _initializer(args, backend, past)
    return settings


def _initializer(
    args: argparse.Namespace, backend: str, past: ExecutionRecord | None
) -> tuple[Callable[..., Any] | None, tuple[Any, ...]]:
    """``--initializer``, else (for a resume) the one the past execution ran with, imported by name."""
    from pylo.workers._initializer import is_async_callable

    flag = getattr(args, "initializer", None)  # parsers without the flag: None
    if flag is not None:
        function, arguments, spec = import_task(flag), (), flag
    elif past is None or not isinstance(past.options.get("initializer"), dict):
        return None, ()
    else:
        recorded = past.options["initializer"]
        name, path, values = recorded.get("name"), recorded.get("path"), recorded.get("args")
        if not isinstance(path, str):
            raise CliError(
                f"execution {past.id} ran with the initializer {name}, which cannot be imported by name "
                "(a lambda, a function defined inside another, or one of a script run as __main__): "
                f"pass one with --initializer MODULE:FUNCTION, or resume it from Python"
            )
        if not isinstance(values, list):
            raise CliError(
                f"execution {past.id} ran with the initializer {name} and initargs that are not JSON values, "
                "which the command line cannot pass again: resume it from Python, or pass "
                "--initializer MODULE:FUNCTION (called with no arguments)"
            )
        try:
            function = import_task(path)
        except CliError as exc:
            raise CliError(
                f"{exc} (the initializer execution {past.id} ran with; pass another with --initializer)"
            ) from None
        arguments, spec = tuple(values), path
    if is_async_callable(function) and backend != "asyncio":
        raise CliError(f"--initializer {spec} is an async function: only `async def` tasks (run on asyncio) await one")
    return function, arguments


def _make_pylo(store: StoreChoice, backend: str, settings: dict[str, Any], *, must_exist: bool) -> Pylo:
    keywords = {**settings, **store.pylo_arguments(must_exist=must_exist)}
    if backend == "processes":
        return Pylo.local_multiprocess(store.value, **keywords)
    if backend == "asyncio":
        return Pylo.local_asyncio(store.value, **keywords)
    return Pylo.local_multithread(store.value, **keywords)


# -- the commands ---------------------------------------------------------------------


def run_command(args: argparse.Namespace, store: StoreChoice) -> int:
    """``pylo run MODULE:FUNCTION``: a new execution over the lines of ``--inputs``."""
    function = import_task(args.task)
    backend = _backend(args, function, args.task)
    settings = _settings(args, backend, None)
    stream, name = _open_inputs(args.inputs)
    execution_id = args.id or _new_execution_id()
    try:
        with _make_pylo(store, backend, settings, must_exist=False) as pylo:
            inputs = read_inputs(stream, name, as_json=args.json)
            return _execute(
                pylo,
                store,
                execution_id,
                lambda: pylo.start_from_scratch(inputs, function, execution_id=execution_id, labels=dict(args.labels)),
                as_json=args.json_summary,
            )
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def resume_command(args: argparse.Namespace, store: StoreChoice) -> int:
    """``pylo resume ID [MODULE:FUNCTION]``: run a past execution's unfinished inputs again."""
    with store.open(must_exist=True) as reader:
        past = reader.get_execution(resolve_execution_id(reader, args.execution_id))
    spec = args.task or past.task_name
    if args.task is None and ("<" in spec or spec.startswith("__main__:")):
        raise CliError(
            f"execution {past.id} ran {spec}, which cannot be imported by name; "
            f"pass the function: pylo resume {past.id} MODULE:FUNCTION"
        )
    try:
        function = import_task(spec)
    except CliError as exc:
        if args.task is not None:
            raise
        raise CliError(f"{exc} (the function execution {past.id} ran; pass another as MODULE:FUNCTION)") from None
    backend = _backend(args, function, spec, past)
    settings = _settings(args, backend, past)
    execution_id = args.id or _new_execution_id()
    _check_resumable(store, past, execution_id)
    print(
        f"resuming {past.id} as {execution_id}: {format_count(past.unfinished)} of "
        f"{format_count(past.total)} inputs to run, with {spec}",
        file=sys.stderr if args.json_summary else sys.stdout,  # stdout holds the JSON summary alone
        flush=True,
    )
    with _make_pylo(store, backend, settings, must_exist=True) as pylo:
        return _execute(
            pylo,
            store,
            execution_id,
            lambda: pylo.start_from_past_execution(
                past.id, function, execution_id=execution_id, labels=dict(args.labels)
            ),
            as_json=args.json_summary,
        )


def _check_resumable(store: StoreChoice, past: ExecutionRecord, execution_id: str) -> None:
    """Refuse, in the command line's words, what ``start_from_past_execution`` would refuse."""
    if not past.inputs_complete:
        raise CliError(
            f"execution {past.id} stopped while its inputs were being read ({format_count(past.total)} recorded, "
            f"none ran): there is nothing to resume; run the `pylo run` command again, with --id {past.id} "
            f"to reuse its id (it replaces this execution), or delete it: pylo rm {past.id}{store.flag()}"
        )
    if past.status is ExecutionStatus.RUNNING and not process_is_gone(past) and past.host == socket.gethostname():
        raise CliError(f"execution {past.id} is still running (process {past.pid}); wait for it to end or stop it")
    with store.open(must_exist=True) as reader:
        try:
            reader.get_execution(execution_id)
        except PyloError:
            return
    raise CliError(f"an execution with id {execution_id} already exists; pass another --id")


def _execute(pylo: Pylo, store: StoreChoice, execution_id: str, start: Callable[[], str], *, as_json: bool) -> int:
    # The id is chosen before the run, so that after Ctrl-C, when start()
    # returns nothing, the summary can still say what to resume.
    with _stdout_kept_for_the_summary(as_json) as out:
        try:
            start()
        except ExecutionExists:
            raise CliError(
                f"an execution with id {execution_id} already exists; pass another --id, "
                f"or run its unfinished inputs again with: pylo resume {execution_id}{store.flag()}"
            ) from None
        except InputLineError as exc:
            raise CliError(f"{exc}; nothing ran (execution {execution_id} is recorded as aborted)") from None
        except InitializerFailed as exc:
            print(f"pylo: error: {exc}", file=sys.stderr)
            print_summary(pylo, store, execution_id, out, as_json=as_json)
            return 1
        except KeyboardInterrupt:
            print_summary(pylo, store, execution_id, out, as_json=as_json, interrupt="ctrl-c")
            return 130
        except SystemExit as exc:  # SIGTERM, while the library runs the execution
            code = exc.code if isinstance(exc.code, int) and exc.code != 0 else 1
            print_summary(pylo, store, execution_id, out, as_json=as_json, interrupt="sigterm" if code == 143 else None)
            return code
        return print_summary(pylo, store, execution_id, out, as_json=as_json)


@contextlib.contextmanager
def _stdout_kept_for_the_summary(as_json: bool) -> Iterator[TextIO]:
    """With ``--json-summary``, stdout holds the summary alone: the run's own output goes to stderr.

    Tasks may print; with worker processes they print through the file
    descriptor they inherited, so it is descriptor 1 that is pointed at
    stderr while the run lasts, not only ``sys.stdout``. Yields where the
    summary is printed.
    """
    if not as_json:
        yield sys.stdout
        return
    try:
        if sys.stdout is None:
            raise OSError("no stdout")
        sys.stdout.flush()
        saved = os.dup(1)
    except OSError:
        raise CliError("--json-summary prints the summary on stdout, which is closed") from None
    summary = open(os.dup(saved), "w", encoding="utf-8", closefd=True)  # noqa: SIM115 - closed below
    try:
        os.dup2(2, 1)
        try:
            yield summary
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
    finally:
        summary.close()
        os.close(saved)
