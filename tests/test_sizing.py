"""How many inputs a lane's next chunk holds (pylo._sizing), and how the scheduler cuts it (pylo._plan).

The figures are the ones a lane would report; nothing here waits or times anything.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from pylo._plan import Batch, Plan, Scheduler
from pylo._sizing import GROWTH, WALL_STRETCH, ChunkSizer
from pylo.workers.base import ChunkResult

MAX_CHUNK = 1024


def reported(attempted: int, elapsed: float, cpu: float | None = None) -> ChunkResult:
    return ChunkResult(0, 0, attempted, (), (), None, elapsed, cpu)


def test_a_chunk_aims_at_the_lanes_chunk_seconds_of_work() -> None:
    sizer = ChunkSizer(chunk_seconds=0.05, flush_seconds=1.0, max_chunk=MAX_CHUNK)
    # 1 ms per input: 50 inputs make 50 ms.
    assert sizer.next_size(100, reported(100, 0.1)) == 50


def test_a_chunk_aims_at_a_quarter_of_flush_seconds_at_most() -> None:
    sizer = ChunkSizer(chunk_seconds=0.25, flush_seconds=0.2, max_chunk=MAX_CHUNK)
    assert sizer.next_size(100, reported(100, 0.1)) == 50  # 50 ms, not 250


def test_chunks_grow_gradually_and_shrink_at_once() -> None:
    sizer = ChunkSizer(chunk_seconds=0.05, flush_seconds=1.0, max_chunk=MAX_CHUNK)
    assert sizer.next_size(8, reported(8, 8e-6)) == 8 * GROWTH
    assert sizer.next_size(64, reported(64, 64e-6)) == 64 * GROWTH
    assert sizer.next_size(512, reported(512, 512e-6)) == MAX_CHUNK
    assert sizer.next_size(MAX_CHUNK, reported(MAX_CHUNK, MAX_CHUNK * 0.01)) == 5


def test_a_chunk_of_instant_inputs_is_as_large_as_allowed() -> None:
    sizer = ChunkSizer(chunk_seconds=0.05, flush_seconds=1.0, max_chunk=MAX_CHUNK)
    assert sizer.next_size(MAX_CHUNK, reported(MAX_CHUNK, 0.0)) == MAX_CHUNK
    assert sizer.next_size(MAX_CHUNK, reported(MAX_CHUNK, 0.0, cpu=0.0)) == MAX_CHUNK


def test_a_slow_input_makes_a_chunk_of_one() -> None:
    sizer = ChunkSizer(chunk_seconds=0.05, flush_seconds=1.0, max_chunk=MAX_CHUNK)
    assert sizer.next_size(8, reported(1, 30.0)) == 1
    assert sizer.next_size(8, reported(1, 30.0, cpu=30.0)) == 1


def test_with_cpu_time_reported_a_busy_machine_does_not_shrink_the_chunks() -> None:
    sizer = ChunkSizer(chunk_seconds=0.25, flush_seconds=1.0, max_chunk=MAX_CHUNK)
    quiet = sizer.next_size(200, reported(200, elapsed=0.2, cpu=0.2))  # 1 ms per input
    busy = sizer.next_size(200, reported(200, elapsed=0.6, cpu=0.2))  # the same work, preempted
    assert quiet == busy == 250
    # Sized by the wall clock alone, the busy lane would cut chunks of 83.
    assert sizer.next_size(200, reported(200, elapsed=0.6)) == 83


def test_a_task_that_mostly_waits_is_bounded_by_the_wall_clock() -> None:
    sizer = ChunkSizer(chunk_seconds=0.25, flush_seconds=1.0, max_chunk=MAX_CHUNK)
    # 10 ms per input on the wall clock, almost no CPU: chunks of WALL_STRETCH * 250 ms.
    size = sizer.next_size(200, reported(200, elapsed=2.0, cpu=0.001))
    assert size == int(0.25 * WALL_STRETCH / 0.01)


@given(
    size=st.integers(1, MAX_CHUNK),
    attempted=st.integers(1, MAX_CHUNK),
    elapsed=st.floats(0, 1e4, allow_nan=False),
    cpu_share=st.none() | st.floats(0, 1),
    chunk_seconds=st.floats(1e-3, 10),
    flush_seconds=st.floats(1e-3, 100),
)
def test_the_next_chunk_is_between_one_input_and_the_largest_allowed(
    size: int,
    attempted: int,
    elapsed: float,
    cpu_share: float | None,
    chunk_seconds: float,
    flush_seconds: float,
) -> None:
    sizer = ChunkSizer(chunk_seconds, flush_seconds, MAX_CHUNK)
    cpu = None if cpu_share is None else elapsed * cpu_share
    following = sizer.next_size(size, reported(attempted, elapsed, cpu))
    assert 1 <= following <= min(MAX_CHUNK, size * GROWTH)


# -- cutting chunks of the sizes asked (pylo._plan.Scheduler) ----------------------


def plan_of(batch_sizes: list[int]) -> Plan:
    batches, first = [], 0
    for number, size in enumerate(batch_sizes):
        batches.append(Batch(number, first, bytearray(size), inputs=list(range(first, first + size))))
        first += size
    return Plan(batches=batches, reader=None, total=first)  # every batch has its inputs in memory: no reader


def test_the_short_rest_of_a_batch_joins_the_chunk_before_it() -> None:
    scheduler = Scheduler(plan_of([1024]), most=1024)
    taken = [len(scheduler.take(250)[1]) for _ in range(4)]
    # Alone, the last 24 inputs would cost a chunk (on Dask, a round trip) of their own.
    assert taken == [250, 250, 250, 274]
    assert scheduler.take(250) is None


def test_a_rest_of_half_a_chunk_or_more_is_a_chunk_of_its_own() -> None:
    scheduler = Scheduler(plan_of([1024]), most=1024)
    assert [len(scheduler.take(400)[1]) for _ in range(3)] == [400, 400, 224]


def test_a_chunk_holds_no_more_than_a_flush_even_with_the_rest_of_its_batch() -> None:
    scheduler = Scheduler(plan_of([1024]), most=500)
    assert [len(scheduler.take(480)[1]) for _ in range(3)] == [480, 480, 64]


@given(
    batch_sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6),
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=20),
    most=st.integers(1, 400),
)
def test_chunks_cover_every_input_once_in_order_within_their_batch(
    batch_sizes: list[int], sizes: list[int], most: int
) -> None:
    scheduler = Scheduler(plan_of(batch_sizes), most=most)
    seen: list[int] = []
    for turn in itertools.count():
        size = min(sizes[turn % len(sizes)], most)  # the coordinator never asks for more than a flush
        taken = scheduler.take(size)
        if taken is None:
            break
        chunk, inputs = taken
        assert 1 <= len(inputs) <= most
        assert len(inputs) < size + max(1, size // 2)
        first = chunk.batch.first_position
        assert list(inputs) == [first + offset for offset in chunk.offsets]
        seen.extend(inputs)
    assert seen == list(range(sum(batch_sizes)))
