"""Priority from runtime statistics: which ready node starts first when not all may run.

A node's priority is its expected remaining path: its own expected duration
plus the longest chain of expected durations among its dependents. Expected
durations are the mean of the node key's ``done`` durations in the store's
most recent runs (``RunStore.node_durations``, bounded), read once, the
first time more nodes are ready than may start; a key never seen
takes the mean of the keys that were. With no statistics at all there are
no priorities and nodes start in the order they became ready (declaration
order).
"""

from __future__ import annotations

import collections
import heapq
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pylo.pipeline._graph import Graph
    from pylo.stores.runs import RunStore

__all__ = ["RECENT_RUNS", "ReadyByPriority", "priorities", "remaining_paths"]

logger = logging.getLogger(__name__)

#: How many recent runs the statistics come from.
RECENT_RUNS = 5


def remaining_paths(graph: Graph, expected: list[float]) -> list[float]:
    """Per node, its expected duration plus the longest expected chain of its dependents."""
    nodes = graph.nodes
    paths = [0.0] * len(nodes)
    for index in range(len(nodes) - 1, -1, -1):  # graph order is topological
        longest = max((paths[d] for d in nodes[index].dependents), default=0.0)
        paths[index] = expected[index] + longest
    return paths


def priorities(runs: RunStore, graph: Graph) -> list[float] | None:
    """The nodes' priorities from earlier runs of the same keys, or None without statistics."""
    if len(graph.nodes) < 2:
        return None
    keys = [node.key for node in graph.nodes]
    try:
        durations = runs.node_durations(keys, recent=RECENT_RUNS)
    except Exception:
        logger.warning("cannot read node statistics from %s; starting nodes in declaration order", runs.location,
                       exc_info=True)  # fmt: skip
        return None
    if not durations:
        return None
    means = {key: sum(values) / len(values) for key, values in durations.items() if values}
    fallback = sum(means.values()) / len(means)
    return remaining_paths(graph, [means.get(key, fallback) for key in keys])


class ReadyByPriority(collections.deque[int]):
    """The coordinator's ready nodes once there are priorities: ``popleft`` gives the most urgent.

    Most urgent is the largest priority, ties going to the node first in
    graph order. Kept in a heap, so taking the next node costs O(log n),
    not a scan of every ready node (10,000 ready nodes made that quadratic).
    Where a node is put (``append`` or ``appendleft``) does not matter:
    priority decides. Stands in for the coordinator's deque of ready nodes,
    with the deque's methods that it uses (adding, taking the next, clearing,
    length, iteration, membership); the deque itself stays empty.
    """

    def __init__(self, ready: Iterable[int], priorities: list[float]) -> None:
        super().__init__()
        self._priorities = priorities
        self._heap = [(-priorities[index], index) for index in ready]
        heapq.heapify(self._heap)

    def append(self, index: int) -> None:
        heapq.heappush(self._heap, (-self._priorities[index], index))

    appendleft = append

    def extend(self, indices: Iterable[int]) -> None:
        for index in indices:
            self.append(index)

    extendleft = extend

    def __contains__(self, index: object) -> bool:
        return any(queued == index for _, queued in self._heap)

    def popleft(self) -> int:
        return heapq.heappop(self._heap)[1]

    def clear(self) -> None:
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self) -> Iterator[int]:
        """The ready nodes, most urgent first."""
        return iter([index for _, index in sorted(self._heap)])
