"""Creating a SQLite store file so that an empty file is never a store pylo made.

A new store is built under a temporary name (mode 0600, in private
directories), its schema written, and only then linked into place whole.
So a zero-byte ``pylo.sqlite`` can only be a truncated store, which readers
refuse as damage instead of silently starting afresh.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import URL

from pylo.errors import StoreError
from pylo.stores._common import make_private_dirs

__all__ = ["create_sqlite_file", "sqlite_url"]


def sqlite_url(file: Path) -> URL:
    """The SQLAlchemy URL of a SQLite database file."""
    return URL.create("sqlite+pysqlite", database=str(file))


def create_sqlite_file(file: Path, build_schema: Callable[[Path], None]) -> None:
    """Build a new store under a temporary name with ``build_schema``, then link it into place at once.

    Raises:
        StoreError: The file or its directories cannot be created.
    """
    try:
        make_private_dirs(file.parent)
        temporary = file.parent / f".{file.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        # Create it ourselves: SQLite would create it with mode 0o644.
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise StoreError(f"cannot create the store at {file}: {exc}") from exc
    try:
        # Switching to WAL writes the database header: the file is no
        # longer empty, which only a truncated store is.
        connection = sqlite3.connect(temporary)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
        finally:
            connection.close()
        # Closing the only connection checkpoints the WAL into the file.
        build_schema(temporary)
        try:
            os.link(temporary, file)
        except FileExistsError:
            pass  # another process created the store a moment ago: use theirs
        except OSError as exc:
            raise StoreError(f"cannot create the store at {file}: {exc}") from exc
    finally:
        for leftover in (temporary, Path(f"{temporary}-wal"), Path(f"{temporary}-shm")):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
