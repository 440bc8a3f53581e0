"""``pylo pipeline``: run, fail, inspect and resume a pipeline from the shell, the real command in a subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_kit import TIMEOUT, Cli

# A nightly job: list ids, download each (a batch node: one execution), and
# report on the rows and a side computation. Every call is logged to
# calls.log, so a test can tell what ran. BAD is what the "fix" changes.
FLOWS = """
import os
import sys
import threading
import time

from pylo.pipeline import in_parallel, task

BAD = {3, 7}
SLOW = os.environ.get("FLOWS_SLOW") == "1"
_lock = threading.Lock()


def log(line):
    with _lock, open("calls.log", "a", encoding="utf-8") as file:
        file.write(line + "\\n")


@task
def list_ids(count):
    log("list_ids")
    return list(range(1, count + 1))


@task
def download(movie_id):
    log(f"download {movie_id}")
    if SLOW:
        print("downloading", file=sys.stderr, flush=True)
        # Short, so that after the signal the running tasks end soon: a
        # thread cannot be stopped, and the process waits for them.
        time.sleep(0.3)
    if movie_id in BAD:
        raise ValueError(f"movie {movie_id} has no title")
    return {"id": movie_id, "title": f"Movie {movie_id}"}


@task
def add(x, y):
    log("add")
    return x + y


@task
def report(rows, total):
    log("report")
    return f"{len(rows)} rows, total {total}"


def nightly():
    rows = download.map(list_ids.send(10))
    return report.send(rows, add.send(1, 2))


both = [add.send(1, 2), add.send(3, 4)]
ready_made = add.send(20, 22)
grouped = in_parallel([add.send(1, 1), add.send(2, 2)])


def broken():
    raise RuntimeError("cannot build")


def not_a_pipeline():
    return 42
