"""From pipelines to a graph: nodes, edges, a stable order, keys, and cycle checks.

``build_graph`` runs before anything is run or recorded. It finds every node
reachable from the sinks (by identity), orders them with Kahn's algorithm
(ties broken by declaration order, so the order is stable across runs of the
same program), refuses cycles naming them, and gives each node its key.

Keys. A node's key is its ``task_id`` when it has one. Otherwise it is
``<function name>-<8 hex digits>``, the digits hashing the task's qualified
name, the node's kind (call or batch), the sorted keys of the nodes it waits
for, and its ordinal among the nodes that share all three (in the stable
order). So a key does not change when a function's body, its arguments or an
unrelated part of the graph change; it changes when the task is renamed or
moved, or when a sibling call of the same task is declared before it.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pylo._codec import short_repr
from pylo.errors import PipelineCycleError, PipelineValidationError
from pylo.pipeline._builder import FINALLY, Pipeline, _Node

__all__ = ["Graph", "GraphNode", "build_graph", "result_from_shape"]

_SLUG = re.compile(r"[^A-Za-z0-9_]+")


@dataclass(slots=True)
class GraphNode:
    """One node of a graph, with its edges as indices into ``Graph.nodes``."""

    index: int
    key: str
    node: _Node
    upstream: tuple[int, ...]
    dependents: list[int] = field(default_factory=list)
    #: ``(group, chain)`` pairs: the member chains of limited ``in_parallel``
    #: groups it belongs to (``group`` indexes ``Graph.limits``, ``chain``
    #: ``Graph.chain_sizes``).
    chains: tuple[tuple[int, int], ...] = ()
    #: A last node of an ``in_parallel(return_exceptions=True)`` member: its
    #: failure is a value (the exception) for the nodes that use it.
    tolerant: bool = False


@dataclass(slots=True)
class Graph:
    """Every node of a run, in a stable topological order.

    Attributes:
        nodes: The nodes; each node's upstream nodes come before it.
        shape: JSON description of the run's result: ``{"node": key}`` or
            ``{"group": [shape, ...]}``.
        limits: ``max_parallelism`` of each limited group.
        index_of: ``id(_Node)`` -> index.
        chain_sizes: The number of nodes of each member chain of a limited group.
    """

    nodes: list[GraphNode]
    shape: dict[str, Any]
    limits: list[int]
    index_of: dict[int, int]
    chain_sizes: list[int] = field(default_factory=list)

    def value_of(self, pipeline: Pipeline, values: Sequence[Any]) -> Any:
        """The value of ``pipeline`` given each node's value (groups give lists)."""
        node = pipeline._node
        if node is not None:
            return values[self.index_of[id(node)]]
        assert pipeline._members is not None
        return [self.value_of(member, values) for member in pipeline._members]


def _sinks_of(target: Any) -> list[Pipeline]:
    if isinstance(target, Pipeline):
        return [target]
    if isinstance(target, (list, tuple)):
        found: list[Pipeline] = []
        for item in target:
            found.extend(_sinks_of(item))
        return found
    raise PipelineValidationError(
        f"run_pipeline takes a pipeline or a list of pipelines, got {type(target).__name__} {short_repr(target)}"
    )


def _upstream_pipelines(node: _Node) -> list[Pipeline]:
    return [*node.deps, *node.after]


def build_graph(target: Pipeline | Sequence[Any]) -> Graph:
    """Flatten a pipeline (or a list of sinks) into a :class:`Graph`.

    Raises:
        PipelineValidationError: ``target`` holds something that is not a
            pipeline, or two nodes share a ``task_id``.
        PipelineCycleError: The dependencies form a cycle (named by task names).
    """
    sinks = _sinks_of(target)
    # 1. Every node reachable from the sinks, and the limited groups met on the way.
    found: dict[int, _Node] = {}
    groups: dict[int, Pipeline] = {}
    tolerant: set[int] = set()
    seen_pipelines: set[int] = set()
    stack: list[Pipeline] = list(sinks)
    while stack:
        pipeline = stack.pop()
        node = pipeline._node
        if node is None:
            if id(pipeline) in seen_pipelines:
                continue
            seen_pipelines.add(id(pipeline))
            assert pipeline._members is not None
            if pipeline._max_parallelism is not None:
                groups[id(pipeline)] = pipeline
            if pipeline._return_exceptions:
                tolerant.update(id(n) for n in pipeline.last_nodes())
            stack.extend(pipeline._members)
        elif id(node) not in found:
            found[id(node)] = node
            stack.extend(node.deps)
            stack.extend(node.after)

    # 2. Edges (unique, in declaration order) and Kahn's order, ties by declaration.
    nodes = sorted(found.values(), key=lambda n: n.ordinal)
    position = {id(n): i for i, n in enumerate(nodes)}
    upstream: list[list[int]] = []
    dependents: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        if not node.deps and not node.after:
            upstream.append([])
            continue
        ups: dict[int, None] = {}
        for pipeline in _upstream_pipelines(node):
            if pipeline._node is not None:
                ups[position[id(pipeline._node)]] = None
            else:
                for last in pipeline.last_nodes():
                    ups[position[id(last)]] = None
        upstream.append(list(ups))
        for up in ups:
            dependents[up].append(i)
    waiting = [len(ups) for ups in upstream]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for dependent in dependents[i]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) < len(nodes):
        raise PipelineCycleError(_find_cycle(nodes, upstream, {i for i, count in enumerate(waiting) if count > 0}))

    # 3. Keys, in order (a key needs its upstream keys), and the graph by new index.
    new_index = {old: new for new, old in enumerate(order)}
    graph_nodes: list[GraphNode] = []
    keys: dict[str, int] = {}
    siblings: dict[tuple[str, str, tuple[str, ...]], int] = {}
    slugs: dict[str, str] = {}
    for old in order:
        node = nodes[old]
        up_indices = tuple(new_index[u] for u in upstream[old])
        key = node.task.options.task_id
        if key is None:
            up_keys = tuple(sorted([graph_nodes[u].key for u in up_indices])) if up_indices else ()
            family = (node.task.name, node.kind, up_keys)
            ordinal = siblings.get(family, 0)
            siblings[family] = ordinal + 1
            digest = hashlib.sha256(
                "\0".join((node.task.name, node.kind, ",".join(up_keys), str(ordinal))).encode()
            ).hexdigest()[:8]
            slug = slugs.get(node.task.name)
            if slug is None:
                name = getattr(node.task.function, "__name__", None) or "task"
                slug = slugs[node.task.name] = _SLUG.sub("_", name).strip("_")[:40] or "task"
            key = f"{slug}-{digest}"
        if key in keys:
            other = graph_nodes[keys[key]].node.task.display_name
            raise PipelineValidationError(
                f"two nodes share the key {key!r} ({other} and {node.task.display_name}); give each a different task_id"
            )
        keys[key] = len(graph_nodes)
        graph_nodes.append(GraphNode(index=len(graph_nodes), key=key, node=node, upstream=up_indices))
    for graph_node in graph_nodes:
        graph_node.tolerant = id(graph_node.node) in tolerant
        for up in graph_node.upstream:
            graph_nodes[up].dependents.append(graph_node.index)
    for graph_node in graph_nodes:
        if graph_node.node.handler == FINALLY and graph_node.dependents:
            user = graph_nodes[graph_node.dependents[0]].node.task.display_name
            raise PipelineValidationError(
                f"finally_do({graph_node.node.task.display_name}) is used by {user}: finally_do must be the "
                "last task of a pipeline, and only one"
            )
    index_of = {id(g.node): g.index for g in graph_nodes}

    # 4. Limited groups: each member is a chain, made of the nodes only it needs.
    limits, chain_sizes = _chains(list(groups.values()), graph_nodes, index_of)

    shape = _shape(target, index_of, graph_nodes)
    return Graph(nodes=graph_nodes, shape=shape, limits=limits, index_of=index_of, chain_sizes=chain_sizes)


