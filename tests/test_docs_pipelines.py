"""docs/pipelines.md runs as written: every Python block, and what the blocks say they print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "pipelines.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def run(source: str, cwd: Path) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", source], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


@pytest.mark.parametrize("number", range(len(python_blocks())))
def test_every_python_block_runs(tmp_path: Path, number: int) -> None:
    run(python_blocks()[number], tmp_path)


def test_the_blocks_print_what_the_doc_says(tmp_path: Path) -> None:
    first, reading, resume, composing, dynamic, _movies, environment = python_blocks()
    for name in "abcdef":
        (tmp_path / name).mkdir()
    assert run(first, tmp_path / "a").splitlines() == ["completed", "103.0"]
    lines = run(reading, tmp_path / "b").splitlines()
    assert lines[0].startswith("parse failed ")
    assert lines[1] == "double failed_dependency None"
    assert lines[2] == "three ValueError invalid literal for int() with base 10: 'three'"
    assert run(resume, tmp_path / "c").splitlines() == [
        "failed 9",
        "completed ['download 4', 'download 8', 'total']",
        "360",
    ]
    assert run(composing, tmp_path / "d").splitlines() == [
        "completed",
        "recovered from ZeroDivisionError",
        "['done', 'done', 'failed', 'failed_dependency', 'done', 'done']",
    ]
    assert run(dynamic, tmp_path / "e").splitlines() == ["{'home': 2}", "10", "completed"]
    assert run(environment, tmp_path / "f").splitlines() == [
        "['Hello, Ada (attempt 1)', 'Hello, Grace (attempt 1)']",
        "{'greeting': 'Hello'}",
    ]


def test_readme_pipelines_block_runs_and_prints_its_result(tmp_path: Path) -> None:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Pipelines", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert block is not None
    assert run(block.group(1), tmp_path).splitlines() == ["9000"]
