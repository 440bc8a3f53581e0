"""Snapshot stores: where executions are kept.

``open_store`` turns what a user passes as ``store=`` into a :class:`Store`
through one registry by scheme (see :mod:`pylo.stores._registry`): a bare
name (``"sqlite"``, ``"files"``) in the local store directory, a URL
(``files:///srv/pylo``, any SQLAlchemy URL), or a store object. Another kind
of store plugs in with :func:`register_store`. Implementations are imported
only when chosen, so ``import pylo`` does not pay for SQLAlchemy unless the
SQL store is used.
"""

from __future__ import annotations

from pylo.stores._registry import (
    SQLITE_FILE,
    StoreTarget,
    is_store_url,
    known_schemes,
    open_store,
    register_store,
)
from pylo.stores.base import Claim, ExecutionRecord, ExecutionStatus, Store

__all__ = [
    "SQLITE_FILE",
    "Claim",
    "ExecutionRecord",
    "ExecutionStatus",
    "Store",
    "StoreTarget",
    "is_store_url",
    "known_schemes",
    "open_store",
    "register_store",
]
