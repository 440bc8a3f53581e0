"""Deleting an execution from the file store (mixed into ``FileStore``): rename, then remove.

The execution's directory is first renamed to a hidden grave
(``executions/.deleted-<name>-<random>``), which takes the whole execution
away from every reader at once: listings skip hidden names, and its id is
free again. Only then are the files removed. A crash in between leaves a
grave, never half an execution; the next delete in the store clears graves
left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pylo.errors import ExecutionInUse, ExecutionNotFound, StoreError
from pylo.stores import _filemeta
from pylo.stores.base import ExecutionRecord

__all__ = ["GRAVE_PREFIX", "FileDeleteMixin"]

logger = logging.getLogger(__name__)

#: Name prefix of a deleted execution's directory until its files are removed.
GRAVE_PREFIX = ".deleted-"


class FileDeleteMixin:
    """:meth:`~pylo.stores.base.Store.delete_execution` of :class:`~pylo.stores.files.FileStore`."""

    if TYPE_CHECKING:  # provided by FileStore
        location: str
        root: Path
        _executions: Path
        _lock: threading.Lock
        _index_lock: threading.Lock
        _writers: dict[str, Any]
        _indexes: dict[str, Any]

        def _dir(self, execution_id: str) -> Path: ...
        def _guard(self, action: str) -> contextlib.AbstractContextManager[None]: ...
        def _read_record(self, directory: Path, execution_id: str) -> tuple[ExecutionRecord, int, int]: ...

    def delete_execution(self, execution_id: str) -> None:
        """See :meth:`Store.delete_execution`.

        Holds the lock that claims take on the execution's directory while
        it checks for dependents and renames the directory away.

        Raises:
            ExecutionNotFound: No such execution.
            ExecutionInUse: Other executions resumed it.
            StoreError: The directory cannot be read or renamed.
        """
        directory = self._dir(execution_id)
        grave = self._executions / f"{GRAVE_PREFIX}{directory.name}-{secrets.token_hex(4)}"
        with self._lock, self._guard(f"delete execution {execution_id!r}"):
            try:
                with _filemeta.locked(directory):
                    record, _, _ = self._read_record(directory, execution_id)
                    dependents = [d.id for d in self._records() if execution_id in (d.parent_id, d.input_source)]
                    if any(d != execution_id for d in dependents):
                        raise ExecutionInUse.resumed_by(
                            execution_id, [d for d in dependents if d != execution_id], self.location
                        )
                    os.rename(directory, grave)
            except FileNotFoundError:
                raise ExecutionNotFound(execution_id, self.location) from None
            self._writers.pop(execution_id, None)
        with self._index_lock:
            self._indexes.pop(str(directory / "inputs.log"), None)
        with self._guard(f"delete execution {execution_id!r}"):
            _filemeta.unindex_labels(self.root, directory.name, record.labels)
        self._clear_graves()

    def _records(self) -> Iterator[ExecutionRecord]:
        """Every readable execution record, oldest first (damaged ones are skipped: they resume nothing)."""
        with os.scandir(self._executions) as entries:
            names = [entry.name for entry in entries if not entry.name.startswith(".") and entry.is_dir()]
        found = []
        for name in names:
            with contextlib.suppress(ExecutionNotFound, StoreError):
                found.append(self._read_record(self._executions / name, unquote(name))[0])
        yield from sorted(found, key=lambda record: (record.created_at, record.id))

    def _clear_graves(self) -> None:
        """Remove the files of deleted executions, this one's and any a crash left behind."""
        try:
            with os.scandir(self._executions) as entries:
                graves = [entry.path for entry in entries if entry.name.startswith(GRAVE_PREFIX)]
        except OSError:
            return
        for grave in graves:
            try:
                shutil.rmtree(grave)
            except FileNotFoundError:
                continue  # another process removed it first
            except OSError as exc:
                # The execution is gone already; only disk space is left behind.
                logger.warning("could not remove %s, left by a deleted execution: %s", grave, exc)
