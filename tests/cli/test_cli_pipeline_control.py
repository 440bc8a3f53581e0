"""``pylo pipeline pause|unpause|cancel|graph``: steering a run from another process, the real command."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from cli_kit import TIMEOUT, Cli

from pylo import Pylo

# a -> b -> c, where b waits for a file the test writes: the run is steered meanwhile.
FLOWS = """
import os
import time
from pylo.pipeline import task


@task
def step(name, *upstream):
    with open("calls.log", "a", encoding="utf-8") as log:
        log.write(name + "\\n")
    if name == "b":
        for _ in range(6000):
            if os.path.exists("open-b"):
                break
            time.sleep(0.01)
    return name


def flow():
    a = step.send("a").set(task_id="a")
    b = step.send("b", a).set(task_id="b")
    return step.send("c", b).set(task_id="c")


@task
def cleanup(previous):
    with open("calls.log", "a", encoding="utf-8") as log:
        log.write("cleanup\\n")


def guarded():
    a = step.send("a").set(task_id="a").wait()
    return step.send("c", a).set(task_id="c").finally_do(cleanup)
"""


@pytest.fixture
def flows(cli: Cli) -> Cli:
    cli.write("flows.py", FLOWS)
    return cli


def calls(cli: Cli) -> list[str]:
    path = cli.cwd / "calls.log"
    return path.read_text(encoding="utf-8").split() if path.exists() else []


def start_run(cli: Cli, run_id: str) -> subprocess.Popen[str]:
    """Start ``pylo pipeline run`` and return once b is running."""
    process = subprocess.Popen(
        cli.command("pipeline", "run", "flows:flow", "--run-id", run_id),
        cwd=cli.cwd, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while "b" not in calls(cli):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "b never started"
        time.sleep(0.02)
    return process


def open_b(cli: Cli) -> None:
    Path(cli.cwd / "open-b").touch()


def taken_up(cli: Cli, run_id: str, action: str) -> None:
    """Wait until the running coordinator recorded that it took the request up (``options["halt"]``)."""
    with Pylo.local_multithread(str(cli.cwd / ".pylo"), 1) as pylo:
        runs = pylo.store.runs()
        deadline = time.monotonic() + TIMEOUT
        while runs.get_run(run_id).options.get("halt") != action:
            assert time.monotonic() < deadline, f"the {action} request was never taken up"
            time.sleep(0.02)


def test_pause_from_another_process_then_unpause(flows: Cli) -> None:
    run = start_run(flows, "steered")
    paused = flows("pipeline", "pause", "steered")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == "pipeline run steered: pause requested (it is running)\n"
    taken_up(flows, "steered", "pause")  # before b ends: c never starts
    open_b(flows)
    out, err = run.communicate(timeout=TIMEOUT)
    assert run.returncode == 1, out + err
    assert out.startswith("pipeline run steered paused")
    assert calls(flows) == ["a", "b"]

    graph = flows("pipeline", "graph", "steered", "--format", "mermaid")
    assert graph.returncode == 0, graph.stderr
    states = dict(re.findall(r"    class (n\d+) (\w+)", graph.stdout))
    assert states == {"n0": "done", "n1": "done", "n2": "pending"}
    assert "    n0 --> n1" in graph.stdout and "    n1 --> n2" in graph.stdout

    unpaused = flows("pipeline", "unpause", "steered", "flows:flow")
    assert unpaused.returncode == 0, unpaused.stdout + unpaused.stderr
    assert unpaused.stdout.startswith("pipeline run steered completed")
    assert calls(flows) == ["a", "b", "c"]
    dot = flows("pipeline", "graph", "steered", "--format", "dot")
    assert dot.stdout.count('fillcolor="#90ee90"') == 3 and '"a" -> "b";' in dot.stdout
    text = flows("pipeline", "graph", "steered")
    assert text.stdout == "1. step (a) [done]\n2. step (b) after a [done]\n3. step (c) after b [done]\n"


def test_cancel_from_another_process(flows: Cli) -> None:
    run = start_run(flows, "doomed")
    cancelled = flows("pipeline", "cancel", "doomed")
    assert cancelled.returncode == 0, cancelled.stderr
    taken_up(flows, "doomed", "cancel")
    open_b(flows)
    out, err = run.communicate(timeout=TIMEOUT)
    assert run.returncode == 1, out + err
    assert out.startswith("pipeline run doomed cancelled")
    assert calls(flows) == ["a", "b"]
    again = flows("pipeline", "cancel", "doomed")
    assert again.returncode == 2
    assert again.stderr == (
        "pylo: error: cannot cancel pipeline run 'doomed': it is cancelled, and only a running or paused run can be\n"
    )


def test_cancel_of_a_paused_run_with_finally_do_takes_the_pipeline_and_runs_it(flows: Cli) -> None:
    paused = flows("pipeline", "run", "flows:guarded", "--run-id", "g")
    assert paused.returncode == 1 and paused.stdout.startswith("pipeline run g paused"), paused.stdout
    refused = flows("pipeline", "cancel", "g")
    assert refused.returncode == 2
    assert refused.stderr == (
        "pylo: error: pipeline run g is paused and has a finally_do that the cancel must run: give the "
        "pipeline it was started with, pylo pipeline cancel g MODULE:ATTR\n"
    )
    cancelled = flows("pipeline", "cancel", "g", "flows:guarded")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == "pipeline run g: cancel requested (it is cancelled)\n"
    assert calls(flows) == ["a", "cleanup"]


def test_control_of_an_unknown_run_is_one_line(flows: Cli) -> None:
    open_b(flows)
    assert flows("pipeline", "run", "flows:flow", "--run-id", "r").returncode == 0
    for command in (["pause", "nope"], ["cancel", "nope"], ["graph", "nope"]):
        completed = flows("pipeline", *command)
        assert completed.returncode == 2 and "nope" in completed.stderr and "Traceback" not in completed.stderr
