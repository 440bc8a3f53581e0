"""Choosing a store from what the user passed: one registry, by scheme.

``store=`` (every ``Pylo`` constructor, the ``pylo`` command's ``--store``)
is one of:

* a bare scheme name, ``"sqlite"`` or ``"files"``: that store in the local
  store directory;
* a URL, ``scheme://...``: ``sqlite:///path.db``, ``files:///path/dir``, or
  any SQLAlchemy URL whose dialect is registered (``postgresql+psycopg://``,
  ``mysql+pymysql://``...);
* a :class:`~pylo.stores.base.Store` object, used as it is.

A URL's scheme is looked up whole, then by its dialect (the part before
``+``). An unknown scheme is a ``ValueError`` listing the known ones; a new
kind of store plugs in with :func:`register_store`. Implementations are
imported by their factories only when chosen, so ``import pylo`` stays light.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pylo.stores.base import Store

__all__ = ["SQLITE_FILE", "StoreTarget", "is_store_url", "known_schemes", "open_store", "register_store"]

#: File name of the default SQLite database inside the store directory.
SQLITE_FILE = "pylo.sqlite"


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """What a store factory is asked to open.

    Attributes:
        scheme: The scheme the user named (``"files"``, ``"postgresql+psycopg"``).
        url: The URL as given, or None when a bare scheme name was given.
        directory: The local store directory, or None (a URL needs none).
        create: Create the store when it does not exist. Readers pass False:
            then nothing may be created or written, and a missing store is a
            :class:`~pylo.errors.StoreError` naming where it should be.
    """

    scheme: str
    url: str | None
    directory: Path | None
    create: bool

    def require_directory(self) -> Path:
        """The local store directory, or a ValueError saying this store needs one."""
        if self.directory is None:
            raise ValueError(
                f"store {self.scheme!r} keeps its files in the local store directory, but none was given; "
                f"pass a directory, or a URL such as '{self.scheme}:///path' as store="
            )
        return self.directory


#: A function that opens a store of one kind. It raises ValueError for a
#: target it cannot take (a bare name where it needs a URL, say) and
#: StoreError for a store that exists but cannot be used.
StoreOpener = Callable[[StoreTarget], Store]

_FACTORIES: dict[str, StoreOpener] = {}
_LOCK = threading.Lock()
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9.+-]*")
#: SQLAlchemy's own dialects, with any driver (``postgresql+psycopg``): URLs only.
_DIALECTS = ("postgresql", "mysql", "mariadb", "oracle", "mssql")


def register_store(scheme: str, factory: StoreOpener) -> None:
    """Make ``store="SCHEME"`` and ``store="SCHEME://..."`` open stores made by ``factory``.

    Args:
        scheme: A URL scheme (letters, digits, ``+``, ``-``, ``.``; starting
            with a letter). Registering a name again replaces its factory.
        factory: Called with a :class:`StoreTarget`; returns the store.

    Raises:
        ValueError: ``scheme`` is not a valid scheme name.
        TypeError: ``factory`` is not callable.
    """
    if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme):
        raise ValueError(
            f"store scheme must be letters, digits, '+', '-' or '.', starting with a letter; got {scheme!r}"
        )
    if not callable(factory):
        raise TypeError(f"factory for store scheme {scheme!r} must be callable, got {type(factory).__name__}")
    with _LOCK:
        _FACTORIES[scheme.lower()] = factory


def known_schemes() -> list[str]:
    """The registered schemes, sorted."""
    with _LOCK:
        return sorted(_FACTORIES)


def is_store_url(value: object) -> bool:
    """True for a ``scheme://...`` string (which needs no local store directory)."""
    return isinstance(value, str) and "://" in value


def open_store(store: Any, directory: str | os.PathLike[str] | None, *, create: bool = True) -> Store:
    """Open the store a user asked for.

    Args:
        store: A registered scheme name (``"sqlite"``, ``"files"``), a URL
            (``"postgresql+psycopg://user@host/db"``, ``"files:///srv/pylo"``),
            or a :class:`Store`, returned as it is.
        directory: The local store directory, for bare scheme names.
        create: Create the store if it does not exist (see :class:`StoreTarget`).

    Raises:
        ValueError: ``store`` is none of the above, an unknown scheme (the
            message lists the known ones), or a bare name without a directory.
        StoreError: The store exists but is damaged or foreign, or (with
            ``create=False``) does not exist.
    """
    if isinstance(store, Store):
        return store
    if not isinstance(store, str):
        raise ValueError(
            f"store must be a store name ({', '.join(map(repr, known_schemes()))}), a URL or a Store object, "
            f"got {type(store).__name__}"
        )
    if is_store_url(store):
        scheme, url = store.split("://", 1)[0], store
    else:
        scheme, url = store, None
    factory = _factory(scheme, store if url is None else None)
    target = StoreTarget(scheme, url, None if directory is None else Path(directory), create)
    return factory(target)


def _factory(scheme: str, bare: str | None) -> StoreOpener:
    key = scheme.lower()
    with _LOCK:
        factory = _FACTORIES.get(key) or _FACTORIES.get(key.split("+", 1)[0])
    if factory is not None:
        return factory
    schemes = known_schemes()
    names = ["sqlite", "files", *(name for name in schemes if name not in ("sqlite", "files", *_DIALECTS))]
    # Name the scheme only: the rest of a URL may hold a password.
    given = f"store {bare!r}" if bare is not None else f"store URL scheme {scheme!r}"
    raise ValueError(
        f"unknown {given}; valid names: {', '.join(map(repr, names))} (in the local store directory), or a URL "
        f"whose scheme is one of {', '.join(schemes)}, such as 'postgresql+psycopg://user@host/db'; "
        "register other kinds of store with pylo.register_store"
    )


# -- the stores pylo ships ------------------------------------------------------


def _open_sqlite(target: StoreTarget) -> Store:
    from pylo.stores.sql import SQLStore

    if target.url is not None:
        return SQLStore(target.url, create=target.create)
    return SQLStore.sqlite(target.require_directory() / SQLITE_FILE, create=target.create)


def _open_files(target: StoreTarget) -> Store:
    from pylo.stores.files import FileStore

    if target.url is None:
        return FileStore(target.require_directory(), create=target.create)
    parts = urlsplit(target.url)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise ValueError("a files URL names a local directory: 'files:///absolute/path' or 'files://localhost/path'")
    return FileStore(unquote(parts.path), create=target.create)


def _open_sql(target: StoreTarget) -> Store:
    from pylo.stores.sql import SQLStore

    if target.url is None:
        raise ValueError(
            f"store {target.scheme!r} is a database: give its SQLAlchemy URL, such as "
            f"'{target.scheme}://user@host/db', as store="
        )
    return SQLStore(target.url, create=target.create)


register_store("sqlite", _open_sqlite)
register_store("files", _open_files)
for _dialect in _DIALECTS:
    register_store(_dialect, _open_sql)
