"""The story of a job on the command line: it fails, is inspected, fixed and resumed."""

from __future__ import annotations

import re

from cli_kit import Cli


def test_failed_job_is_inspected_fixed_and_resumed(cli: Cli) -> None:
    # 1. Run: inputs 3, 13, ... 93 raise ValueError, 25, 50, 75, 100 TimeoutError.
    run = cli("run", "tasks:work", "--inputs", "numbers.txt", "--workers", "2", "--id", "first")
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "execution first completed after" in run.stdout
    assert "86 finished, 14 failed, 0 pending, of 100 inputs" in run.stdout
    assert re.search(r"10  ValueError: record # has no price\n", run.stdout)
    assert re.search(r" 4  TimeoutError: pricing service timed out for record '…'\n", run.stdout)
    assert "resume:  pylo resume first\n" in run.stdout  # the exact command

    # 2. Inspect: list, failures, show.
    listed = cli("list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "PARENT", "STATUS", "STARTED", "DURATION", "FINISHED", "FAILED", "PENDING", "TASK"]
    cells = row.split()
    assert cells[:3] == ["first", "-", "completed"]
    assert cells[-4:] == ["86", "14", "0", "tasks:work"]

    failures = cli("failures", "first")
    assert failures.returncode == 0
    assert failures.stdout.startswith("execution first: 14 failed inputs in 2 groups\n")
    assert "10 x ValueError: record # has no price\n" in failures.stdout
    assert "  inputs:   #2 '3', #12 '13', #22 '23' (+7 more)\n" in failures.stdout
    assert "4 x TimeoutError: pricing service timed out for record '…'\n" in failures.stdout
    assert "  message:  pricing service timed out for record '25'\n" in failures.stdout
    assert "Traceback" not in failures.stdout

    only_timeouts = cli("failures", "first", "--type", "TimeoutError", "--traceback")
    assert "ValueError" not in only_timeouts.stdout
    assert "  traceback of input #24:\n" in only_timeouts.stdout
    assert 'raise TimeoutError(f"pricing service timed out' in only_timeouts.stdout

    shown = cli("show", "first")
    assert shown.returncode == 1  # ended with unfinished inputs
    assert re.search(r"^status +completed$", shown.stdout, re.M)
    assert re.search(r"^inputs +100: 86 finished, 14 failed, 0 pending$", shown.stdout, re.M)
    assert re.search(r"^throughput +[\d.,]+ inputs/s \(100 attempted in this execution\)$", shown.stdout, re.M)
    assert re.search(r"^resume +pylo resume first$", shown.stdout, re.M)

    # 3. Fix (a second module) and resume from the command line.
    resumed = cli("resume", "first", "tasks_fixed:work", "--id", "second")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming first as second: 14 of 100 inputs to run, with tasks_fixed:work" in resumed.stdout
    assert "execution second completed after" in resumed.stdout
    assert "all 100 inputs finished" in resumed.stdout
    assert "resume:" not in resumed.stdout

    # 4. The lineage, both ways; the first execution is unchanged.
    rows = [line.split() for line in cli("list").stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[2], r[-4], r[-3], r[-1]) for r in rows] == [
        ("first", "-", "completed", "86", "14", "tasks:work"),
        ("second", "first", "completed", "100", "0", "tasks_fixed:work"),
    ]
    child = cli("show", "second").stdout
    assert re.search(r"^parents +first \(completed\)$", child, re.M)
    assert "(14 attempted in this execution)" in child
    assert "resume " not in child
    assert re.search(r"^children +second \(completed\)$", cli("show", "first").stdout, re.M)
    assert cli("inputs", "first", "--unfinished").stdout.split() == [
        str(n) for n in range(1, 101) if n % 10 == 3 or n % 25 == 0
    ]
    assert cli("inputs", "second", "--unfinished").stdout == ""


def test_resume_remembers_the_function_and_the_run_options(cli: Cli) -> None:
    cli.write(
        "flaky.py",
        """
        import collections

        calls = collections.Counter()

        def work(line):
            calls[line] += 1
            if calls[line] < 3:  # the third attempt succeeds
                raise ConnectionError(f"connection reset for {line}")
        """,
    )
    first = cli(
        "run", "flaky:work", "--retries", "1", "--workers", "3", "--max-worker-failures", "50",
        "--timeout", "30", "--rate-limit", "500/s", "--id", "one", stdin="a\nb\nc\n",
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    assert "3  ConnectionError: connection reset for #" not in first.stdout  # letters, not numbers
    assert "ConnectionError: connection reset for a" in first.stdout
    options = re.search(r"^options +(.*)$", cli("show", "one").stdout, re.M)
    assert options is not None
    for expected in ("number_of_workers=3", "max_worker_failures=50", "timeout=30.0", "rate_limit=500.0", "retries=1"):
        assert expected in options.group(1).split()

    # No function and no flags: the same function and options (two attempts
    # per input again, so every input fails again, in a new process).
    same = cli("resume", "one", "--id", "two")
    assert same.returncode == 1
    assert "with flaky:work" in same.stdout
    assert cli("show", "two").stdout.count("retries=1") == 1
    assert "number_of_workers=3" in cli("show", "two").stdout

    # A flag overrides what was remembered: three attempts succeed.
    more = cli("resume", "two", "--retries", "2", "--workers", "1", "--id", "three")
    assert more.returncode == 0, more.stdout + more.stderr
    shown = cli("show", "three").stdout
    assert "retries=2" in shown
    assert "number_of_workers=1" in shown
    assert "max_worker_failures=50" in shown
