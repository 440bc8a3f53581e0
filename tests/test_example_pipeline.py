"""The pipeline example runs as written: it fails part way, is fixed, and the resume reruns only what did not finish."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pipeline_example_fails_and_resumes_only_what_did_not_finish(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pipeline_movies.py"), str(tmp_path / "store")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert re.search(r"^run \S+: failed$", out, flags=re.M)
    assert re.search(r"^  download +failed +\(execution \S+\)$", out, flags=re.M)
    assert re.search(r"^  report +failed_dependency$", out, flags=re.M)
    assert "failed node: download: 4 of 200 inputs did not finish" in out
    assert [int(n) for n in re.findall(r"^  input (\d+): ValueError", out, flags=re.M)] == [7, 57, 107, 157]
    assert "first run called: {'count_genres': 1, 'download': 200, 'list_movie_ids': 1}" in out
    assert re.search(r"^run \S+: completed$", out, flags=re.M)
    assert "the resume called: {'download': 4, 'report': 1, 'total_minutes': 1}" in out
    assert out.rstrip().endswith("result: 2026-11-28: 21,520 minutes of film, 200 movies by genre")
