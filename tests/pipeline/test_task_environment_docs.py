"""docs/task-environment.md: every python block runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "task-environment.md"
#: A block right after this comment would not be run (none is left: keep it so).
NOT_RUN = "<!-- not run yet: needs the pipeline API -->"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", re.S)


def blocks() -> list[tuple[int, str, bool]]:
    """``(line, code, runs)`` of every python block."""
    text = DOC.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start("code")) + 1, match.group("code"), match.group("before").strip() != NOT_RUN)
        for match in BLOCK.finditer(text)
    ]


def test_every_block_of_the_page_runs() -> None:
    runs = [found[2] for found in blocks()]
    assert runs.count(True) >= 7
    assert runs.count(False) == 0


@pytest.mark.parametrize(("line", "code"), [(line, code) for line, code, runs in blocks() if runs])
def test_block_runs(tmp_path: Path, line: int, code: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, f"block at line {line}:\n{completed.stderr}"
