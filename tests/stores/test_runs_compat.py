"""Stores written by the pylo before pipelines, and that pylo reading stores that have runs.

The previous release is taken from git: the parent of the commit that added
``pylo/stores/runs.py``. Its ``pylo`` package runs in a subprocess, on the
same store as this one. Skipped where there is no git history.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from pylo import Pylo
from pylo.pipeline import task

ROOT = Path(__file__).resolve().parent.parent.parent

OLD_RUN = """
import importlib.util
import sys
from pylo import Pylo

assert importlib.util.find_spec("pylo.stores.runs") is None, "not the previous release"

def fail_on_sevens(item):
    if item % 7 == 0:
        raise ValueError(f"item {item}")
    return item

with Pylo.local_multithread(sys.argv[1], 2, store=sys.argv[2]) as pylo:
    if sys.argv[3] == "run":
        print(pylo.start_from_scratch(range(30), fail_on_sevens, execution_id="old"))
    else:
        print(" ".join(f"{r.id}:{r.status}:{r.finished}" for r in pylo.list_executions()))
"""


@task
def add(x: int, y: int) -> int:
    return x + y


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``pylo`` package of the release before pipelines, extracted into a directory."""
    try:
        added = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "--", "pylo/stores/runs.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("no git history to take the previous release from")
    if not added:
        pytest.skip("no git history to take the previous release from")
    target = tmp_path_factory.mktemp("previous")
    archive = target / "pylo.tar"
    try:
        subprocess.run(
            ["git", "archive", "--format=tar", f"--output={archive}", f"{added[-1]}^", "pylo"],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=True,
        )
    except subprocess.SubprocessError:
        pytest.skip("the previous release is not in this clone's history (a shallow clone?)")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    assert not (target / "pylo" / "stores" / "runs.py").exists()
    return target


def old_pylo(release: Path, store_dir: Path, store: str, action: str) -> str:
    script = store_dir.parent / "old_job.py"
    script.write_text(textwrap.dedent(OLD_RUN), encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, str(script), str(store_dir), store, action],
        cwd=store_dir.parent,
        env={"PYTHONPATH": str(release), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


@pytest.mark.parametrize("store", ["sqlite", "files"])
def test_a_store_of_the_previous_release_opens_resumes_and_takes_runs(
    previous_release: Path, tmp_path: Path, store: str
) -> None:
    store_dir = tmp_path / "store"
    assert old_pylo(previous_release, store_dir, store, "run") == "old"
    with Pylo.local_multithread(store_dir, 2, store=store) as pylo:
        assert pylo.list_pipelines() == []
        assert pylo.get_execution("old").failed == 5
        resumed = pylo.start_from_past_execution("old", abs)
        assert pylo.get_state(resumed)[1] == []
        run_id = pylo.run_pipeline(add.send(1, 2), run_id="new")
        assert pylo.get_pipeline_result(run_id) == 3
    # The previous release still opens the store that now holds runs, and reads its executions.
    listed = old_pylo(previous_release, store_dir, store, "list").split()
    assert listed == ["old:completed:25", f"{resumed}:completed:30"]
