"""Choosing a store from what the user passed: one registry by scheme, for the API and the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pylo import Pylo, register_store
from pylo.stores import StoreTarget, known_schemes, open_store
from pylo.stores.base import Store
from pylo.stores.files import FileStore
from pylo.stores.sql import SQLStore


def test_bare_names_open_in_the_local_store_directory(tmp_path: Path) -> None:
    with open_store("sqlite", tmp_path / "a") as store:
        assert isinstance(store, SQLStore) and store.location == str(tmp_path / "a" / "pylo.sqlite")
    with open_store("files", tmp_path / "b") as store:
        assert isinstance(store, FileStore) and store.location == str(tmp_path / "b")


def test_urls_name_their_own_place(tmp_path: Path) -> None:
    with open_store(f"files://{tmp_path / 'f'}", None) as store:
        assert isinstance(store, FileStore) and store.location == str(tmp_path / "f")
    with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}", None) as store:
        assert isinstance(store, SQLStore) and store.location == str(tmp_path / "db.sqlite")


def test_a_store_object_is_used_as_it_is(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        assert open_store(store, None) is store


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ("s3://user:secret@bucket/x", "unknown store URL scheme 's3'; valid names: 'sqlite', 'files'"),
        ("htp://host/db", "unknown store URL scheme 'htp'"),
        ("mongo", "unknown store 'mongo'; valid names: 'sqlite', 'files'"),
        ("postgresql", "store 'postgresql' is a database: give its SQLAlchemy URL"),
        ("files://otherhost/path", "a files URL names a local directory"),
    ],
)
def test_what_cannot_be_opened_is_a_clear_error(tmp_path: Path, store: str, expected: str) -> None:
    with pytest.raises(ValueError) as caught:
        Pylo.local_multithread(tmp_path, 1, store=store)
    assert expected in str(caught.value)
    assert "secret" not in str(caught.value)
    if "unknown" in expected:
        for scheme in ("files", "postgresql", "sqlite"):
            assert scheme in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_new_kind_of_store_plugs_in_by_its_scheme(tmp_path: Path) -> None:
    opened: list[StoreTarget] = []

    def open_mirror(target: StoreTarget) -> Store:
        opened.append(target)
        assert target.url is not None
        return FileStore(tmp_path / target.url.split("://", 1)[1], create=target.create)

    register_store("mirror-test", open_mirror)
    assert "mirror-test" in known_schemes()
    with Pylo.local_multithread(None, 1, store="mirror-test://copy", progress=False) as pylo:
        execution_id = pylo.start_from_scratch(range(3), str)
        assert pylo.get_state(execution_id) == ([0, 1, 2], [])
    assert opened == [StoreTarget("mirror-test", "mirror-test://copy", None, True)]
    assert (tmp_path / "copy" / "executions").is_dir()


@pytest.mark.parametrize("scheme", ["", "3d", "no spaces", "a/b"])
def test_a_scheme_must_be_a_url_scheme(scheme: str) -> None:
    with pytest.raises(ValueError, match="store scheme must be letters"):
        register_store(scheme, FileStore)


def test_the_command_names_an_unknown_scheme_in_one_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "pylo", "list", "--store", "s3://bucket/runs"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("pylo: error: unknown store URL scheme 's3'; valid names: 'sqlite', 'files'")
    assert len(completed.stderr.splitlines()) == 1
