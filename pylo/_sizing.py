"""How many inputs a lane's next chunk holds, from what its last chunk cost.

A chunk aims at the lanes' ``chunk_seconds`` of work, kept within a quarter
of ``flush_seconds`` so outcomes come back steadily. Work is the time the
lane measured running the chunk, on its wall clock, unless the lanes also
report the CPU time of the thread that ran it (Dask does, see
:mod:`pylo.workers._dask_remote`). Then a chunk aims at that much CPU time,
and at most :data:`WALL_STRETCH` times that on the wall clock.

Why CPU time there: every Dask chunk is a task of the cluster, whose
scheduling and gathering cost the same whatever the chunk holds. On a
machine other programs keep busy, each input takes longer on the wall clock
while its CPU time stays the same, so chunks sized by wall time hold fewer
inputs exactly when the machine has the least CPU to spare for that fixed
cost. The wall-clock bound keeps the chunks of tasks that mostly wait (on
the network, a disk, a sleep: little CPU) from growing without end.
"""

from __future__ import annotations

from pylo.workers.base import ChunkResult

__all__ = ["WALL_STRETCH", "ChunkSizer"]

#: A chunk sized by CPU time may last this many times its CPU aim on the wall clock.
WALL_STRETCH = 4.0
#: A lane's next chunk is at most this many times its last one (a fast first input says little).
GROWTH = 8


class ChunkSizer:
    """Sizes each lane's next chunk from the work its last chunk measured.

    Args:
        chunk_seconds: The work a chunk aims at (the lanes' ``chunk_seconds``).
        flush_seconds: The execution's ``flush_seconds``; a chunk aims at a
            quarter of it at most.
        max_chunk: Most inputs in a chunk.
    """

    __slots__ = ("_max_chunk", "_target")

    def __init__(self, chunk_seconds: float, flush_seconds: float, max_chunk: int) -> None:
        self._target = min(chunk_seconds, flush_seconds / 4)
        self._max_chunk = max_chunk

    def next_size(self, size: int, result: ChunkResult) -> int:
        """Inputs of a lane's next chunk, given its chunk of ``size`` inputs just reported as ``result``.

        ``result.attempted`` must be positive.
        """
        per_input = result.elapsed / result.attempted
        if result.cpu is not None:
            # Whichever binds first: the CPU aim, or the wall-clock bound.
            per_input = max(result.cpu / result.attempted, per_input / WALL_STRETCH)
        # Compared before dividing: a per-input time of (nearly) zero means "as large as allowed".
        wanted = self._max_chunk if per_input * self._max_chunk <= self._target else int(self._target / per_input)
        # Grow gradually but shrink at once.
        return max(1, min(wanted, size * GROWTH, self._max_chunk))
