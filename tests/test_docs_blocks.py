"""Every Python block of the README and docs/ runs as written.

A block that cannot run on its own here (it needs a cluster, a server, a
class the reader writes, or continues an earlier block) says so on the line
before its fence, ``<!-- not run: why, and what runs it instead -->``; such
a block must still be valid Python. Pages whose blocks build on each other
have a test of their own that runs them in order and checks what they
print; they are listed in ``OWN_TESTS`` and left to it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Pages run block after block, with their output checked, by their own test.
OWN_TESTS = {
    "docs/pipelines.md": "tests/test_docs_pipelines.py",
    "docs/task-environment.md": "tests/pipeline/test_task_environment_docs.py",
}

_BLOCK = re.compile(r"(?:<!-- not run: (?P<why>.+?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def _blocks() -> list[tuple[str, int, str | None, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        name = page.relative_to(ROOT).as_posix()
        if name in OWN_TESTS:
            continue
        for number, match in enumerate(_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            found.append((name, number, match.group("why"), match.group("code")))
    return found


BLOCKS = _blocks()


def test_pages_with_their_own_test_have_it() -> None:
    for page, test in OWN_TESTS.items():
        assert (ROOT / page).exists(), page
        assert (ROOT / test).exists(), f"{page} is left to {test}, which does not exist"


@pytest.mark.parametrize(("page", "number", "why", "code"), BLOCKS, ids=[f"{b[0]}#{b[1]}" for b in BLOCKS])
def test_block_runs_as_written(page: str, number: int, why: str | None, code: str, tmp_path: Path) -> None:
    compile(code, f"{page} block {number}", "exec")  # every block is valid Python
    if why is not None:
        assert why.strip(), f"{page} block {number}: say why it is not run"
        return
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False
    )
    assert completed.returncode == 0, f"{page} block {number} failed:\n{completed.stdout}\n{completed.stderr}"
