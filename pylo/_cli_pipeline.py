"""``pylo pipeline run|resume|list|show|graph|pause|unpause|cancel``: run, read and steer pipeline runs.

``run`` and ``resume`` import a pipeline (``MODULE:ATTR``: a pipeline, a
list of them, or a function returning either), build a
:class:`~pylo.execution.Pylo` from the worker flags shared with ``pylo run``,
run it to its end and sum it up; ``list`` and ``show`` read runs, never
change them. Each takes ``--json``: the objects :func:`run_json` makes,
whose keys are documented in docs/pipelines.md and kept stable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from pylo._cli_common import CliError, StoreChoice, _one_line, format_duration, format_time, import_attribute
from pylo._cli_run import _make_pylo, _settings
from pylo.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNFINISHED, _int_at_least, _rate, _seconds
from pylo.errors import PyloError
from pylo.execution import Pylo
from pylo.pipeline import NodeRecord, Pipeline, PipelineRecord, PipelineStatus, Task, TaskState

__all__ = ["add_pipeline_parser", "import_pipeline", "pipeline_command", "run_json"]

#: Longest failure message shown in a table cell.
_CELL = 60


# -- the parser -----------------------------------------------------------------------


def _id(text: str) -> str:
    from pylo.execution import _check_execution_id

    try:
        return _check_execution_id("ID", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("ID ", "", 1)) from None


def _worker_options(parser: argparse.ArgumentParser, *, run_options: bool = True) -> None:
    if run_options:
        _run_options(parser)
    _worker_flags(parser)


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", type=_id, metavar="ID", help="id of the new run (default: generated)")
    parser.add_argument(
        "--max-parallel", type=_int_at_least(1), metavar="N", help="most nodes running at once (default: --workers)"
    )
    parser.add_argument("--json", action="store_true", help="print the run as JSON instead of a summary")
    parser.add_argument(
        "--config",
        action="append",
        metavar="PATH",
        help="the run's configuration (what with_context tasks read): a .json, .toml, .yml/.yaml file, "
        "an env://PREFIX_ or a registered scheme://; repeat it to merge several, later wins. A resume "
        "runs with the past run's configuration and warns when this one differs from it",
    )


def _worker_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "worker options (as for `pylo run`): the Pylo that runs the pipeline, and so every batch node's "
        "execution; a task's own retry and timeout win, and are all a call node uses"
    )
    group.add_argument(
        "--workers", type=_int_at_least(1), metavar="N", help="workers (default 8; CPUs with --processes)"
    )
    group.add_argument("--processes", action="store_true", help="run tasks in worker processes (CPU-bound work)")
    group.add_argument(
        "--max-worker-failures",
        type=_int_at_least(1),
        metavar="K",
        help="in a batch node, a worker stops after K failed inputs (default 1000)",
    )
    group.add_argument(
        "--max-failures", type=_int_at_least(1), metavar="K", help="a batch node stops after K failed inputs"
    )
    group.add_argument(
        "--retries", type=_int_at_least(0), metavar="N", help="retry a batch node's failing input N times (default 0)"
    )
    group.add_argument(
        "--timeout", type=_seconds, metavar="S", help="fail a batch node's input that runs longer than S seconds"
    )
    group.add_argument(
        "--rate-limit", type=_rate, metavar="R", help="most batch input starts per second: 20, 20/s, 100/min"
    )
    group.add_argument(
        "--initializer",
        metavar="MODULE:FUNCTION",
        help="called with no arguments once in each worker of a batch node, before its first input",
    )


def add_pipeline_parser(
    command: Callable[[str, str], argparse.ArgumentParser],
    common: Callable[..., None],
) -> None:
    """Add ``pylo pipeline`` and its subcommands.

    Args:
        command: Makes a top-level subcommand parser (name, summary).
        common: Adds the options every command takes (``--store``, ``-v``,
            ``-q``) to a parser: called as ``common(parser, top=False)``.
    """
    group = command("pipeline", "run pipelines and inspect their runs (see docs/pipelines.md)")
    subcommands = group.add_subparsers(dest="pipeline_command", metavar="SUBCOMMAND", required=True)

    def sub(name: str, summary: str) -> argparse.ArgumentParser:
        parser = subcommands.add_parser(name, help=summary, description=summary)
        common(parser, top=False)
        return parser

    run = sub("run", "run a pipeline to its end")
    run.add_argument("pipeline", metavar="MODULE:ATTR", help="a pipeline, or a function returning one")
    _worker_options(run)

    resume = sub("resume", "run what a past run did not finish, with the (fixed) pipeline")
    resume.add_argument("past_run", metavar="RUN")
    resume.add_argument("pipeline", metavar="MODULE:ATTR", help="the (fixed) pipeline, or a function returning one")
    _worker_options(resume)

    listing = sub("list", "list pipeline runs, oldest first")
    listing.add_argument("--json", action="store_true", help="a JSON array of runs (without their nodes)")

    show = sub("show", "one run and a table of its nodes")
    show.add_argument("run_id", metavar="RUN")
    show.add_argument("--json", action="store_true", help="the run and its nodes as JSON")

    graph = sub("graph", "a run's graph, nodes coloured by state: Mermaid, Graphviz dot or a text plan")
    graph.add_argument("run_id", metavar="RUN")
    graph.add_argument("--format", choices=("mermaid", "dot", "text"), default="text", help="default: text")

    pause = sub("pause", "ask a running run to pause: nothing new starts, running nodes finish (from any process)")
    pause.add_argument("run_id", metavar="RUN")
    cancel = sub(
        "cancel",
        "cancel a running or paused run: nothing new starts but finally_do, what did not end is cancelled",
    )
    cancel.add_argument("run_id", metavar="RUN")
    cancel.add_argument(
        "pipeline",
        metavar="MODULE:ATTR",
        nargs="?",
        help="the pipeline the run was started with: needed to cancel a paused run that has a finally_do "
        "(this command then runs it, and waits for it)",
    )
    _worker_options(cancel, run_options=False)

    unpause = sub("unpause", "run a paused run on, under the same id, with the pipeline it was started with")
    unpause.add_argument("run_id", metavar="RUN")
    unpause.add_argument("pipeline", metavar="MODULE:ATTR", help="the pipeline the run was started with")
    _worker_options(unpause)


# -- importing a pipeline ---------------------------------------------------------------


def import_pipeline(spec: str) -> Pipeline | list[Pipeline]:
    """Import ``MODULE:ATTR`` and make it a pipeline (or a list of them, for several sinks).

    ``ATTR`` may be a dotted path. A pipeline, or a list or tuple of them,
    is taken as it is; a function (not a task) is called with no arguments
    and must return one of those.

    Raises:
        CliError: ``spec`` is malformed, cannot be imported, or is not and
            does not return a pipeline.
    """
    target, path = import_attribute(spec, "ATTR", "flows:nightly")
    if isinstance(target, Task):
        raise CliError(
            f"{spec} is a task, not a pipeline: name a pipeline ({path}.send(...)) or a function that returns one"
        )
    if not _is_pipeline(target) and callable(target):
        try:
            target = target()
        except Exception as exc:
            raise CliError(f"calling {spec}() to build the pipeline failed: {_one_line(exc)}") from exc
        if not _is_pipeline(target):
            raise CliError(f"{spec}() returned {type(target).__name__}, not a pipeline or a list of pipelines")
        return list(target) if isinstance(target, tuple) else target
    if not _is_pipeline(target):
        raise CliError(f"{spec} is a {type(target).__name__}, not a pipeline or a function returning one")
    return list(target) if isinstance(target, tuple) else target


def _is_pipeline(value: Any) -> bool:
    if isinstance(value, Pipeline):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, Pipeline) for item in value)


# -- JSON ------------------------------------------------------------------------------------


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _seconds_between(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def node_json(node: NodeRecord) -> dict[str, Any]:
    """A node as the JSON object ``--json`` prints (keys documented in docs/pipelines.md)."""
    failure = node.failure
    return {
        "key": node.key,
        "task_name": node.task_name,
        "display_name": node.display_name,
        "kind": node.kind,
        "state": str(node.state),
        "attempts": node.attempts,
        "started_at": _iso(node.started_at),
        "ended_at": _iso(node.ended_at),
        "duration": node.duration,
        "upstream": list(node.upstream),
        "execution_id": node.execution_id,
        "child_run_id": node.child_run_id,
        "failure": None
        if failure is None
        else {"type": failure.exception_type, "message": failure.message, "traceback": failure.traceback},
    }


def _counts(record: PipelineRecord) -> dict[str, int]:
    found = Counter(str(node.state) for node in record.nodes)
    return {state.value: found.get(state.value, 0) for state in TaskState}


def run_json(record: PipelineRecord, *, nodes: bool = True) -> dict[str, Any]:
    """A run as the JSON object ``--json`` prints (keys documented in docs/pipelines.md)."""
    document: dict[str, Any] = {
        "id": record.id,
        "parent_id": record.parent_id,
        "name": record.name,
        "status": str(record.status),
        "created_at": _iso(record.created_at),
        "ended_at": _iso(record.ended_at),
        "duration": _seconds_between(record.created_at, record.ended_at),
        "node_count": len(record.nodes),
        "states": _counts(record),
    }
    if nodes:
        document["nodes"] = [node_json(node) for node in record.nodes]
    return document


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# -- text ----------------------------------------------------------------------------------------


def _run_seconds(record: PipelineRecord) -> float | None:
    if record.ended_at is not None:
        return _seconds_between(record.created_at, record.ended_at)
    if record.status is PipelineStatus.RUNNING:
        return max(0.0, time.time() - record.created_at.timestamp())
    return None


def _timestamp(moment: dt.datetime | None) -> str:
    return format_time(None if moment is None else moment.timestamp())


def _state_summary(record: PipelineRecord) -> str:
    """``2 done, 1 failed, 1 failed_dependency``: the states that occur, in TaskState order."""
    return ", ".join(f"{count} {state}" for state, count in _counts(record).items() if count) or "none"


def _failure_cell(node: NodeRecord) -> str:
    if node.failure is None:
        return "-"
    text = f"{node.failure.exception_type.rsplit('.', 1)[-1]}: {' '.join(node.failure.message.split())}"
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def _table(rows: list[list[str]], right: set[int], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        print("  ".join(cells).rstrip(), file=out)


def _next_steps(record: PipelineRecord, store: StoreChoice, spec: str | None) -> list[tuple[str, str]]:
    """``(label, command)`` pairs: the failed inputs of unfinished batch nodes, then how to resume."""
    steps = []
    for node in record.nodes:
        if node.execution_id and node.state is not TaskState.DONE:
            steps.append(("failures", f"pylo failures {node.execution_id}{store.flag()}  ({node.key})"))
    if record.status is not PipelineStatus.COMPLETED:
        steps.append(("resume", f"pylo pipeline resume {record.id} {spec or 'MODULE:ATTR'}{store.flag()}"))
    return steps


def print_run_summary(record: PipelineRecord, store: StoreChoice, spec: str, out: TextIO) -> None:
    """What a run did, its failed nodes, and the commands to look closer and resume."""
    print(f"pipeline run {record.id} {record.status} after {format_duration(_run_seconds(record))}", file=out)
    print(f"  {len(record.nodes)} nodes: {_state_summary(record)}", file=out)
    failed = [node for node in record.nodes if node.failure is not None and node.state is not TaskState.DONE]
    if failed:
        print("  failed nodes:", file=out)
        for node in failed:
            print(f"    {node.key}: {_failure_cell(node)}", file=out)
    steps = [("details", f"pylo pipeline show {record.id}{store.flag()}"), *_next_steps(record, store, spec)]
    for label, step in steps:
        print(f"  {label + ':':<10}{step}", file=out)


def _exit_status(record: PipelineRecord) -> int:
    return EXIT_OK if record.status is PipelineStatus.COMPLETED else EXIT_UNFINISHED


# -- the commands ------------------------------------------------------------------------------


def pipeline_command(args: argparse.Namespace, store: StoreChoice) -> int:
    """Dispatch ``pylo pipeline SUBCOMMAND``."""
    handlers: dict[str, Callable[[argparse.Namespace, StoreChoice], int]] = {
        "run": _run,
        "resume": _resume,
        "list": _list,
        "show": _show,
        "graph": _graph,
        "pause": _control,
        "cancel": _cancel,
        "unpause": _unpause,
    }
    return handlers[args.pipeline_command](args, store)


def _pylo_for(args: argparse.Namespace, store: StoreChoice, *, must_exist: bool) -> Pylo:
    # The flags `pylo run` shares mean the same here; pipelines keep their
    # results, and the batch nodes' progress bars would fight each other.
    args.store_results = None
    args.progress = False
    backend = "processes" if args.processes else "threads"
    return _make_pylo(store, backend, _settings(args, backend, None), must_exist=must_exist)


def _max_parallel(args: argparse.Namespace) -> dict[str, Any]:
    """The run options of the command line: ``max_parallel`` and ``config``."""
    options: dict[str, Any] = {} if args.max_parallel is None else {"max_parallel": args.max_parallel}
    if args.config:
        options["config"] = list(args.config)
    return options


def _new_run_id() -> str:
    from pylo.execution import _new_execution_id

    return _new_execution_id()


def _execute(pylo: Pylo, store: StoreChoice, args: argparse.Namespace, start: Callable[[], str], run_id: str) -> int:
    """Run ``start`` and report; the run id is chosen first so an interrupted run can still be named."""
    status: int | None = None
    try:
        start()
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    except SystemExit as exc:  # SIGTERM, while the run runs
        status = exc.code if isinstance(exc.code, int) and exc.code != 0 else EXIT_UNFINISHED
    try:
        record = pylo.get_pipeline(run_id)
    except PyloError:
        if status is not None:
            print(f"pipeline run {run_id} was not created: nothing ran", file=sys.stderr)
            return status
        raise
    if args.json:
        _print_json(run_json(record))
    else:
        print_run_summary(record, store, args.pipeline, sys.stdout)
    return status if status is not None else _exit_status(record)


def _run(args: argparse.Namespace, store: StoreChoice) -> int:
    flow = import_pipeline(args.pipeline)
    run_id = args.run_id or _new_run_id()
    options = _max_parallel(args)
    with _pylo_for(args, store, must_exist=False) as pylo:
        return _execute(pylo, store, args, lambda: pylo.run_pipeline(flow, run_id=run_id, **options), run_id)


def _resume(args: argparse.Namespace, store: StoreChoice) -> int:
    with store.open(must_exist=True) as reader:
        past = reader.get_pipeline(args.past_run)
    flow = import_pipeline(args.pipeline)
    run_id = args.run_id or _new_run_id()
    options = _max_parallel(args)
    if not args.json:
        done = sum(1 for node in past.nodes if node.state is TaskState.DONE)
        print(
            f"resuming {past.id} as {run_id}: {len(past.nodes) - done} of {len(past.nodes)} "
            f"nodes did not finish; running them with {args.pipeline}",
            flush=True,
        )
    with _pylo_for(args, store, must_exist=True) as pylo:
        return _execute(
            pylo, store, args, lambda: pylo.resume_pipeline(past.id, flow, new_run_id=run_id, **options), run_id
        )


def _graph(args: argparse.Namespace, store: StoreChoice) -> int:
    from pylo.pipeline.reporters import to_dot, to_mermaid, to_text

    with store.open(must_exist=True) as pylo:
        record = pylo.get_pipeline(args.run_id)
    render = {"mermaid": to_mermaid, "dot": to_dot, "text": to_text}[args.format]
    sys.stdout.write(render(record))
    return EXIT_OK


def _control(args: argparse.Namespace, store: StoreChoice) -> int:
    with store.open(must_exist=True) as pylo:
        pylo.pause_pipeline(args.run_id)
        status = pylo.get_pipeline(args.run_id).status
    print(f"pipeline run {args.run_id}: pause requested (it is {status})")
    return EXIT_OK


def _cancel(args: argparse.Namespace, store: StoreChoice) -> int:
    from pylo.pipeline import PipelineControlError

    if args.pipeline is None:
        with store.open(must_exist=True) as pylo:
            try:
                pylo.cancel_pipeline(args.run_id)
            except PipelineControlError as exc:
                if exc.detail is None:
                    raise
                raise CliError(
                    f"pipeline run {args.run_id} is {exc.status} and has a finally_do that the cancel must run: "
                    f"give the pipeline it was started with, pylo pipeline cancel {args.run_id} MODULE:ATTR"
                    f"{store.flag()}"
                ) from None
            status = pylo.get_pipeline(args.run_id).status
    else:
        flow = import_pipeline(args.pipeline)
        with _pylo_for(args, store, must_exist=True) as pylo:
            pylo.cancel_pipeline(args.run_id, flow)
            status = pylo.get_pipeline(args.run_id).status
    print(f"pipeline run {args.run_id}: cancel requested (it is {status})")
    return EXIT_OK


def _unpause(args: argparse.Namespace, store: StoreChoice) -> int:
    flow = import_pipeline(args.pipeline)
    options = _max_parallel(args)
    with _pylo_for(args, store, must_exist=True) as pylo:
        return _execute(pylo, store, args, lambda: pylo.unpause_pipeline(args.run_id, flow, **options), args.run_id)


def _list(args: argparse.Namespace, store: StoreChoice) -> int:
    with store.open(must_exist=True) as pylo:
        records = pylo.list_pipelines()
    if args.json:
        _print_json([run_json(record, nodes=False) for record in records])
        return EXIT_OK
    if not records:
        print(f"no pipeline runs in the store at {store.value}")
        return EXIT_OK
    rows = [["ID", "PARENT", "STATUS", "STARTED", "DURATION", "NODES", "DONE", "FAILED", "NAME"]]
    for record in records:
        counts = _counts(record)
        rows.append(
            [
                record.id,
                record.parent_id or "-",
                str(record.status),
                _timestamp(record.created_at),
                format_duration(_run_seconds(record)),
                str(len(record.nodes)),
                str(counts[TaskState.DONE.value]),
                str(counts[TaskState.FAILED.value]),
                record.name,
            ]
        )
    _table(rows, {5, 6, 7}, sys.stdout)
    return EXIT_OK


def _show(args: argparse.Namespace, store: StoreChoice) -> int:
    with store.open(must_exist=True) as pylo:
        record = pylo.get_pipeline(args.run_id)
    if args.json:
        _print_json(run_json(record))
        return EXIT_OK
    out = sys.stdout
    for label, value in (
        ("run", record.id),
        ("name", record.name),
        ("status", str(record.status)),
        ("parent", record.parent_id or "-"),
        ("started", _timestamp(record.created_at)),
        ("ended", _timestamp(record.ended_at)),
        ("duration", format_duration(_run_seconds(record))),
        ("nodes", f"{len(record.nodes)}: {_state_summary(record)}"),
    ):
        print(f"{label:<9} {value}", file=out)
    if record.nodes:
        print(file=out)
        rows = [["KEY", "STATE", "ATTEMPTS", "TIME", "EXECUTION", "FAILURE"]]
        for node in record.nodes:
            rows.append(
                [
                    node.key,
                    str(node.state),
                    str(node.attempts),
                    format_duration(node.duration),
                    node.execution_id or "-",
                    _failure_cell(node),
                ]
            )
        _table(rows, {2, 3}, out)
    steps = _next_steps(record, store, None)
    if steps:
        print(file=out)
    for label, step in steps:
        print(f"{label:<9} {step}", file=out)
    return EXIT_OK
