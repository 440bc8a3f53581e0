"""Rows and process bodies for the run store contract suite.

Imported by name (``run_kit``) by the processes the tests spawn, so
everything a child runs lives here at module level.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any

from store_kit import WAIT, StoreSpec

from pylo.errors import PipelineExists
from pylo.stores.runs import NodeRow, RunRow, RunUpdate


def make_run(run_id: str, **changes: Any) -> RunRow:
    """A fresh running run; keyword arguments override fields."""
    now = time.time()
    fields: dict[str, Any] = {
        "id": run_id,
        "parent_id": None,
        "name": "report",
        "status": "running",
        "created_at": now,
        "updated_at": now,
        "ended_at": None,
        "codec": "pickle",
        "pid": 4242,
        "host": "test-host",
        "options": {"max_parallel": 4, "flush": {"every": 100, "seconds": 1.5}},
    }
    fields.update(changes)
    return RunRow(**fields)


def make_node(key: str, seq: int, **changes: Any) -> NodeRow:
    """A pending call node; keyword arguments override fields."""
    fields: dict[str, Any] = {
        "key": key,
        "seq": seq,
        "task_name": f"tests.tasks:{key.split('/')[0]}",
        "display_name": key.split("/")[0],
    }
    fields.update(changes)
    return NodeRow(**fields)


def chain(count: int) -> list[NodeRow]:
    """``count`` nodes, each waiting for the one before."""
    return [make_node(f"n{seq}", seq, upstream=(f"n{seq - 1}",) if seq else ()) for seq in range(count)]


# -- a writer that is killed ---------------------------------------------------

#: Nodes of the run :func:`update_forever` writes.
KILL_NODES = 8
#: Size of each result it writes: large enough that a kill often lands mid-write.
KILL_BLOB = 64 * 1024


def numbered_update(number: int) -> RunUpdate:
    """Update ``number`` (from 1): two nodes get ``attempts=number``, options ``{"n": number}``."""
    first, second = number % KILL_NODES, (number + 1) % KILL_NODES
    nodes = [
        make_node(
            f"n{key}",
            key,
            state="done" if number % 2 else "failed",
            attempts=number,
            started_at=float(number),
            ended_at=float(number) + 0.5,
            result=bytes([number % 256]) * KILL_BLOB if number % 2 else None,
            exc_type=None if number % 2 else "builtins.ValueError",
            message=None if number % 2 else f"update {number}",
        )
        for key in (first, second)
    ]
    return RunUpdate(nodes=nodes, options={"n": number})


def nodes_after(number: int) -> list[NodeRow]:
    """The nodes of the killed writer's run once updates 1..``number`` are applied."""
    nodes = {node.key: node for node in chain(KILL_NODES)}
    for applied in range(1, number + 1):
        for node in numbered_update(applied).nodes:
            # An update replaces what may change; upstream is fixed at creation.
            nodes[node.key] = dataclasses.replace(node, upstream=nodes[node.key].upstream)
    return sorted(nodes.values(), key=lambda node: node.seq)


def update_forever(spec: StoreSpec, run_id: str, reached: Any, progress: Any) -> None:
    """Create a run, then record numbered updates until killed; ``progress`` is the last one returned."""
    store = spec.open()
    runs = store.runs()
    # Upstream keys are what chain() gives; numbered updates keep them.
    runs.create_run(make_run(run_id), chain(KILL_NODES))
    number = 0
    while True:
        number += 1
        runs.record_run(run_id, numbered_update(number))
        progress.value = number
        if number == 20:
            reached.set()


def race_create_run(spec: StoreSpec, run_id: str, barrier: Any, results: Any) -> None:
    """Open the store, wait for the others, then try to create the same run."""
    try:
        store = spec.open()
        try:
            runs = store.runs()
            barrier.wait(timeout=WAIT)
            try:
                runs.create_run(make_run(run_id, pid=None), chain(3))
            except PipelineExists:
                results.put("exists")
            else:
                results.put("won")
        finally:
            store.close()
    except BaseException:
        results.put("error: " + traceback.format_exc())


def request_cancel(spec: StoreSpec, run_id: str) -> None:
    """In another process: ask run ``run_id`` to cancel."""
    store = spec.open()
    try:
        store.runs().request_control(run_id, "cancel")
    finally:
        store.close()
