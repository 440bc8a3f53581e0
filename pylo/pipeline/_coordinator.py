"""The run coordinator: starts ready nodes, applies outcomes, flushes; the one writer of a run.

Data flow of one run::

    Graph (stable order, keys) + NodeRows as created (copied ``done`` on a resume)
        │  in-degree counters; nodes whose counter is 0 are ready
        ▼
    ready deque ──(at most max_parallel running; in_parallel limits)──► node pool
        │                                             │ a thread per running node:
        │                                             │ a call (threads, processes,
        │                                             │ Dask, event loop) or a
        │                                             │ batch node's execution
        ▼                                             ▼
    _complete: state by the rules  ◄──(index, Outcome)── outbox
        │  dependents' counters drop; at 0 each is ready, or ends without
        │  running (failed_dependency, failed_softly, cancelled)
        ▼
    changed NodeRows, in order ──(every N outcomes or T seconds, and at the end)──► RunStore.record_run

Only the coordinator's thread touches the store, the counters and the rows,
so they need no locks. A node starts only after every node it waits for has
an outcome applied, and rows are written in the order outcomes were applied,
so the store never holds a ``done`` node whose upstream nodes are not
``done`` (a resume can trust every ``done`` it reads).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pylo.pipeline._batch import batch_execution_id, run_batch
from pylo.pipeline._builder import BATCH, EXCEPTIONALLY, FINALLY, Pipeline, _Node, substitute
from pylo.pipeline._composition import ChildStarted, CompositionRules, qualified, stateful_child, why_not_run
from pylo.pipeline._executors import CallRunner, Outcome, describe_failure
from pylo.pipeline._graph import Graph
from pylo.pipeline._host import Host
from pylo.pipeline._outcomes import is_failed_run, unwrap_state, wrap_state
from pylo.pipeline._records import PipelineStatus, TaskState
from pylo.pipeline._run_environment import RunEnvironment
from pylo.stores.runs import NodeRow, RunStore, RunUpdate

__all__ = ["RunCoordinator"]

logger = logging.getLogger(__name__)

_PENDING = TaskState.PENDING.value
_RUNNING = TaskState.RUNNING.value
_DONE = TaskState.DONE.value
_FAILED = TaskState.FAILED.value
_FAILED_SOFTLY = TaskState.FAILED_SOFTLY.value
_FAILED_DEPENDENCY = TaskState.FAILED_DEPENDENCY.value
_SKIPPED = TaskState.SKIPPED.value
_CANCELLED = TaskState.CANCELLED.value
_HARD = frozenset({_FAILED, _FAILED_DEPENDENCY})
_FINAL = frozenset({_DONE, _FAILED, _FAILED_SOFTLY, _FAILED_DEPENDENCY, _SKIPPED, _CANCELLED})

#: Longest wait for an outcome before looking at the flush clock again.
_MAX_WAIT = 1.0


class RunCoordinator(CompositionRules):
    """Runs one created run to its end, recording node outcomes by the flush policy.

    Args:
        host: The adapter to the Pylo (workers, flush policy, batch executions).
        runs: Where the run is recorded (already created with ``rows``).
        run_id: The run.
        graph: Its graph.
        rows: Its node rows as created, in graph order.
        values: Decoded results of ``done`` rows whose dependents will run
            (None elsewhere).
        lineage: Graph index -> the past execution a batch node resumes.
        max_parallel: Most nodes running at once.
        codec_name: The codec of the run's results and exceptions.
        on_event: Called with ``(event, index)`` from the coordinator's
            thread when a node starts (``"start"``) or ends (``"end"``);
            for tests and reporters.
        environment: The run's configuration and rate limits: what each
            node waits for and runs (None: tasks run as they are).
    """

    def __init__(
        self,
        *,
        host: Host,
        runs: RunStore,
        run_id: str,
        graph: Graph,
        rows: list[NodeRow],
        values: list[Any],
        lineage: dict[int, str],
        max_parallel: int,
        codec_name: str,
        on_event: Callable[[str, int], None] | None = None,
        environment: RunEnvironment | None = None,
    ) -> None:
        self._host = host
        self._runs = runs
        self._run_id = run_id
        self._graph = graph
        self._rows = rows
        self._values = values
        self._lineage = lineage
        self._max_parallel = max_parallel
        self._codec_name = codec_name
        self._on_event = on_event
        self._environment = environment
        self._states = [row.state for row in rows]
        self._waiting = [len(node.upstream) for node in graph.nodes]
        self._ready: collections.deque[int] = collections.deque()
        self._running = 0
        self._group_running = [0] * len(graph.limits)
        self._group_waiting: list[collections.deque[int]] = [collections.deque() for _ in graph.limits]
        self._hard_failures = 0
        self._init_composition(rows)
        self._outbox: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
        self._changed: dict[str, NodeRow] = {}
        self._outcomes_since_flush = 0
        self._last_flush = time.monotonic()
        self._flush_every = host.flush_every
        self._flush_seconds = host.flush_seconds
        self._calls = CallRunner(host.kind, host.workers, host.backend_options, codec_name)
        self._pool = _NodeThreads(max_parallel, self._work, self._outbox.put)
        # Started nodes whose "running" row is not written yet: written at a
        # flush only if still running, so a short node costs one row, not two.
        self._started: dict[int, float] = {}
        self._unwritten_starts = 0

    # -- the loop -----------------------------------------------------------

    def run(self) -> PipelineStatus:
        """Run every node that is not final to its end; return the run's final status.

        Raises:
            KeyboardInterrupt, SystemExit: Re-raised after the outcomes so far
                are recorded and the run is marked ``interrupted`` (nodes that
                were running go back to ``pending``).
        """
        try:
            self._seed()
            self._dispatch()
            while self._running:
                timeout = _MAX_WAIT
                if self._changed or self._unwritten_starts:
                    timeout = min(timeout, max(0.0, self._last_flush + self._flush_seconds - time.monotonic()))
                for index, outcome in _take_all(self._outbox, timeout):
                    if isinstance(outcome, ChildStarted):
                        self._record_child(index, outcome)
                    else:
                        self._complete(index, outcome)
                self._dispatch()
                if self._outcomes_since_flush >= self._flush_every or (
                    (self._changed or self._unwritten_starts)
                    and time.monotonic() - self._last_flush >= self._flush_seconds
                ):
                    self._flush()
            failed = self._hard_failures and is_failed_run(self._states, self._graph.nodes)
            status = PipelineStatus.FAILED if failed else PipelineStatus.COMPLETED
            self._flush(status=status.value, ended_at=time.time())
        except BaseException:
            self._stop_early()
            raise
        self._pool.stop()
        self._calls.close()
        return status

    def _seed(self) -> None:
        """Count down the nodes already final (copied ``done``), then queue what can start."""
        nodes = self._graph.nodes
        for index, state in enumerate(self._states):
            if state in _FINAL:
                self._values[index], self._node_states[index] = unwrap_state(self._values[index])
                if state in _HARD:
                    self._hard_failures += 1
                for dependent in nodes[index].dependents:
                    self._waiting[dependent] -= 1
        ended: list[int] = []
        for index, state in enumerate(self._states):
            if state not in _FINAL and self._waiting[index] == 0:
                self._release(index, ended)
        self._cascade(ended)

    def _dispatch(self) -> None:
        nodes = self._graph.nodes
        limits = self._graph.limits
        while self._ready and self._running < self._max_parallel:
            index = self._ready.popleft()
            groups = nodes[index].groups
            blocked = False
            for group in groups:
                if self._group_running[group] >= limits[group]:
                    self._group_waiting[group].append(index)
                    blocked = True
                    break
            if blocked:
                continue
            for group in groups:
                self._group_running[group] += 1
            self._start(index)

    def _start(self, index: int) -> None:
        node = self._graph.nodes[index].node
        execution_id = batch_execution_id(self._run_id, self._rows[index].key) if node.kind == BATCH else None
        self._running += 1
        self._states[index] = _RUNNING
        self._started[index] = time.time()
        self._unwritten_starts += 1
        if self._on_event is not None:
            self._on_event("start", index)
        try:
            state = self._node_states[index] = self._state_in(index)
            args, kwargs, inputs = self._arguments(node)
            early = self._compose(index, node, args, kwargs, state)
        except Exception as exc:  # a continue_if condition that raised, a state conflict
            early = describe_failure(exc, self._codec_name, 0, time.time())
        if isinstance(early, Outcome):
            self._outbox.put((index, early))
            return
        if early is not None:
            args = early
        self._pool.submit((index, node, args, kwargs, inputs, execution_id))

    def _arguments(self, node: _Node) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
        if not node.deps:
            args, kwargs, inputs = node.args, node.kwargs, node.inputs
        else:
            values = self._values
            graph = self._graph

            def value_of(pipeline: Pipeline) -> Any:
                return graph.value_of(pipeline, values)

            args = substitute(node.args, value_of)
            kwargs = substitute(node.kwargs, value_of)
            inputs = substitute(node.inputs, value_of)
        if node.spread_first and args and isinstance(args[0], tuple):
            args = (*args[0], *args[1:])
        return args, kwargs, inputs

    def _work(
        self,
        index: int,
        node: _Node,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        inputs: Any,
        execution_id: str | None,
    ) -> Outcome:
        """In a node thread: run the node to its outcome."""
        task = node.task
        environment = self._environment
        key = self._graph.nodes[index].key
        if environment is not None and task.options.wait_for is not None:
            try:
                environment.wait(task)  # here, in the node's thread: only this node waits
            except Exception as exc:  # ResourceUnavailable: the task did not run
                return describe_failure(exc, self._codec_name, 0, time.time())
            except BaseException as exc:
                return Outcome(ok=False, interrupt=exc, started=time.time(), ended=time.time())
        try:
            if execution_id is not None:
                outcome = run_batch(
                    self._host,
                    task,
                    inputs,
                    args,
                    kwargs,
                    node.map_options,
                    execution_id,
                    self._lineage.get(index),
                    self._codec_name,
                    need_value=bool(self._graph.nodes[index].dependents),
                    call=None if environment is None else environment.batch_call(task, key),
                    count_attempts=task.options.with_context,
                )
            else:
                past = self._past_children.get(index)
                previous_child = None
                if past is not None:
                    previous_child, payload = past
                    outcome = Outcome(ok=True, child=payload, attempts=0)
                else:
                    prepared = None if environment is None else environment.call(task, key)
                    outcome = self._calls.call(task, args, kwargs, prepared)
                state = self._node_states[index]
                if outcome.ok and task.options.with_state and outcome.child is None:
                    outcome, state = stateful_child(outcome, state)
                if outcome.ok and outcome.child is not None:
                    outcome = self._run_child(index, outcome.child, previous_child, state)
        except BaseException as exc:  # a bug of ours: fail the node, never lose it
            outcome = describe_failure(exc, self._codec_name, 1, time.time())
        return outcome

    # -- applying outcomes ------------------------------------------------------

    def _complete(self, index: int, outcome: Outcome) -> None:
        if outcome.interrupt is not None:
            raise outcome.interrupt
        self._running -= 1
        graph_node = self._graph.nodes[index]
        for group in graph_node.groups:
            self._group_running[group] -= 1
            waiting = self._group_waiting[group]
            if waiting:
                self._ready.appendleft(waiting.popleft())
        options = graph_node.node.task.options
        if index in self._child_states:
            self._node_states[index] = self._child_states.pop(index)
        elif outcome.ok and options.with_state and index not in self._passed:
            outcome = self._split_state(index, outcome)
        if outcome.ok:
            state = _DONE
            if index in self._passed:
                state = _SKIPPED
            elif index in self._finally_values:
                value = self._finally_values.pop(index)  # not fruitful: the value before it
                outcome = dataclasses.replace(outcome, value=value, encoded=self._encode(value))
            elif not options.is_fruitful:
                outcome = dataclasses.replace(outcome, value=None, encoded=self._encode(None))
            self._values[index] = outcome.value
            if self._node_states[index] is not None:
                encoded = self._encode(wrap_state(outcome.value, self._node_states[index]))
                outcome = dataclasses.replace(outcome, encoded=encoded)
        elif options.skippable:
            state = _SKIPPED
        elif options.fail_softly:
            state = _FAILED_SOFTLY
        else:
            state = _FAILED
            self._hard_failures += 1
        if not outcome.ok:
            self._errors[index] = outcome.error
            if state == _FAILED and graph_node.tolerant:
                self._values[index] = outcome.error  # in_parallel(return_exceptions=True): a value
        self._states[index] = state
        row = self._rows[index]
        started_at = self._started.pop(index, None)
        self._note(
            index,
            NodeRow(
                key=row.key,
                seq=row.seq,
                task_name=row.task_name,
                display_name=row.display_name,
                kind=row.kind,
                upstream=row.upstream,
                state=state,
                attempts=outcome.attempts,
                started_at=outcome.started if started_at is None else started_at,
                ended_at=outcome.ended,
                # A failed child run's node keeps its pickled pipeline: a resume resumes that child.
                result=outcome.encoded if outcome.ok else (row.result if row.child_run_id else None),
                exc_type=outcome.exc_type,
                message=outcome.message,
                traceback=outcome.traceback,
                exception=outcome.exception,
                execution_id=outcome.execution_id or row.execution_id,
                child_run_id=row.child_run_id,
            ),
        )
        self._outcomes_since_flush += 1
        if self._on_event is not None:
            self._on_event("end", index)
        ended: list[int] = []
        self._count_down(index, ended)
        self._cascade(ended)

    def _count_down(self, index: int, ended: list[int]) -> None:
        for dependent in self._graph.nodes[index].dependents:
            self._waiting[dependent] -= 1
            if self._waiting[dependent] == 0:
                self._release(dependent, ended)

    def _release(self, index: int, ended: list[int]) -> None:
        """Every node ``index`` waits for has ended: queue it, or end it by the rules."""
        states = self._states
        soft = cancelled = False
        verdict: str | None = None
        nodes = self._graph.nodes
        handler = nodes[index].node.handler
        if handler == FINALLY:
            self._ready.append(index)  # always runs
            return
        for up in nodes[index].upstream:
            state = states[up]
            if state in _HARD:
                if nodes[up].tolerant:
                    continue  # its exception is its value
                if handler == EXCEPTIONALLY:
                    continue  # runs with the error
                verdict = _FAILED_DEPENDENCY  # wins over every other upstream outcome
                break
            if state == _CANCELLED:
                cancelled = True
            elif state == _FAILED_SOFTLY:
                soft = True
        if verdict is None:
            if cancelled:
                verdict = _CANCELLED
            elif soft and self._graph.nodes[index].node.task.options.propagate_soft_failures:
                verdict = _FAILED_SOFTLY
        if verdict is None:
            self._ready.append(index)
            return
        row = self._rows[index]
        ended_row = _with_state(row, verdict, None, time.time())
        try:
            self._node_states[index] = self._state_in(index)  # exceptions carry the state
        except Exception:
            self._node_states[index] = None
        if verdict == _FAILED_DEPENDENCY:
            self._hard_failures += 1
            error = self._upstream_error(index)
            self._errors[index] = error
            if error is not None:  # why it did not run: every failed node it waited for, by name
                ended_row = dataclasses.replace(ended_row, exc_type=qualified(error), message=why_not_run(error))
        states[index] = verdict
        self._values[index] = None
        self._note(index, ended_row)
        self._outcomes_since_flush += 1
        if self._on_event is not None:
            self._on_event("end", index)
        ended.append(index)

    def _cascade(self, ended: list[int]) -> None:
        """Count down the dependents of nodes that ended without running (a stack, no recursion)."""
        while ended:
            self._count_down(ended.pop(), ended)

    # -- recording --------------------------------------------------------------

    def _note(self, index: int, row: NodeRow) -> None:
        self._rows[index] = row
        # Latest version only, moved to the end: the update lists changes in order.
        self._changed.pop(row.key, None)
        self._changed[row.key] = row

    def _flush(self, status: str | None = None, ended_at: float | None = None) -> None:
        for index, started_at in self._started.items():
            row = self._rows[index]
            if row.state != _RUNNING:
                node = self._graph.nodes[index].node
                execution_id = batch_execution_id(self._run_id, row.key) if node.kind == BATCH else None
                running = _with_state(row, _RUNNING, started_at, None)
                self._note(index, dataclasses.replace(running, execution_id=execution_id, attempts=0))
        update = RunUpdate(nodes=list(self._changed.values()), status=status, ended_at=ended_at)
        self._runs.record_run(self._run_id, update)
        self._changed.clear()
        self._unwritten_starts = 0
        self._outcomes_since_flush = 0
        self._last_flush = time.monotonic()

    def _stop_early(self) -> None:
        """Interrupted (or a bug of ours): record what is known, running nodes back to pending."""
        self._pool.stop()
        # Outcomes that arrived meanwhile are kept, as executions keep theirs.
        try:
            for index, outcome in _take_all(self._outbox, 0):
                if isinstance(outcome, Outcome) and outcome.interrupt is None:
                    self._complete(index, outcome)
        except BaseException:  # pragma: no cover - best effort only
            logger.debug("could not apply late outcomes of run %s", self._run_id, exc_info=True)
        for index, state in enumerate(self._states):
            if state == _RUNNING:
                self._states[index] = _PENDING
                self._started.pop(index, None)
                self._note(index, _with_state(self._rows[index], _PENDING, None, None))
        try:
            self._flush(status=PipelineStatus.INTERRUPTED.value, ended_at=time.time())
        except BaseException:
            logger.exception("could not record the end of interrupted pipeline run %s", self._run_id)
        self._calls.close(wait=False)


def _with_state(row: NodeRow, state: str, started_at: float | None, ended_at: float | None) -> NodeRow:
    """``row`` in a new state, without its result or failure (a node that did not end ``done``).

    A node that started a child run keeps it, and its pickled pipeline, so a resume resumes the child.
    """
    return NodeRow(
        row.key,
        row.seq,
        row.task_name,
        row.display_name,
        row.kind,
        row.upstream,
        state,
        row.attempts,
        started_at,
        ended_at,
        result=row.result if row.child_run_id else None,
        execution_id=row.execution_id,
        child_run_id=row.child_run_id,
    )


class _NodeThreads:
    """At most ``size`` threads running started nodes, made as needed; cheaper than an executor.

    Each job's outcome goes to ``deliver``. Threads are daemons: an
    interrupted run does not wait for a node stuck in its task.
    """

    def __init__(self, size: int, work: Callable[..., Outcome], deliver: Callable[[Any], None]) -> None:
        self._size = size
        self._work = work
        self._deliver = deliver
        self._inbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, job: tuple[Any, ...]) -> None:
        with self._lock:
            grow = self._idle <= 0 and len(self._threads) < self._size
            if not grow:
                self._idle -= 1
        if grow:
            thread = threading.Thread(target=self._loop, name=f"pylo-node-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._inbox.put(job)

    def _loop(self) -> None:
        while True:
            job = self._inbox.get()
            if job is None:
                return
            outcome = self._work(*job)
            with self._lock:
                self._idle += 1  # before delivering: the coordinator may submit at once
            self._deliver((job[0], outcome))

    def stop(self) -> None:
        """Let every thread end once its current node ends; do not wait for them."""
        for _ in self._threads:
            self._inbox.put(None)


def _take_all(outbox: queue.SimpleQueue[tuple[int, Outcome]], timeout: float) -> list[tuple[int, Outcome]]:
    """Wait up to ``timeout`` seconds for one outcome, then take every waiting one."""
    try:
        first = outbox.get(timeout=timeout) if timeout > 0 else outbox.get_nowait()
    except queue.Empty:
        return []
    found = [first]
    while True:
        try:
            found.append(outbox.get_nowait())
        except queue.Empty:
            return found
