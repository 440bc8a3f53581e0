"""What an execution runs over: its inputs, recorded in batches, and the order they are handed out.

Data flow::

    iterable ──► record_fresh ──(batches)──► store.add_batches
                                                │ (all inputs are durable
                                                ▼  before any task runs)
    Plan: per-batch state bytes + where each batch's inputs come from
        │  Scheduler.take(n): chunks of pending offsets, never across batches
        ▼
    the coordinator (pylo._engine)

Why record every input before the first task runs: a resume must need
nothing from the user but the function, even after ``kill -9`` at any
moment. Inputs that were never recorded could not be resumed.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pylo._codec import Codec
from pylo._options import RunOptions
from pylo._stops import Stop
from pylo.errors import StoreError
from pylo.stores.base import (
    FAILED,
    FINISHED,
    PENDING,
    BatchRecord,
    ExecutionRecord,
    ExecutionStatus,
    Flush,
    Store,
)

__all__ = ["Batch", "Chunk", "Plan", "Scheduler", "create_resumed", "new_record", "record_end", "record_fresh"]

#: Most inputs per stored batch (and so per chunk).
MAX_BATCH = 1024
#: Inputs in the first batch, before the average input size is known.
FIRST_BATCH = 64
#: Encoded bytes a batch aims at, so huge inputs make small batches.
TARGET_BATCH_BYTES = 4 << 20
#: Batches whose inputs one query reads back from the store.
READ_AHEAD = 16
#: Most batches written per store transaction while recording (one statement's rows).
BATCHES_PER_WRITE = 256
#: Most encoded bytes of inputs held for one transaction while recording: a
#: few of the largest batches (sixteen of them, as before, could hold 64 MB),
#: or a quarter of a million small inputs (which took 62 commits).
WRITE_BYTES = 16 << 20
#: Encoded bytes of a generator's first batches kept in memory while recording,
#: so its run does not read them back from the store: a bound, whatever the
#: number of inputs (a million small inputs fit in it, whole).
KEEP_PAYLOAD_BYTES = 16 << 20

logger = logging.getLogger(__name__)

FAILED_TO_PENDING = bytes.maketrans(bytes([FAILED]), bytes([PENDING]))


@dataclass(slots=True)
class Batch:
    """What the coordinator keeps in memory about one stored batch."""

    batch_no: int
    first_position: int
    states: bytearray
    # Inputs of the batch in memory, or None to load them from the store.
    inputs: Sequence[Any] | None = None


@dataclass(slots=True)
class Plan:
    """Every batch of an execution, and how to get at their inputs."""

    batches: list[Batch]
    reader: PayloadReader
    total: int
    finished: int = 0
    failed: int = 0


@dataclass(slots=True)
class Chunk:
    """Inputs of one batch handed to a lane together."""

    batch: Batch
    offsets: Sequence[int]  # offsets within the batch; a range when contiguous
    lane: int = -1
    applied: int = 0  # outcomes [0, applied) are already in the batch's states
    budget: int = 0  # failures the chunk may see: its grant from the Budgets
    charged: int = 0  # failures of the chunk heard so far


def new_record(
    execution_id: str,
    task_name: str,
    codec: Codec,
    options: RunOptions,
    *,
    parent: ExecutionRecord | None = None,
) -> ExecutionRecord:
    """The record a new execution starts with."""
    now = time.time()
    return ExecutionRecord(
        id=execution_id,
        parent_id=None if parent is None else parent.id,
        input_source=execution_id if parent is None else parent.input_source,
        status=ExecutionStatus.RUNNING,
        created_at=now,
        updated_at=now,
        ended_at=None,
        task_name=task_name,
        codec=codec.name,
        pid=os.getpid(),
        host=socket.gethostname(),
        options=options.describe(),
    )


def record_fresh(
    store: Store,
    record: ExecutionRecord,
    task_inputs: Iterable[Any],
    codec: Codec,
) -> Plan:
    """Create the execution and record every input, in batches.

    Collections (lists, tuples, ranges, sets, dicts...) are already in
    memory, so tasks get the caller's own objects. Any other iterable is read
    once, and its inputs are read back from the store batch by batch while
    the tasks run, so memory does not grow with the number of inputs.
    """
    store.create_execution(record)
    in_memory: Sequence[Any] | None = None
    if isinstance(task_inputs, (list, tuple, range)):
        in_memory = task_inputs
    elif isinstance(task_inputs, Collection):
        # Sets, dicts, deques, arrays...: in memory already, but not all can
        # be sliced (a deque is a Sequence that cannot), so take a list.
        in_memory = list(task_inputs)
    iterator: Iterator[Any] = iter(task_inputs if in_memory is None else in_memory)

    batches: list[Batch] = []
    pending_writes: list[BatchRecord] = []
    pending_bytes = 0
    kept: dict[int, bytes] = {}
    keep = 0 if in_memory is not None else KEEP_PAYLOAD_BYTES
    position = 0
    size = FIRST_BATCH
    while True:
        if in_memory is not None:
            items = in_memory[position : position + size]
            if not isinstance(items, list):  # ranges and tuples slice to their own type
                items = list(items)
        else:
            items = list(itertools.islice(iterator, size))
        if not items:
            break
        payload = codec.encode_batch(items, position)
        count = len(items)
        batch_no = len(batches)
        batches.append(
            Batch(
                batch_no=batch_no,
                first_position=position,
                states=bytearray(count),
                inputs=None if in_memory is None else in_memory[position : position + count],
            )
        )
        pending_writes.append(BatchRecord(batch_no, position, count, bytes(count), payload))
        pending_bytes += len(payload)
        if len(payload) <= keep:
            kept[batch_no] = payload
            keep -= len(payload)
        else:
            keep = 0  # keep a prefix: the batches the run reaches first
        if len(pending_writes) >= BATCHES_PER_WRITE or pending_bytes >= WRITE_BYTES:
            store.add_batches(record.id, pending_writes)
            pending_writes = []
            pending_bytes = 0
        position += count
        # Aim each batch at TARGET_BATCH_BYTES, given the average input size so far.
        average = max(1.0, len(payload) / count)
        size = max(1, min(MAX_BATCH, int(TARGET_BATCH_BYTES / average)))
    if pending_writes:
        store.add_batches(record.id, pending_writes)
    store.record_flush(
        record.id,
        Flush(states={}, failures=(), results=(), total=position, finished=0, failed=0, inputs_complete=True),
    )
    return Plan(batches=batches, reader=PayloadReader(store, record.id, codec, kept=kept), total=position)


def create_resumed(
    store: Store,
    record: ExecutionRecord,
    parent: ExecutionRecord,
    codec: Codec,
) -> Plan:
    """Create a resume of ``parent``: its finished inputs stay finished, the rest are pending."""
    store.create_execution(record)
    batches: list[Batch] = []
    pending_writes: list[BatchRecord] = []
    total = finished = 0
    for stored in store.read_batches(parent.id):
        states = stored.states.translate(FAILED_TO_PENDING)
        batches.append(Batch(stored.batch_no, stored.first_position, bytearray(states)))
        pending_writes.append(BatchRecord(stored.batch_no, stored.first_position, stored.size, states))
        total += stored.size
        finished += states.count(FINISHED)
        if len(pending_writes) >= BATCHES_PER_WRITE:  # no payloads: rows are small
            store.add_batches(record.id, pending_writes)
            pending_writes = []
    if pending_writes:
        store.add_batches(record.id, pending_writes)
    store.record_flush(
        record.id,
        Flush(states={}, failures=(), results=(), total=total, finished=finished, failed=0, inputs_complete=True),
    )
    reader = PayloadReader(store, record.id, codec, record.input_source)
    return Plan(batches=batches, reader=reader, total=total, finished=finished)


class PayloadReader:
    """Reads batches' inputs back from the store, several batches per query.

    Used when inputs are not in memory (a generator, or a resume). The
    scheduler opens batches in order, so one query fetches the next
    READ_AHEAD batches that still have pending inputs; only their encoded
    bytes wait in memory, and each is decoded when its turn comes.
    """

    def __init__(
        self,
        store: Store,
        execution_id: str,
        codec: Codec,
        source: str | None = None,
        *,
        kept: dict[int, bytes] | None = None,
    ) -> None:
        self._store = store
        self._execution_id = execution_id
        self._source = source or execution_id
        self._codec = codec
        # Payloads still in memory from recording them (each used once), then those read ahead.
        self._kept = kept or {}
        self._fetched: dict[int, bytes] = {}

    def load(self, batches: Sequence[Batch], index: int) -> Sequence[Any]:
        """Decoded inputs of ``batches[index]``."""
        batch_no = batches[index].batch_no
        payload = self._kept.pop(batch_no, None)
        if payload is not None:
            return self._decode(batch_no, payload)
        if batch_no not in self._fetched:
            wanted = [batch_no]
            for later in batches[index + 1 :]:
                if len(wanted) >= READ_AHEAD:
                    break
                if PENDING in later.states:
                    wanted.append(later.batch_no)
            self._fetched = dict(self._store.read_payloads(self._execution_id, wanted))
        return self._decode(batch_no, self._fetched.pop(batch_no, None))

    def _decode(self, batch_no: int, payload: bytes | None) -> Sequence[Any]:
        # Name the execution that holds the inputs: a resume reads its parent's.
        where = f"batch {batch_no} of execution {self._source!r} in the store at {self._store.location}"
        if payload is None:
            raise StoreError(f"the inputs of {where} are missing")
        try:
            return self._codec.decode_batch(payload)
        except Exception as exc:  # a damaged payload: say where, never a bare pickle error
            raise StoreError(f"cannot decode the inputs of {where}: {type(exc).__name__}: {exc}") from exc


class Scheduler:
    """Cuts pending inputs into chunks, batch by batch, in position order.

    Args:
        plan: The execution's plan.
        most: The most inputs a chunk may hold (a flush's worth at most).
    """

    def __init__(self, plan: Plan, most: int = MAX_BATCH) -> None:
        self._plan = plan
        self._most = most
        self._next_batch = 0
        self._returned: collections.deque[tuple[Chunk, Sequence[Any]]] = collections.deque()
        self._batch: Batch | None = None
        self._inputs: Sequence[Any] = ()
        self._offsets: Sequence[int] = ()
        self._cursor = 0

    def give_back(self, chunk: Chunk, inputs: Sequence[Any]) -> None:
        """Return a chunk no lane started, to be handed out again first."""
        self._returned.append((chunk, inputs))

    def take(self, size: int) -> tuple[Chunk, Sequence[Any]] | None:
        """Next chunk of ``size`` pending inputs, or None when none are left.

        A chunk never spans two batches; when what would be left of its
        batch is shorter than half of ``size``, it joins the chunk (which
        still holds at most ``most`` inputs).
        """
        if self._returned:
            return self._returned.popleft()
        while self._cursor >= len(self._offsets):
            if not self._open_next_batch():
                return None
        assert self._batch is not None
        start = self._cursor
        end = len(self._offsets)
        stop = min(start + size, end)
        if end - stop < size // 2 and end - start <= self._most:
            # The rest of the batch joins this chunk: alone it would be a
            # chunk of a few inputs paying a whole chunk's cost (a round trip
            # through the scheduler on Dask).
            stop = end
        self._cursor = stop
        offsets = self._offsets[start:stop]
        if isinstance(offsets, range):
            inputs = self._inputs[offsets.start : offsets.stop]
        else:
            inputs = [self._inputs[offset] for offset in offsets]
        return Chunk(self._batch, offsets), inputs

    def _open_next_batch(self) -> bool:
        batches = self._plan.batches
        while self._next_batch < len(batches):
            batch = batches[self._next_batch]
            self._next_batch += 1
            states = batch.states
            if PENDING not in states:
                continue
            if states.count(PENDING) == len(states):
                self._offsets = range(len(states))
            else:
                self._offsets = [i for i, state in enumerate(states) if state == PENDING]
            if batch.inputs is not None:
                self._inputs = batch.inputs
            else:
                self._inputs = self._plan.reader.load(batches, self._next_batch - 1)
            self._batch = batch
            self._cursor = 0
            return True
        self._batch = None
        self._inputs = ()
        self._offsets = ()
        return False


def record_end(store: Store, execution_id: str, status: ExecutionStatus, stop: Stop | None = None) -> None:
    """Mark an execution ended (and why, when it ended early), with the counts of its last good flush.

    For runs that end where no full flush is possible: recording the inputs
    failed, or the final flush itself failed (a full disk, say). This small
    write may still succeed, so the execution does not look ``running``
    forever to readers on other hosts; should the stop reason make it fail
    (a SQL store may have to create its table), the status goes alone.
    Failing here is only logged: the caller is already raising the error
    that matters.
    """
    for reason in (stop, None) if stop is not None else (None,):
        try:
            stored = store.get_execution(execution_id)
            store.record_flush(
                execution_id,
                Flush(
                    states={},
                    failures=(),
                    results=(),
                    total=stored.total,
                    finished=stored.finished,
                    failed=stored.failed,
                    status=status,
                    ended_at=time.time(),
                    stop_reason=None if reason is None else reason.code,
                    stop_detail=None if reason is None else reason.detail,
                ),
            )
            return
        except BaseException:
            logger.error("could not record the end of execution %s", execution_id, exc_info=True)
