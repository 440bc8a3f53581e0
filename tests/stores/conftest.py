"""Fixtures of the store contract suite.

Every test that takes ``store_factory`` (or ``store``) runs once per kind in
``store_kit.STORE_KINDS``; adding a kind there adds it to the whole suite.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Spawned test processes import ``store_kit`` (and it ``pg_server``, one level
# up) by name; putting both directories on sys.path (which spawned children
# inherit) makes that work whatever pytest's import mode is.
for _directory in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from store_kit import STORE_KINDS, StoreFactory, StoreSpec  # noqa: E402 - needs the sys.path entry above

from pylo.stores.base import Store  # noqa: E402


@pytest.fixture(params=list(STORE_KINDS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores of one kind, all on the same fresh location."""
    if request.param == "postgres":
        # Skips, saying why, when no PostgreSQL server can be had.
        request.getfixturevalue("postgres_url")
    factory = StoreFactory(StoreSpec(request.param, str(tmp_path / "store")))
    yield factory
    factory.close_all()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    """A fresh, empty store."""
    return store_factory()
