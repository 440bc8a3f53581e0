"""Which worker ran which positions, in the file store (mixed into ``FileStore``).

The rows travel in the header of each ``outcomes.log`` frame, under
``chunks`` (see :func:`pylo.stores._filelog.encode_flush`), so they are
written, and made durable, with the outcomes they describe; deleting the
execution's directory deletes them. Frames written before they were kept
have no ``chunks``: such an execution simply has no rows.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from pylo.stores import _filelog
from pylo.stores.base import ChunkRow, ExecutionRecord

__all__ = ["FileChunksMixin"]

#: Name of the log whose frames carry the rows (as in files.py).
_OUTCOMES = "outcomes.log"


class FileChunksMixin:
    """:meth:`~pylo.stores.base.Store.read_chunks` of :class:`~pylo.stores.files.FileStore`."""

    if TYPE_CHECKING:  # provided by FileStore
        location: str

        def _dir(self, execution_id: str) -> Path: ...
        def _guard(self, action: str) -> contextlib.AbstractContextManager[None]: ...
        def _read_record(self, directory: Path, execution_id: str) -> tuple[ExecutionRecord, int, int]: ...

    def read_chunks(self, execution_id: str) -> list[ChunkRow]:
        """See :meth:`Store.read_chunks`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: Its files cannot be read or are damaged.
        """
        directory = self._dir(execution_id)
        rows: list[ChunkRow] = []
        with self._guard(f"read the chunks of execution {execution_id!r}"):
            _, _, outcomes_end = self._read_record(directory, execution_id)
            path = directory / _OUTCOMES
            for outcome, _ in _filelog.outcomes(self.location, path, 0, outcomes_end):
                try:
                    rows.extend(
                        ChunkRow(int(first), int(last), int(worker))
                        for first, last, worker in outcome.header.get("chunks", ())
                    )
                except (TypeError, ValueError) as exc:
                    raise _filelog.damaged(
                        self.location, path, f"holds chunk rows that cannot be read ({type(exc).__name__}: {exc})"
                    ) from exc
        rows.sort(key=lambda row: row.first_position)
        return rows
