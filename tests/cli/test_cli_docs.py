"""The README's shell quickstart runs as written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from cli_kit import PACKAGE_ROOT, TIMEOUT, Cli


def test_readme_shell_quickstart(cli: Cli) -> None:
    readme = (PACKAGE_ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quickstart, flags=re.S)
    assert block is not None
    script = block.group(1)
    # Up to the fix, then (the fix: the task no longer raises) the resume.
    before_fix, after_fix = script.split("# fix tasks.py", 1)
    bin_dir = Path(cli.command("list")[0]).parent  # where the `pylo` script is
    env = {**cli.env, "PATH": os.pathsep.join([str(bin_dir), cli.env.get("PATH", "")])}

    def bash(source: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", source], cwd=cli.cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )

    first = bash(before_fix)
    assert first.returncode == 0, first.stdout + first.stderr  # the last command, `failures`, succeeds
    assert "996 finished, 4 failed, 0 pending, of 1,000 inputs" in first.stdout
    assert "4 x ValueError: movie # has no title" in first.stdout
    (cli.cwd / "tasks.py").write_text("def download(movie_id):\n    pass\n", encoding="utf-8")
    resumed = bash(after_fix)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "all 1,000 inputs finished" in resumed.stdout
