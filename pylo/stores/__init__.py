"""Snapshot stores: where executions are kept.

``open_store`` turns what a user passes as ``store=`` into a :class:`Store`:
a name from :data:`STORE_NAMES`, a SQLAlchemy URL, or a store object.
Implementations are imported only when chosen, so ``import pylo`` does not
pay for SQLAlchemy unless the SQL store is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pylo.stores.base import ExecutionRecord, ExecutionStatus, Store

__all__ = ["STORE_NAMES", "ExecutionRecord", "ExecutionStatus", "Store", "open_store"]

#: Names accepted by ``store=``, and what each keeps inside the store directory.
STORE_NAMES = {
    "sqlite": "one SQLite database file, pylo.sqlite (the default)",
    "files": "plain append-only files under executions/",
}

#: File name of the default SQLite database inside the store directory.
SQLITE_FILE = "pylo.sqlite"


def open_store(store: Any, directory: str | os.PathLike[str] | None, *, create: bool = True) -> Store:
    """Open the store a user asked for.

    Args:
        store: ``"sqlite"``, ``"files"``, a SQLAlchemy URL such as
            ``"postgresql+psycopg://user@host/db"``, or a :class:`Store`.
        directory: The local store directory, for the named stores.
        create: Create the store if it does not exist. Readers pass False:
            they never create or write a store, and a missing one is a
            StoreError naming where it should be.

    Raises:
        ValueError: ``store`` is none of the above, or a named store was
            asked for without a directory.
        StoreError: The store exists but is damaged or foreign.
    """
    if isinstance(store, Store):
        return store
    if not isinstance(store, str):
        raise ValueError(
            f"store must be a store name ({', '.join(map(repr, STORE_NAMES))}), "
            f"a SQLAlchemy URL or a Store object, got {type(store).__name__}"
        )
    if "://" in store:
        from pylo.stores.sql import SQLStore

        return SQLStore(store, create=create)
    if store not in STORE_NAMES:
        valid = ", ".join(repr(name) for name in STORE_NAMES)
        raise ValueError(
            f"unknown store {store!r}; valid names: {valid}, or a SQLAlchemy URL such as "
            "'sqlite:////path/to/db' or 'postgresql+psycopg://user@host/db'"
        )
    if directory is None:
        raise ValueError(f"store {store!r} needs a local store directory")
    root = Path(directory)
    if store == "sqlite":
        from pylo.stores.sql import SQLStore

        return SQLStore.sqlite(root / SQLITE_FILE, create=create)
    from pylo.stores.files import FileStore

    return FileStore(root, create=create)
