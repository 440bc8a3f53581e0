"""How many inputs a lane's next chunk holds (pylo._sizing), from what its last chunk reported.

The figures are the ones a lane would report; nothing here waits or times anything.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

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
