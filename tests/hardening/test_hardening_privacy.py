"""Stores keep inputs and tracebacks private: directories 0700, files 0600, whatever the umask.

Checked with ``os.stat`` after a real run, while the store is still open so
that SQLite's ``-wal`` and ``-shm`` files exist.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract_tasks import fail_multiples_of_seven, noop

from pylo import Pylo


@pytest.fixture(params=[0o000, 0o022], ids=["umask-000", "umask-022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under a permissive umask: pylo must not rely on the user's."""
    previous = os.umask(int(request.param))
    try:
        yield int(request.param)
    finally:
        os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of the store directory and of everything in it, by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


@pytest.mark.parametrize("store_name", ["sqlite", "files"])
def test_every_directory_is_0700_and_every_file_0600(tmp_path: Path, store_name: str, umask: int) -> None:
    store_dir = tmp_path / "store"
    with Pylo.local_multithread(store_dir, 2, store=store_name, store_results=True, progress=False) as pylo:
        past = pylo.start_from_scratch(range(200), fail_multiples_of_seven)
        pylo.start_from_past_execution(past, noop)
        found = modes(store_dir)
        if store_name == "sqlite":
            # Open connections keep the write-ahead log and its index beside the database.
            assert {"pylo.sqlite", "pylo.sqlite-wal", "pylo.sqlite-shm"} <= set(found)
        else:
            assert len([name for name in found if name.endswith("execution.json")]) == 2
    wrong = {
        name: oct(mode) for name, mode in found.items() if mode != (0o700 if (store_dir / name).is_dir() else 0o600)
    }
    assert not wrong, f"readable by others under umask {umask:03o}: {wrong}"


@pytest.mark.parametrize("store_name", ["sqlite", "files"])
def test_directories_pylo_creates_on_the_way_to_the_store_are_0700_too(
    tmp_path: Path, store_name: str, umask: int
) -> None:
    store_dir = tmp_path / "a" / "b" / "store"
    with Pylo.local_multithread(store_dir, 1, store=store_name, progress=False) as pylo:
        pylo.start_from_scratch(range(3), noop)
    made = [tmp_path / "a", tmp_path / "a" / "b", store_dir]
    wrong = {
        str(path): oct(stat.S_IMODE(path.stat().st_mode)) for path in made if stat.S_IMODE(path.stat().st_mode) != 0o700
    }
    assert not wrong, f"directories pylo made under umask {umask:03o} are not private: {wrong}"
