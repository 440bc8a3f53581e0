"""A store of plain files in a directory, no database needed.

Layout under the root directory::

    pylo-files.json                 {"format": "pylo-files", "version": 1}
    executions/<id>/execution.json  the record, replaced atomically
    executions/<id>/inputs.log      one frame per batch, append-only
    executions/<id>/outcomes.log    one frame per flush, append-only

``<id>`` is the execution id, percent-encoded where it is not a safe file
name. The logs' format is :mod:`pylo.stores._filelog`, ``execution.json``'s
:mod:`pylo.stores._filerecord`; this module is the store built on them.

Commit points are appends. Appending a frame commits a write; rewriting
``execution.json`` afterwards only caches the counts, along with the log
offsets it covers. A reader that finds complete frames past those offsets (a
crash came between the two steps, or a writer is between them right now)
applies them itself. A frame cut short by a crash, or one still being
written, fails its length or CRC check and is ignored; the next writer of
that execution truncates it away before appending.

Like SQLite with ``synchronous=NORMAL``, files are not fsynced: committed data
survives a crash of the application, not necessarily a power loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from pylo.errors import DamagedExecutions, ExecutionExists, ExecutionNotFound, StoreError
from pylo.stores import _filelog, _filemeta, _filerecord
from pylo.stores._common import (
    batches_problem,
    check_batches,
    check_flush,
    dump_options,
    labels_match,
    make_private_dirs,
)
from pylo.stores._filechunks import FileChunksMixin
from pylo.stores._filedelete import FileDeleteMixin
from pylo.stores._filelog import FORMAT_NAME, MARKER_NAME, InputEntry, Outcome
from pylo.stores.base import (
    BatchRecord,
    Claim,
    ExecutionRecord,
    ExecutionStatus,
    FailureRow,
    Flush,
    Store,
)

if TYPE_CHECKING:
    from pylo.stores.runs import RunStore

__all__ = ["FORMAT_NAME", "MARKER_NAME", "FileStore"]

logger = logging.getLogger(__name__)


_EXECUTIONS = "executions"
_RECORD = "execution.json"
_INPUTS = "inputs.log"
_OUTCOMES = "outcomes.log"


@dataclass(slots=True)
class _Index:
    """Cached ``batch_no -> InputEntry`` of one ``inputs.log``, extended as it grows."""

    first: bytes
    end: int
    entries: dict[int, InputEntry]


@dataclass(slots=True)
class _Writer:
    """What this process knows about an execution it writes."""

    record: ExecutionRecord
    inputs_end: int
    outcomes_end: int


class FileStore(FileDeleteMixin, FileChunksMixin, Store):
    """Executions as plain files under a root directory.

    Safe to share between threads; any number of processes may use the same
    root, each writing its own executions, while others read them.

    Args:
        root: The store directory. Created with mode 0o700 if missing (its
            missing parents too); an existing directory without a marker
            file gets one, so the directory may hold other things too (such
            as a SQLite store).
        create: Create the store when missing. When False (readers) nothing
            is ever written, and a directory without a marker is a StoreError.

    Raises:
        StoreError: The root is not a directory, cannot be created, has no
            marker (with ``create=False``), or its marker names another
            format or an unknown version.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._executions = self.root / _EXECUTIONS
        # One writer per execution: writes of this process are serialized,
        # reads take no lock except to extend the cached payload indexes.
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._writers: dict[str, _Writer] = {}
        self._indexes: dict[str, _Index] = {}
        self.create = create
        if not create:
            _filelog.check_marker(self.root, create=False)
            return
        try:
            make_private_dirs(self.root)
        except FileExistsError as exc:
            raise StoreError(f"cannot open the store at {self.location}: it is not a directory") from exc
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.location}: {exc}") from exc
        _filelog.check_marker(self.root, create=create)
        try:
            self._executions.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self._executions}: {exc}") from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    # -- plumbing ----------------------------------------------------------------

    def _guard(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Turn OS errors into a StoreError naming the store (the OS message names the file)."""
        return _filelog.os_errors_named(self.location, action)

    def _not_found(self, execution_id: str) -> ExecutionNotFound:
        return ExecutionNotFound(execution_id, self.location)

    def _dir(self, execution_id: str) -> Path:
        """The directory of an existing-or-not execution; an impossible id is not found."""
        try:
            return self._executions / _filelog.dir_name(execution_id)
        except ValueError:
            raise self._not_found(execution_id) from None

    def _damaged(self, path: Path, what: str) -> StoreError:
        return StoreError(f"the store at {self.location} is damaged: {path} {what}")

    def _read_record(self, directory: Path, execution_id: str) -> tuple[ExecutionRecord, int, int]:
        """Read ``execution.json`` as written last (no catching up with the logs)."""
        path = directory / _RECORD
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            # A directory without execution.json is being created right now
            # (or its creation crashed): the execution does not exist yet.
            # Its logs are empty then; logs with data lost their record.
            if any(_filelog.size_or_zero(directory / name) for name in (_INPUTS, _OUTCOMES)):
                raise self._damaged(path, "is missing, although the execution's logs hold data") from None
            raise self._not_found(execution_id) from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        try:
            record, inputs_end, outcomes_end = _filerecord.record_from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise self._damaged(path, f"cannot be read as an execution record ({type(exc).__name__}: {exc})") from exc
        if record.id != execution_id:
            raise self._damaged(path, f"holds execution {record.id!r} instead of {execution_id!r}")
        return record, inputs_end, outcomes_end

    def _catch_up(
        self, directory: Path, record: ExecutionRecord, inputs_end: int, outcomes_end: int
    ) -> tuple[ExecutionRecord, int, int]:
        """Apply committed log frames that ``execution.json`` does not cover yet.

        Returns the record as of the last committed write and the offsets
        where the committed parts of the logs end.
        """
        inputs, outcomes = directory / _INPUTS, directory / _OUTCOMES
        inputs_size, outcomes_size = _filelog.file_size(inputs), _filelog.file_size(outcomes)
        if inputs_size < inputs_end:
            raise self._damaged(inputs, f"is shorter ({inputs_size} bytes) than its execution.json says ({inputs_end})")
        if outcomes_size < outcomes_end:
            raise self._damaged(
                outcomes, f"is shorter ({outcomes_size} bytes) than its execution.json says ({outcomes_end})"
            )
        inputs_from = inputs_end
        if outcomes_size > outcomes_end:
            last: Outcome | None = None
            for outcome, end in _filelog.outcomes(self.location, outcomes, outcomes_end):
                last, outcomes_end = outcome, end
            if last is not None:
                record, flushed_inputs_end = _filelog.record_after_flush(self.location, outcomes, record, last.header)
                # That flush's total already counts the batches added before it.
                inputs_from = max(inputs_from, flushed_inputs_end)
        inputs_end = inputs_from
        if inputs_size > inputs_from:
            entries, inputs_end = _filelog.scan_inputs(self.location, inputs, inputs_from, with_states=False)
            if entries:
                record = dataclasses.replace(record, total=record.total + sum(entry.size for entry in entries))
        return record, inputs_end, outcomes_end

    # -- log reading -----------------------------------------------------------

    def _index(self, path: Path) -> dict[int, InputEntry]:
        """The payload index of an ``inputs.log``, scanning only what was appended since last time."""
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            # The first frame header identifies the log: an execution deleted
            # and created again may well get the same inode number.
            first = file.read(_filelog.FRAME_SIZE)
        key = str(path)
        with self._index_lock:
            index = self._indexes.get(key)
            if index is None or size < index.end or (index.end and index.first != first):
                index = self._indexes[key] = _Index(first, 0, {})
            if size > index.end:
                entries, index.end = _filelog.scan_inputs(self.location, path, index.end, with_states=False)
                index.first = first
                for entry in entries:
                    index.entries[entry.batch_no] = entry
            return index.entries

    # -- writing -----------------------------------------------------------------

    def _writer(self, execution_id: str) -> tuple[Path, _Writer]:
        """This process's view of an execution it writes; call with ``self._lock`` held.

        The first write of an execution in this process (or a write after
        someone else changed its logs) reloads it from disk, and truncates
        what a crashed writer left half-appended.
        """
        directory = self._dir(execution_id)
        writer = self._writers.get(execution_id)
        inputs, outcomes = directory / _INPUTS, directory / _OUTCOMES
        if writer is not None:
            try:
                sizes = (_filelog.file_size(inputs), _filelog.file_size(outcomes))
            except FileNotFoundError:
                sizes = (-1, -1)
            if sizes == (writer.inputs_end, writer.outcomes_end):
                return directory, writer
        record, inputs_end, outcomes_end = self._read_record(directory, execution_id)
        record, inputs_end, outcomes_end = self._catch_up(directory, record, inputs_end, outcomes_end)
        for path, end in ((inputs, inputs_end), (outcomes, outcomes_end)):
            size = _filelog.file_size(path)
            if size > end:
                logger.warning(
                    "discarding %d bytes of an unfinished write at the end of %s (left by a crash)", size - end, path
                )
                os.truncate(path, end)
        writer = self._writers[execution_id] = _Writer(record, inputs_end, outcomes_end)
        return directory, writer

    def _save_record(self, directory: Path, writer: _Writer) -> None:
        record = writer.record
        _filelog.write_atomically(
            directory / _RECORD, _filerecord.record_to_json(record, writer.inputs_end, writer.outcomes_end)
        )

    def create_execution(self, record: ExecutionRecord) -> None:
        """See :meth:`Store.create_execution`.

        Raises:
            ExecutionExists: An execution with ``record.id`` exists.
            StoreError: The directory cannot be written.
            TypeError: ``record.options`` is not JSON-serializable.
            ValueError: The id is empty or too long for a file name.
        """
        directory = self._executions / _filelog.dir_name(record.id)
        # Stored as JSON reads it back: the writer's copy must not differ.
        record = dataclasses.replace(record, options=json.loads(dump_options(record.id, record.options)))
        with self._guard(f"create execution {record.id!r}"):
            try:
                # mkdir either creates or fails, atomically: of processes
                # creating the same id at once, exactly one wins.
                os.mkdir(directory, 0o700)
            except FileExistsError:
                raise ExecutionExists(record.id, self.location) from None
            try:
                for name in (_INPUTS, _OUTCOMES):
                    os.close(os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                _filemeta.index_labels(self.root, directory.name, record.labels)
                # Last: execution.json is what makes the execution visible.
                _filelog.write_atomically(directory / _RECORD, _filerecord.record_to_json(record, 0, 0))
            except BaseException:
                # Give the id back rather than leave a directory that claims
                # it but holds no execution.
                for name in (_INPUTS, _OUTCOMES):
                    with contextlib.suppress(OSError):
                        os.unlink(directory / name)
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
                raise
            with self._lock:
                self._writers[record.id] = _Writer(record, 0, 0)

    def add_batches(self, execution_id: str, batches: Sequence[BatchRecord]) -> None:
        """See :meth:`Store.add_batches`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The directory cannot be written or is damaged.
            ValueError: A batch's ``states`` do not have ``size`` bytes.
        """
        check_batches(execution_id, batches)
        frames = _filelog.encode_batches(batches)
        with self._lock, self._guard(f"add batches to execution {execution_id!r}"):
            directory, writer = self._writer(execution_id)
            if frames:
                writer.inputs_end = _filelog.append(directory / _INPUTS, frames, writer.inputs_end)
            writer.record = dataclasses.replace(
                writer.record,
                total=writer.record.total + sum(batch.size for batch in batches),
                updated_at=time.time(),
            )
            self._save_record(directory, writer)

    def record_flush(self, execution_id: str, flush: Flush) -> None:
        """See :meth:`Store.record_flush`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The directory cannot be written or is damaged.
            ValueError: The flush sets the derived ``CRASHED`` status.
        """
        check_flush(execution_id, flush)
        with self._lock, self._guard(f"record a flush of execution {execution_id!r}"):
            directory, writer = self._writer(execution_id)
            old = writer.record
            record = dataclasses.replace(
                old,
                total=flush.total,
                finished=flush.finished,
                failed=flush.failed,
                status=old.status if flush.status is None else ExecutionStatus(flush.status),
                ended_at=old.ended_at if flush.ended_at is None else float(flush.ended_at),
                inputs_complete=old.inputs_complete or flush.inputs_complete,
                updated_at=time.time(),
            )
            if flush.status is not None:  # a final status comes with its stop reason, or none
                record = dataclasses.replace(record, stop_reason=flush.stop_reason, stop_detail=flush.stop_detail)
            data = _filelog.encode_flush(
                record, writer.inputs_end, flush.states, flush.failures, flush.results, flush.chunks
            )
            writer.outcomes_end = _filelog.append(directory / _OUTCOMES, data, writer.outcomes_end)
            writer.record = record
            self._save_record(directory, writer)

    # -- reading -----------------------------------------------------------------

    def get_execution(self, execution_id: str) -> ExecutionRecord:
        """See :meth:`Store.get_execution`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: Its files cannot be read or are damaged.
        """
        directory = self._dir(execution_id)
        with self._guard(f"read execution {execution_id!r}"):
            record, inputs_end, outcomes_end = self._read_record(directory, execution_id)
            return self._catch_up(directory, record, inputs_end, outcomes_end)[0]

    def list_executions(self, *, labels: Mapping[str, str] | None = None) -> list[ExecutionRecord]:
        """See :meth:`Store.list_executions`.

        With ``labels``, only the executions the label index names are read.

        Raises:
            DamagedExecutions: Some executions cannot be read; the error
                names each one's path and problem and carries the intact
                executions.
            StoreError: The executions directory cannot be read.
        """
        records = []
        damaged: dict[str, StoreError] = {}
        if not self.create and not self._executions.exists():
            return []  # a store whose first execution was never created
        with self._guard("list executions"):
            if labels:
                names = sorted(_filemeta.indexed_names(self.root, labels))
            else:
                with os.scandir(self._executions) as entries:
                    names = [entry.name for entry in entries if not entry.name.startswith(".") and entry.is_dir()]
        for name in names:
            directory = self._executions / name
            execution_id = unquote(name)
            try:
                with self._guard(f"read execution {execution_id!r}"):
                    record, inputs_end, outcomes_end = self._read_record(directory, execution_id)
                    records.append(self._catch_up(directory, record, inputs_end, outcomes_end)[0])
            except ExecutionNotFound:
                continue  # being created
            except StoreError as exc:
                # Each execution has files of its own: read the others, then
                # say which ones are damaged (see DamagedExecutions).
                damaged[execution_id] = exc
        if labels:  # an index entry can outlive a creation that failed
            records = [record for record in records if labels_match(record, labels)]
        records.sort(key=lambda record: (record.created_at, record.id))
        if damaged:
            raise DamagedExecutions(self.location, records, damaged)
        return records

    def read_batches(self, execution_id: str, *, payloads: bool = False) -> Iterator[BatchRecord]:
        """See :meth:`Store.read_batches`.

        Replays ``inputs.log`` (fixed fields and states only) and then
        ``outcomes.log``; reading the inputs first means every batch
        returned carries the states of every flush seen.

        Raises:
            ExecutionNotFound: No such execution (raised before returning).
            StoreError: Its files cannot be read or are damaged, or a payload
                is missing from the input source.
        """
        directory = self._dir(execution_id)
        with self._guard(f"read the batches of execution {execution_id!r}"):
            record, inputs_end, outcomes_end = self._read_record(directory, execution_id)
            entries, _ = _filelog.scan_inputs(
                self.location, directory / _INPUTS, 0, with_states=True, committed=inputs_end
            )
            states = {entry.batch_no: entry.states for entry in entries}
            outcomes = directory / _OUTCOMES
            for outcome, _ in _filelog.outcomes(self.location, outcomes, 0, outcomes_end):
                for batch_no, data in _filelog.decode_flush(self.location, outcomes, outcome)[0]:
                    # A flush may name batches added after inputs.log was read.
                    if batch_no in states:
                        states[batch_no] = data
        records = [
            BatchRecord(entry.batch_no, entry.first_position, entry.size, states[entry.batch_no] or b"")
            for entry in sorted(entries, key=lambda entry: entry.batch_no)
        ]
        problem = batches_problem(records, record.total)
        if problem is not None:
            raise self._damaged(directory, f"holds execution {execution_id!r} with {problem}")
        if not payloads:
            return iter(records)
        return self._attach_payloads(execution_id, record.input_source, records)

    def _source_inputs(self, execution_id: str, source: str) -> Path:
        if source == execution_id:
            return self._dir(execution_id) / _INPUTS
        try:
            return self._executions / _filelog.dir_name(source) / _INPUTS
        except ValueError as exc:
            raise StoreError(
                f"execution {execution_id!r} in the store at {self.location} names an impossible "
                f"input source {source!r}"
            ) from exc

    def _attach_payloads(self, execution_id: str, source: str, records: list[BatchRecord]) -> Iterator[BatchRecord]:
        with self._guard(f"read the inputs of execution {execution_id!r}"):
            path = self._source_inputs(execution_id, source)
            index = self._index(path)
            with open(path, "rb") as file:
                for record in records:
                    entry = index.get(record.batch_no)
                    if entry is None or not entry.flags & _filelog.HAS_PAYLOAD:
                        raise StoreError(
                            f"batch {record.batch_no} of execution {execution_id!r} has no inputs in "
                            f"execution {source!r}, which should hold them, in the store at {self.location}"
                        )
                    yield dataclasses.replace(record, payload=_filelog.read_payload(self.location, file, path, entry))

    def read_payloads(self, execution_id: str, batch_nos: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """See :meth:`Store.read_payloads`.

        Raises:
            ExecutionNotFound: No such execution (raised before returning).
            StoreError: Its files cannot be read or are damaged.
        """
        directory = self._dir(execution_id)
        with self._guard(f"read the inputs of execution {execution_id!r}"):
            record, _, _ = self._read_record(directory, execution_id)
            own = self._index(directory / _INPUTS)
            path = self._source_inputs(execution_id, record.input_source)
            source = own if record.input_source == execution_id else self._index(path)
        return self._payloads(execution_id, path, own, source, batch_nos)

    def _payloads(
        self,
        execution_id: str,
        path: Path,
        own: dict[int, InputEntry],
        source: dict[int, InputEntry],
        batch_nos: Iterable[int],
    ) -> Iterator[tuple[int, bytes]]:
        with self._guard(f"read the inputs of execution {execution_id!r}"), open(path, "rb") as file:
            for batch_no in batch_nos:
                entry = source.get(batch_no)
                if batch_no not in own or entry is None:
                    continue
                if not entry.flags & _filelog.HAS_PAYLOAD:
                    raise self._damaged(path, f"holds batch {batch_no} without its inputs")
                yield batch_no, _filelog.read_payload(self.location, file, path, entry)

    def read_failures(self, execution_id: str) -> list[FailureRow]:
        """See :meth:`Store.read_failures`.

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: Its files cannot be read or are damaged.
        """
        directory = self._dir(execution_id)
        failures: dict[int, FailureRow] = {}
        with self._guard(f"read the failures of execution {execution_id!r}"):
            _, _, outcomes_end = self._read_record(directory, execution_id)
            outcomes = directory / _OUTCOMES
            for outcome, _ in _filelog.outcomes(self.location, outcomes, 0, outcomes_end):
                for row in _filelog.decode_flush(self.location, outcomes, outcome)[1]:
                    failures[row.position] = row
        return [failures[position] for position in sorted(failures)]

    def read_results(self, execution_id: str) -> Iterator[tuple[int, bytes]]:
        """See :meth:`Store.read_results`.

        Finds every result in one pass over ``outcomes.log``, then reads them
        back in position order: memory holds their offsets, not their bytes.

        Raises:
            ExecutionNotFound: No such execution (raised before returning).
            StoreError: Its files cannot be read or are damaged.
        """
        directory = self._dir(execution_id)
        outcomes = directory / _OUTCOMES
        found: dict[int, tuple[int, int]] = {}
        with self._guard(f"read the results of execution {execution_id!r}"):
            _, _, outcomes_end = self._read_record(directory, execution_id)
            for outcome, end in _filelog.outcomes(self.location, outcomes, 0, outcomes_end):
                body_offset = end - len(outcome.body)
                for position, start, length in _filelog.decode_flush(self.location, outcomes, outcome)[2]:
                    found[position] = (body_offset + start, length)
        return self._results(execution_id, outcomes, [(position, *found[position]) for position in sorted(found)])

    def _results(
        self, execution_id: str, path: Path, places: list[tuple[int, int, int]]
    ) -> Iterator[tuple[int, bytes]]:
        with self._guard(f"read the results of execution {execution_id!r}"), open(path, "rb") as file:
            for position, offset, length in places:
                file.seek(offset)
                value = file.read(length)
                if len(value) < length:
                    raise self._damaged(path, f"lost the result of position {position}")
                yield position, value

    # -- claims --------------------------------------------------------------------

    def claim_execution(self, execution_id: str, claim: Claim, *, replacing: Claim | None = None) -> Claim | None:
        """See :meth:`Store.claim_execution` (``claim.json`` under a lock: :mod:`pylo.stores._filemeta`).

        Raises:
            ExecutionNotFound: No such execution.
            StoreError: The directory cannot be written, or its claim is damaged.
        """
        directory = self._dir(execution_id)
        with self._guard(f"claim execution {execution_id!r}"):
            self._read_record(directory, execution_id)  # the existence check
            try:
                return _filemeta.swap_claim(self.location, directory, claim, replacing)
            except FileNotFoundError:
                raise self._not_found(execution_id) from None

    def release_claim(self, execution_id: str, claimant: str) -> None:
        """See :meth:`Store.release_claim`.

        Raises:
            StoreError: The directory cannot be written.
        """
        with self._guard(f"release the claim on execution {execution_id!r}"):
            _filemeta.drop_claim(self.location, self._dir(execution_id), execution_id, claimant)

    def _open_runs(self) -> RunStore:
        """See :meth:`Store.runs`: runs live under ``runs/``, made by the first run."""
        from pylo.stores.files_runs import FileRunStore

        return FileRunStore(self)

    def close(self) -> None:
        """Forget cached indexes and writer state (no file stays open between calls)."""
        with self._lock:
            self._writers.clear()
        with self._index_lock:
            self._indexes.clear()
