"""Group limits of the run coordinator: ``in_parallel(max_parallelism=N)`` counts member chains.

:class:`GroupLimits` is mixed into ``RunCoordinator`` and runs on the
coordinator's thread. Each member of a limited group is a chain: the nodes
only that member needs (``_graph._chains``; nodes several members need, such
as a shared prefix, belong to none). A chain is **admitted** when its first
node starts, and holds one of the group's N slots until every node of it
has ended (``done``, failed, skipped, not run...). A node starts only when
each chain it belongs to is admitted or can be (a nested group's node
belongs to a chain of each group around it); otherwise it waits in the
first full group's queue, and nodes waiting there go back to the front of
the ready queue, in the order they came, when one of that group's chains
ends. So with nothing else in the way, chains start in declaration order.

No deadlock within a group: a chain waits only for nodes it needs, and
every such node is in the chain or shared (free of this group's limit).
Groups that are not nested but share members in crossing orders could wait
for each other; should nothing run while nodes wait for slots, the first of
them starts over the limit (``_unstick``) rather than never.

On a resume, nodes already final count as ended, so a chain that is all
done takes no slot. After a cancel, ``finally_do`` nodes start whatever the
limit (``_admit_anyway``).
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pylo.pipeline._graph import Graph

__all__ = ["GroupLimits"]

logger = logging.getLogger(__name__)


class GroupLimits:
    """Member chains of limited groups, admitted and ended (a mixin; see the module docstring)."""

    _graph: Graph
    _ready: collections.deque[int]
    _running: int
    _run_id: str

    def _start(self, index: int) -> None:
        raise NotImplementedError

    def _init_limits(self, graph: Graph) -> None:
        #: Chains of each group holding a slot.
        self._group_running = [0] * len(graph.limits)
        #: Ready nodes held back by each group's limit, in the order they came.
        self._group_waiting: list[collections.deque[int]] = [collections.deque() for _ in graph.limits]
        #: Nodes of each chain not ended yet, and whether it holds a slot.
        self._chain_left = list(graph.chain_sizes)
        self._chain_admitted = [False] * len(graph.chain_sizes)

    def _admit(self, index: int) -> bool:
        """True when node ``index`` may start (its chains now hold slots); else it waits in a group's queue."""
        chains = self._graph.nodes[index].chains
        if not chains:
            return True
        admitted = self._chain_admitted
        running = self._group_running
        limits = self._graph.limits
        for group, chain in chains:
            if not admitted[chain] and running[group] >= limits[group]:
                self._group_waiting[group].append(index)
                return False
        for group, chain in chains:
            if not admitted[chain]:
                admitted[chain] = True
                running[group] += 1
        return True

    def _admit_anyway(self, index: int) -> None:
        """Admit the chains of a node that starts whatever the limit (counted, so their end frees the slot)."""
        for group, chain in self._graph.nodes[index].chains:
            if not self._chain_admitted[chain]:
                self._chain_admitted[chain] = True
                self._group_running[group] += 1

    def _chains_end(self, index: int) -> None:
        """Node ``index`` is final: a chain whose last node it was frees its slot for the nodes waiting."""
        left = self._chain_left
        for group, chain in self._graph.nodes[index].chains:
            left[chain] -= 1
            if left[chain] == 0 and self._chain_admitted[chain]:
                self._chain_admitted[chain] = False
                self._group_running[group] -= 1
                waiting = self._group_waiting[group]
                if waiting:
                    self._ready.extendleft(reversed(waiting))
                    waiting.clear()

    def _unstick(self) -> None:
        """Nothing runs, nothing is ready, yet nodes wait for slots: start the first of them over the limit."""
        if self._running or self._ready or not any(self._group_waiting):
            return
        # The node first in the stable order among all those waiting.
        index, waiting = min((min(queue), queue) for queue in self._group_waiting if queue)
        waiting.remove(index)
        logger.warning(
            "pipeline run %s: in_parallel groups that share members wait for each other; node %s starts over "
            "its group's max_parallelism",
            self._run_id,
            self._graph.nodes[index].key,
        )
        self._admit_anyway(index)
        self._start(index)
