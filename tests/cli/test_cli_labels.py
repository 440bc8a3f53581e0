"""``--label`` on run, resume and list; labels and lineage in ``show``."""

from __future__ import annotations

from cli_kit import Cli


def test_labels_from_run_to_list_and_show(cli: Cli) -> None:
    assert cli("run", "tasks:work", "--inputs", "numbers.txt", "--id", "one", "--label", "job=nightly").returncode == 1
    assert cli("resume", "one", "tasks_fixed:work", "--id", "two", "--label", "try=2").returncode == 0
    assert cli("run", "tasks_fixed:work", "--inputs", "numbers.txt", "--id", "other").returncode == 0
    listed = cli("list", "--label", "job=nightly").stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["ID", "one", "two"]
    assert listed[0].split()[-1] == "LABELS" and listed[2].split()[-1] == "job=nightly,try=2"
    assert [
        line.split()[0] for line in cli("list", "--label", "job=nightly", "--label", "try=2").stdout.splitlines()
    ] == [
        "ID",
        "two",
    ]
    assert cli("list", "--label", "job=weekly").stdout == "no executions labelled job=weekly in the store at .pylo\n"
    shown = cli("show", "two").stdout
    assert "labels      job=nightly,try=2" in shown
    assert "parents     one (completed)" in shown


def test_a_bad_label_is_one_line(cli: Cli) -> None:
    line = cli.error("run", "tasks:work", "--label", "no-equals-sign", stdin="1\n")
    assert line == "pylo: error: argument --label: must be KEY=VALUE, got 'no-equals-sign' (see `pylo run --help`)"
    assert "label keys must be 1 to 64 characters" in cli.error("list", "--label", "=x")
