"""The ``pylo`` command: run a function over the lines of a file, inspect and resume executions.

::

    pylo run tasks:download --inputs ids.txt --workers 16 --retries 2
    pylo list
    pylo failures 20261122-154501-3fa9c2d1
    pylo resume 20261122-154501-3fa9c2d1 tasks_fixed:download

Commands live in ``_cli_run`` (run, resume), ``_cli_inspect`` (list,
show, failures, inputs) and ``_cli_housekeeping`` (rm, prune); this
module parses arguments, sets up logging and
turns errors into one line and an exit status (see docs/cli.md).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from pylo._cli_common import DEFAULT_STORE, STORE_ENV, CliError, StoreChoice
from pylo._labels import check_labels
from pylo._ratelimit import parse_rate_limit
from pylo.errors import PyloError
from pylo.execution import _check_execution_id
from pylo.stores.base import ExecutionStatus

__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNFINISHED", "EXIT_USAGE", "main"]

#: Every input finished (or a read command succeeded).
EXIT_OK = 0
#: The execution ended with unfinished inputs: inspect and resume it.
EXIT_UNFINISHED = 1
#: A usage error: bad arguments, an unknown id, no store, a damaged store.
EXIT_USAGE = 2
#: Interrupted with Ctrl-C; the execution was saved and can be resumed.
EXIT_INTERRUPTED = 130


# -- argument types: messages name the flag the user typed ------------------------


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _execution_id(text: str) -> str:
    try:
        return _check_execution_id("ID", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("ID ", "", 1)) from None


def _type_name(text: str) -> str:
    # As pylo stores it: dotted identifiers, "<locals>" for a class made in a function.
    parts = text.split(".")
    if not all(part.isidentifier() or part == "<locals>" for part in parts) or text == "builtins":
        raise argparse.ArgumentTypeError(
            f"must be an exception type: its name (TimeoutError) or its qualified name "
            f"(builtins.TimeoutError, requests.exceptions.HTTPError), got {text!r}"
        )
    return text


def _label(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    try:
        check_labels({key: value}, "label")
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return key, value


def _labels_option(parser: argparse._ActionsContainer, help_text: str) -> None:
    parser.add_argument(
        "--label", dest="labels", type=_label, action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def _rate(text: str) -> float:
    try:
        rate = parse_rate_limit(float(text) if text.replace(".", "", 1).isdigit() else text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("rate_limit ", "", 1)) from None
    assert rate is not None
    return rate


# -- the parser ---------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other pylo error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"pylo: error: {message} (see `{self.prog} --help`)\n")


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before and after the command name; a subcommand's copy must
    # not reset what was given before it, hence SUPPRESS there.
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--store",
        metavar="DIR|URL",
        default=default,
        help=f"store directory (SQLite) or SQLAlchemy URL; default ${STORE_ENV} or ./{DEFAULT_STORE}",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS, help="more log output (-vv: debug)"
    )
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS, help="only errors"
    )


def _run_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run options (resume: default to the past execution's)")
    group.add_argument(
        "--workers", type=_int_at_least(1), metavar="N", help="workers (default 8; CPUs with --processes)"
    )
    backend = group.add_mutually_exclusive_group()
    backend.add_argument(
        "--threads", action="store_true", help="run tasks in threads (the default for `pylo run`; resume: override)"
    )
    backend.add_argument("--processes", action="store_true", help="run tasks in worker processes (CPU-bound work)")
    backend.add_argument(
        "--asyncio", action="store_true", help="run `async def` tasks on an event loop (chosen for them anyway)"
    )
    group.add_argument(
        "--max-worker-failures",
        type=_int_at_least(1),
        metavar="K",
        help="a worker stops after K failed inputs (default 1000)",
    )
    group.add_argument("--max-failures", type=_int_at_least(1), metavar="K", help="stop all after K failed inputs")
    group.add_argument(
        "--retries", type=_int_at_least(0), metavar="N", help="retry a failing input N times (default 0)"
    )
    group.add_argument("--timeout", type=_seconds, metavar="S", help="fail an attempt that runs longer than S seconds")
    group.add_argument("--rate-limit", type=_rate, metavar="R", help="most task starts per second: 20, 20/s, 100/min")
    group.add_argument(
        "--initializer",
        metavar="MODULE:FUNCTION",
        help="called with no arguments once in each worker before its first input (open a connection)",
    )
    group.add_argument("--id", type=_execution_id, metavar="ID", help="id of the new execution (default: generated)")
    _labels_option(group, "label the new execution (repeatable; a resume keeps its parent's labels)")
    group.add_argument(
        "--json-summary",
        action="store_true",
        help="print the summary as one JSON object on stdout (keys: docs/cli.md); the run's output goes to stderr",
    )
    for flag, text in (
        ("--store-results", "keep return values (see `pylo inputs --results`)"),
        ("--progress", "progress bar on stderr (default: when stderr is a terminal)"),
    ):
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)


def build_parser() -> argparse.ArgumentParser:
    """The ``pylo`` argument parser, with one subcommand per command."""
    from pylo import __version__

    parser = _Parser(
        prog="pylo",
        description="Run a function over many inputs with a durable snapshot; inspect and resume executions.",
        epilog=(
            "Exit status: 0 all inputs finished, 1 some unfinished, 2 usage error, 130 interrupted (Ctrl-C), "
            "143 terminated (SIGTERM), 141 output pipe closed (SIGPIPE)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"pylo {__version__}")
    _common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        _common(sub, top=False)
        return sub

    run = command("run", "run MODULE:FUNCTION over inputs, one per line")
    run.add_argument(
        "task", metavar="MODULE:FUNCTION", help="the task, imported from the current directory or PYTHONPATH"
    )
    run.add_argument("--inputs", metavar="FILE", help="file of inputs, one per line; - or omitted: stdin")
    run.add_argument("--json", action="store_true", help="each line is a JSON value (default: the line as a str)")
    _run_options(run)

    resume = command("resume", "run a past execution's unfinished inputs again")
    resume.add_argument("execution_id", metavar="ID", help="an execution id, or last for the newest")
    resume.add_argument("task", metavar="MODULE:FUNCTION", nargs="?", help="the (fixed) task; default: the one ID ran")
    _run_options(resume)

    listing = command("list", "list executions, oldest first")
    _labels_option(listing, "only executions with this label (repeatable: all of them)")
    listing.add_argument("--status", choices=[str(s) for s in ExecutionStatus], help="only executions with this status")
    listing.add_argument("--last", type=_int_at_least(1), metavar="N", help="only the newest N (after the filters)")
    listing.add_argument("--json", action="store_true", help="one JSON array of executions (keys: docs/cli.md)")

    show = command("show", "one execution in detail, with lineage and throughput")
    show.add_argument("execution_id", metavar="ID", help="an execution id, or last for the newest")
    show.add_argument("--json", action="store_true", help="one JSON object (keys: docs/cli.md)")

    failures = command("failures", "failures grouped by exception type and message")
    failures.add_argument("execution_id", metavar="ID", help="an execution id, or last for the newest")
    failures.add_argument("--traceback", action="store_true", help="print a traceback for each group")
    failures.add_argument(
        "--type", type=_type_name, metavar="NAME", help="only exceptions of this type (ValueError, mod.MyError)"
    )
    failures.add_argument("--json", action="store_true", help="one JSON object: groups and failures (docs/cli.md)")

    inputs = command("inputs", "print an execution's inputs, one per line")
    inputs.add_argument("execution_id", metavar="ID", help="an execution id, or last for the newest")
    states = inputs.add_mutually_exclusive_group()
    for state in ("unfinished", "finished", "failed"):
        states.add_argument(f"--{state}", dest="state", action="store_const", const=state, help=f"only {state} inputs")
    inputs.add_argument(
        "--type", type=_type_name, metavar="NAME", help="with --failed: only failures of this exception type"
    )
    inputs.add_argument("--json", action="store_true", help="print each input as JSON")
    inputs.add_argument("--results", action="store_true", help="finished inputs with their results (--store-results)")
    inputs.add_argument(
        "--outcomes", action="store_true", help="one row per input: position, state, exception, worker (CSV; --json)"
    )

    from pylo._cli_housekeeping import add_housekeeping_parser
    from pylo._cli_pipeline import add_pipeline_parser

    add_housekeeping_parser(command, _labels_option)
    add_pipeline_parser(command, _common)
    return parser


# -- main -----------------------------------------------------------------------------


class _OneLineFormatter(logging.Formatter):
    """One line per record: a logged exception is named, its traceback shown only with ``-vv``.

    The library logs some errors with their traceback (a flush that a full
    disk refused, say); at a terminal that is a hundred lines burying the
    one that says what happened.
    """

    def __init__(self, fmt: str, *, tracebacks: bool) -> None:
        super().__init__(fmt)
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self._tracebacks or not record.exc_info:
            return super().format(record)
        exc = record.exc_info[1]
        brief = logging.makeLogRecord(record.__dict__)
        brief.exc_info = brief.exc_text = None
        brief.msg, brief.args = record.getMessage(), None
        if exc is not None:
            detail = " ".join(str(exc).split())
            brief.msg += f": {type(exc).__name__}" + (f": {detail}" if detail else "")
        return " ".join(super().format(brief).split("\n"))


@contextlib.contextmanager
def _command_logging(verbose: int, quiet: bool) -> Iterator[None]:
    """Send the library's log records to stderr while the command runs.

    The library never adds handlers; the command does, and takes them away
    again on return, so calling :func:`main` inside another program (or a
    test) leaves that program's logging as it found it.
    """
    logger = logging.getLogger("pylo")
    saved = (logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("pylo: %(levelname)s: %(message)s", tracebacks=verbose >= 2))
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)])
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _dispatch(args: argparse.Namespace) -> int:
    from pylo import _cli_housekeeping, _cli_inspect, _cli_pipeline, _cli_run

    handlers = {
        "run": _cli_run.run_command,
        "resume": _cli_run.resume_command,
        "list": _cli_inspect.list_command,
        "show": _cli_inspect.show_command,
        "failures": _cli_inspect.failures_command,
        "inputs": _cli_inspect.inputs_command,
        "rm": _cli_housekeeping.rm_command,
        "prune": _cli_housekeeping.prune_command,
        "pipeline": _cli_pipeline.pipeline_command,
    }
    return handlers[args.command](args, StoreChoice.resolve(args.store))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pylo`` command.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status (see :data:`EXIT_OK` and the other ``EXIT_*`` values).
    """
    args = build_parser().parse_args(argv)
    with _command_logging(args.verbose, args.quiet):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except (CliError, PyloError, TypeError, ValueError) as exc:
        # PyloError covers unknown ids and damaged stores; TypeError and
        # ValueError are the library's argument checks (an invalid --id).
        logging.getLogger("pylo.cli").debug("the error in full", exc_info=True)
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"pylo: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # outside a run: nothing to save
        print("pylo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`pylo inputs ID | head`). Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