"""

RUN_KEYS = {"id", "parent_id", "name", "status", "created_at", "ended_at", "duration", "node_count", "states", "nodes"}
NODE_KEYS = {
    "key",
    "task_name",
    "display_name",
    "kind",
    "state",
    "attempts",
    "started_at",
    "ended_at",
    "duration",
    "upstream",
    "execution_id",
    "child_run_id",
    "failure",
}
STATES = ["pending", "running", "done", "failed", "failed_softly", "failed_dependency", "skipped", "cancelled"]


@pytest.fixture
def flows(cli: Cli) -> Cli:
    cli.write("flows.py", FLOWS)
    # The fix rewrites flows.py within the same second: no stale bytecode.
    cli.env["PYTHONDONTWRITEBYTECODE"] = "1"
    return cli


def fix(cli: Cli) -> None:
    cli.write("flows.py", FLOWS.replace("BAD = {3, 7}", "BAD = set()"))
    (cli.cwd / "calls.log").unlink()


def calls(cli: Cli) -> list[str]:
    return sorted((cli.cwd / "calls.log").read_text(encoding="utf-8").splitlines())


def show_json(cli: Cli, run_id: str, *store: str) -> dict:
    completed = cli("pipeline", "show", run_id, "--json", *store)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


# -- the story -----------------------------------------------------------------------


def test_a_failed_run_is_inspected_and_resumed_node_by_node_and_input_by_input(flows: Cli) -> None:
    first = flows("pipeline", "run", "flows:nightly", "--run-id", "night-1", "--workers", "4")
    assert first.returncode == 1, first.stdout + first.stderr
    out = first.stdout
    assert out.startswith("pipeline run night-1 failed after ")
    assert "4 nodes: 2 done, 1 failed, 1 failed_dependency" in out
    assert "2 of 10 inputs did not finish" in out
    assert "  details:  pylo pipeline show night-1\n" in out
    assert "  resume:   pylo pipeline resume night-1 flows:nightly\n" in out
    assert sorted(calls(flows)) == sorted(["list_ids", "add", *(f"download {n}" for n in range(1, 11))])

    shown = show_json(flows, "night-1")
    batch = next(node for node in shown["nodes"] if node["kind"] == "batch")
    assert batch["state"] == "failed" and batch["execution_id"]
    # The batch node's execution is an execution like any other.
    failures = flows("failures", batch["execution_id"])
    assert failures.returncode == 0, failures.stderr
    assert "2 x ValueError: movie # has no title" in failures.stdout
    assert f"pylo failures {batch['execution_id']}  ({batch['key']})" in out

    fix(flows)
    resumed = flows("pipeline", "resume", "night-1", "flows:nightly", "--run-id", "night-2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.startswith(
        "resuming night-1 as night-2: 2 of 4 nodes did not finish; running them with flows:nightly\n"
    )
    assert "pipeline run night-2 completed after " in resumed.stdout
    assert "resume:" not in resumed.stdout
    # Only the two failed inputs and the report ran again.
    assert calls(flows) == ["download 3", "download 7", "report"]
    again = show_json(flows, "night-2")
    assert (again["parent_id"], again["status"], again["states"]["done"]) == ("night-1", "completed", 4)


def test_list_and_show_as_text(flows: Cli) -> None:
    assert flows("pipeline", "run", "flows:nightly", "--run-id", "night-1").returncode == 1
    listing = flows("pipeline", "list")
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split() == ["ID", "PARENT", "STATUS", "STARTED", "DURATION", "NODES", "DONE", "FAILED", "NAME"]
    assert row.split()[:3] == ["night-1", "-", "failed"]
    assert row.split()[-4:] == ["4", "2", "1", "report"]
    shown = flows("pipeline", "show", "night-1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:4] == ["run       night-1", "name      report", "status    failed", "parent    -"]
    assert "nodes     4: 2 done, 1 failed, 1 failed_dependency" in lines
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["KEY", "STATE", "ATTEMPTS", "TIME", "EXECUTION", "FAILURE"]
    states = {line.split()[0].split("-")[0]: line.split()[1] for line in table[1:5]}
    assert states == {"list_ids": "done", "download": "failed", "add": "done", "report": "failed_dependency"}
    assert shown.stdout.splitlines()[-1] == "resume    pylo pipeline resume night-1 MODULE:ATTR"


def test_json_keys_are_the_documented_ones(flows: Cli) -> None:
    completed = flows("pipeline", "run", "flows:nightly", "--run-id", "night-1", "--json")
    assert completed.returncode == 1
    run = json.loads(completed.stdout)
    assert set(run) == RUN_KEYS
    assert list(run["states"]) == STATES
    assert all(set(node) == NODE_KEYS for node in run["nodes"])
    assert run["node_count"] == len(run["nodes"]) == 4
    failed = next(node for node in run["nodes"] if node["state"] == "failed")
    assert set(failed["failure"]) == {"type", "message", "traceback"}
    assert run == show_json(flows, "night-1")
    listing = flows("pipeline", "list", "--json")
    assert listing.returncode == 0
    (listed,) = json.loads(listing.stdout)
    assert set(listed) == RUN_KEYS - {"nodes"}
    assert listed == {key: value for key, value in run.items() if key != "nodes"}


@pytest.mark.parametrize(
    ("attr", "expected"),
    [("both", 2), ("ready_made", 1), ("grouped", 2)],
    ids=["a-list-of-sinks", "a-pipeline-object", "a-group"],
)
def test_attr_may_be_a_pipeline_or_a_list_of_them(flows: Cli, attr: str, expected: int) -> None:
    completed = flows("pipeline", "run", f"flows:{attr}", "--json")
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["states"]["done"] == expected


def test_worker_options_and_max_parallel(flows: Cli) -> None:
    flows.write("flows.py", FLOWS.replace("BAD = {3, 7}", "BAD = set()"))
    completed = flows(
        "pipeline", "run", "flows:nightly", "--processes", "--workers", "2", "--max-parallel", "1", "--retries", "1"
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "4 nodes: 4 done" in completed.stdout


# -- the store: before or after the command, or from the environment ----------------------


@pytest.mark.parametrize(
    "where",
    ["before-pipeline", "before-subcommand", "after-subcommand", "environment"],
)
def test_store_is_taken_wherever_the_other_commands_take_it(flows: Cli, where: str) -> None:
    elsewhere = str(flows.cwd / "elsewhere")
    env: dict[str, str] = {}

    def argv(*args: str) -> list[str]:
        if where == "before-pipeline":
            return ["--store", elsewhere, "pipeline", *args]
        if where == "before-subcommand":
            return ["pipeline", "--store", elsewhere, *args]
        if where == "after-subcommand":
            return ["pipeline", *args, "--store", elsewhere]
        env["PYLO_STORE"] = elsewhere
        return ["pipeline", *args]

    ran = flows(*argv("run", "flows:ready_made", "--run-id", "r1"), env=env)
    assert ran.returncode == 0, ran.stderr
    assert not (flows.cwd / ".pylo").exists()
    assert (Path(elsewhere) / "pylo.sqlite").exists()
    listed = flows(*argv("list", "--json"), env=env)
    assert [run["id"] for run in json.loads(listed.stdout)] == ["r1"]
    assert flows(*argv("show", "r1"), env=env).returncode == 0
    # The printed commands name the store, so that they work as printed.
    assert f"pylo pipeline show r1 --store {elsewhere}" in ran.stdout


def test_a_files_store_written_from_python_is_read(flows: Cli) -> None:
    script = (
        "from pylo import Pylo\n"
        "import flows\n"
        "with Pylo.local_multithread('.pylo', 2, store='files') as p:\n"
        "    p.run_pipeline(flows.ready_made, run_id='from-python')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=flows.cwd,
        env=flows.env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert [run["id"] for run in json.loads(flows("pipeline", "list", "--json").stdout)] == ["from-python"]


# -- errors: one line, exit status 2 --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pipeline", "run", "flows"], "'flows' is not MODULE:ATTR"),
        (["pipeline", "run", "nowhere:nightly"], "cannot import module 'nowhere'"),
        (["pipeline", "run", "flows:missing"], "module 'flows' has no attribute 'missing'"),
        (["pipeline", "run", "flows:add"], "flows:add is a task, not a pipeline"),
        (["pipeline", "run", "flows:SLOW"], "flows:SLOW is a bool, not a pipeline or a function returning one"),
        (["pipeline", "run", "flows:broken"], "calling flows:broken() to build the pipeline failed: RuntimeError"),
        (["pipeline", "run", "flows:not_a_pipeline"], "flows:not_a_pipeline() returned int, not a pipeline"),
        (["pipeline", "run", "flows:nightly", "--max-parallel", "0"], "argument --max-parallel: must be >= 1, got 0"),
        (["pipeline", "run", "flows:nightly", "--run-id", "a b"], "argument --run-id: 'a b' is not a valid"),
        (["pipeline"], "the following arguments are required: SUBCOMMAND"),
        (["pipeline", "frobnicate"], "argument SUBCOMMAND: invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_are_one_line(flows: Cli, args: list[str], expected: str) -> None:
    assert expected in flows.error(*args)
    assert not (flows.cwd / "calls.log").exists()


@pytest.mark.parametrize("command", [["list"], ["show", "x"], ["resume", "x", "flows:nightly"]])
def test_read_commands_refuse_a_missing_store(flows: Cli, command: list[str]) -> None:
    assert "no pylo store at .pylo (the directory does not exist)" in flows.error("pipeline", *command)
    assert not (flows.cwd / ".pylo").exists()


def test_unknown_runs_and_taken_ids(flows: Cli) -> None:
    assert flows("pipeline", "run", "flows:ready_made", "--run-id", "r1").returncode == 0
    store = Path(".pylo", "pylo.sqlite")
    assert (
        flows.error("pipeline", "show", "nope")
        == f"pylo: error: no pipeline run with id 'nope' in the store at {store}"
    )
    assert "no pipeline run with id 'nope'" in flows.error("pipeline", "resume", "nope", "flows:ready_made")
    assert "a pipeline run with id 'r1' already exists" in flows.error(
        "pipeline", "run", "flows:ready_made", "--run-id", "r1"
    )


def test_an_empty_store_lists_no_runs(flows: Cli) -> None:
    assert flows("run", "tasks_fixed:work", "--inputs", "numbers.txt").returncode == 0
    listing = flows("pipeline", "list")
    assert (listing.returncode, listing.stdout) == (0, "no pipeline runs in the store at .pylo\n")
    assert json.loads(flows("pipeline", "list", "--json").stdout) == []


# -- interrupted ------------------------------------------------------------------------------


def _start_slow(cli: Cli) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        cli.command("pipeline", "run", "flows:nightly", "--run-id", "cut", "--workers", "2"),
        cwd=cli.cwd,
        env={**cli.env, "FLOWS_SLOW": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stderr is not None
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    while b"downloading" not in seen:  # a batch node's task is running
        assert time.monotonic() < deadline, seen
        ready, _, _ = select.select([process.stderr], [], [], deadline - time.monotonic())
        if ready:
            chunk = os.read(process.stderr.fileno(), 4096)
            assert chunk, seen
            seen += chunk
    return process


@pytest.mark.parametrize(("sent", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_exits_130_or_143_and_resumes(flows: Cli, sent: signal.Signals, status: int) -> None:
    process = _start_slow(flows)
    if sent == signal.SIGINT:
        os.killpg(process.pid, signal.SIGINT)  # the terminal sends it to the whole group
    else:
        process.send_signal(sent)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == status, stderr
    assert b"pipeline run cut interrupted after " in stdout
    assert b"resume:   pylo pipeline resume cut flows:nightly" in stdout
    assert show_json(flows, "cut")["status"] == "interrupted"
    fix(flows)
    resumed = flows("pipeline", "resume", "cut", "flows:nightly")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "list_ids" not in calls(flows)
