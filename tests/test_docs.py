"""The README's code and the example job run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(encoding="utf-8"), flags=re.S)


def test_readme_quickstart_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    quickstart = python_blocks(ROOT / "README.md")[0]
    completed = subprocess.run(
        [sys.executable, "-c", quickstart], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "996 finished; unfinished: [250, 500, 750, 1000]"
    assert lines[1].startswith("249 250 ValueError movie 250 has no title")
    assert lines[-2:] == ["[]", "True"]


def test_readme_options_block_is_valid(tmp_path: Path) -> None:
    options = python_blocks(ROOT / "README.md")[1].replace("/var/lib/my-job/pylo", str(tmp_path / "job"))
    exec(compile("from pylo import Pylo\n" + options, "README options", "exec"), {})


@pytest.mark.slow
def test_example_job_fails_inspects_and_resumes(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "import_prices.py"), str(tmp_path / "store")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    first = re.search(r"first run \S+: ([\d,]+) finished, ([\d,]+) unfinished", out)
    assert first and first.group(2) != "0"
    assert "52 x ValueError: could not convert string to float: '#,# EUR'" in out
    assert "20 x TimeoutError: pricing service timed out for record #" in out
    assert "first failure: position 7, after 3 attempts" in out
    assert re.search(r"resumed as \S+: 5,000 finished, 0 unfinished", out)