def _chains(groups: list[Pipeline], nodes: list[GraphNode], index_of: dict[int, int]) -> tuple[list[int], list[int]]:
    """Number the limited groups and their member chains; set each node's ``chains``.

    A member's chain is the nodes it needs (its last nodes and everything
    upstream of them) that no other member of the group needs. Nodes two
    members need (a shared prefix, such as the result every member of a
    ``continue_with`` group receives) belong to no chain of that group, so a
    chain never waits for a node that only a chain not yet admitted could run.

    Returns:
        Each group's ``max_parallelism`` and each chain's number of nodes.
    """
    limits: list[int] = []
    sizes: list[int] = []
    chains_of: dict[int, list[tuple[int, int]]] = {}
    shared = -1
    for group in groups:
        number = len(limits)
        assert group._max_parallelism is not None and group._members is not None
        limits.append(group._max_parallelism)
        owner: dict[int, int] = {}  # node index -> the member that needs it, or ``shared``
        for place, member in enumerate(group._members):
            todo = [index_of[id(n)] for n in member.last_nodes()]
            while todo:
                i = todo.pop()
                seen = owner.get(i)
                if seen is None:
                    owner[i] = place
                    todo.extend(nodes[i].upstream)
                elif seen != place and seen != shared:
                    # Needed by two members: so is everything upstream of it.
                    stack = [i]
                    while stack:
                        j = stack.pop()
                        if owner.get(j) != shared:
                            owner[j] = shared
                            stack.extend(nodes[j].upstream)
        first = len(sizes)
        counts = [0] * len(group._members)
        for i, place in owner.items():
            if place != shared:
                counts[place] += 1
                chains_of.setdefault(i, []).append((number, first + place))
        sizes.extend(counts)
    for i, chains in chains_of.items():
        nodes[i].chains = tuple(chains)
    return limits, sizes


def _shape(target: Any, index_of: dict[int, int], nodes: list[GraphNode]) -> dict[str, Any]:
    if isinstance(target, Pipeline):
        if target._node is not None:
            return {"node": nodes[index_of[id(target._node)]].key}
        assert target._members is not None
        return {"group": [_shape(m, index_of, nodes) for m in target._members]}
    return {"group": [_shape(item, index_of, nodes) for item in target]}


def result_from_shape(shape: dict[str, Any], value_of_key: Any) -> Any:
    """Rebuild a run's result from its stored shape, given a key -> value function."""
    if "node" in shape:
        return value_of_key(shape["node"])
    return [result_from_shape(member, value_of_key) for member in shape["group"]]


def _find_cycle(nodes: list[_Node], upstream: list[list[int]], stuck: set[int]) -> list[str]:
    """Names around one cycle among the nodes Kahn could not order, in run order (``a -> b -> a``)."""
    # Walk upstream from a stuck node: every stuck node has a stuck upstream
    # node, so the walk must revisit a node; that loop is a cycle.
    start = min(stuck)
    path: list[int] = []
    on_path: dict[int, int] = {}
    current = start
    while current not in on_path:
        on_path[current] = len(path)
        path.append(current)
        current = next(u for u in upstream[current] if u in stuck)
    loop = path[on_path[current] :]
    # The walk went against the edges; reverse it so it reads in run order.
    loop.reverse()
    first = loop.index(min(loop))  # start at the node declared first: a stable message
    loop = loop[first:] + loop[:first]
    names = [nodes[i].task.display_name for i in loop]
    return [*names, names[0]]
