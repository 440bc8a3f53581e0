"""The run coordinator: starts ready nodes, applies outcomes, flushes; the one writer of a run.

Data flow of one run::

    Graph (stable order, keys) + NodeRows as created (copied ``done`` on a resume)
        │  in-degree counters; nodes whose counter is 0 are ready
        ▼
    ready deque ──(at most max_parallel running; in_parallel limits)──► node pool
        │                                             │ (a lone node: this thread)
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
so they need no locks; but while a lone node runs on the coordinator's own
thread (:mod:`pylo.pipeline._lone_node`), the process's keeper thread may
flush and look for requests in its stead, holding the coordinator's desk.
A node starts only after every node it waits for has an outcome applied,
and rows are written in the order outcomes were applied, so the store
never holds a ``done`` node whose upstream nodes are not ``done`` (a resume
can trust every ``done`` it reads).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pylo.pipeline._batch import batch_execution_id, run_batch
from pylo.pipeline._builder import BATCH, EXCEPTIONALLY, FINALLY, Pipeline, _Node, substitute
from pylo.pipeline._composition import (
    ChildStarted,
    CompositionRules,
    RunEnded,
    qualified,
    stateful_child,
    why_not_run,
)
from pylo.pipeline._executors import CallRunner, Outcome, describe_failure
from pylo.pipeline._graph import Graph
from pylo.pipeline._group_limits import GroupLimits
from pylo.pipeline._halting import HaltRules
from pylo.pipeline._host import Host
from pylo.pipeline._lone_node import LoneNode
from pylo.pipeline._node_threads import NodeThreads
from pylo.pipeline._outcomes import unwrap_state, wrap_state
from pylo.pipeline._priority import ReadyByPriority
from pylo.pipeline._recording import RunRecording, next_version, with_state
from pylo.pipeline._records import PipelineStatus, TaskState
from pylo.pipeline._run_environment import RunEnvironment
from pylo.stores.runs import NodeRow, RunStore
from pylo.workers._runner import take_all

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
#: How long an interrupted run waits for its running batch nodes and child runs to stop (workers
#: finish the input in hand; an execution's own interrupt gives its workers INTERRUPT_GRACE, 2 s).
BATCH_STOP_SECONDS = 5.0


class RunCoordinator(RunRecording, GroupLimits, HaltRules, CompositionRules, LoneNode):
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
        control: ``control(look_in_store)`` returns the run's pending
            control request (``"pause"``, ``"cancel"``) or None; called from
            the coordinator's thread at every wake, with ``look_in_store``
            True at most every ``control_seconds`` (a read of the store costs
            far more than a node); see :mod:`pylo.pipeline._control`.
        control_seconds: Longest time between two looks in the store.
        fresh: The run was created just now, under an id no run had: no
            request can be waiting for it, so the first look in the store
            waits ``control_seconds`` like the others (a batch node's first
            look cost more than a third of what the node added).
        execution_prefix: What batch nodes' execution ids derive from (the
            run id; another prefix when an unpaused run runs them again).
        priorities: Returns, per graph index, how urgent a node is (larger
            starts first when more nodes are ready than may run), or None to
            keep the order nodes became ready in; called once, the first
            time more nodes are ready than may start (never for a chain).
        node_context: ``node_context(index)``, entered in the node's thread
            around its work (the tracer makes the node's span current).
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
        control: Callable[[bool], str | None] | None = None,
        control_seconds: float = 0.25,
        execution_prefix: str | None = None,
        priorities: Callable[[], list[float] | None] | None = None,
        node_context: Callable[[int], contextlib.AbstractContextManager[Any]] | None = None,
        hooks: tuple[Any, ...] = (),
        fresh: bool = False,
    ) -> None:
        self._host = host
        self._hooks = hooks  # the run's hooks: its child runs are told to them too
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
        self._init_limits(graph)
        self._hard_failures = 0
        self._init_composition(rows)
        self._outbox: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
        self._changed: dict[str, NodeRow] = {}
        self._outcomes_since_flush = 0
        self._last_flush = time.monotonic()
        self._flush_every = host.flush_every
        self._flush_seconds = host.flush_seconds
        self._calls = CallRunner(host.kind, host.workers, host.backend_options, codec_name)
        self._pool = NodeThreads(max_parallel, self._work, self._outbox.put)
        # Started nodes whose "running" row is not written yet: written at a
        # flush only if still running, so a short node costs one row, not two.
        self._started: dict[int, float] = {}
        self._unwritten_starts = 0
        self._control = control
        self._control_seconds = control_seconds
        self._fresh = fresh
        self._next_control = time.monotonic() + control_seconds if fresh else 0.0
        self._prefix = run_id if execution_prefix is None else execution_prefix
        self._priority_source = priorities
        self._priorities: list[float] | None = None
        self._node_context = node_context
        #: ``"pause"`` or ``"cancel"`` once requested: nothing new starts.
        self.halt: str | None = None
        #: Set on a pause or cancel, and when the run is interrupted: running batch nodes stop taking inputs.
        self.stop = threading.Event()
        #: Set when this child run's parent run was interrupted (see _halting.PARENT_INTERRUPTED).
        self.parent_interrupted = False
        self._ended_here: set[int] = set()
        self._interrupted: set[int] = set()  # nodes whose outcome was an interrupt
        self._init_lone_node(host.kind)

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
            self._look_at_control(force=not self._fresh)
            self._end_if_parent_interrupted()
            self._dispatch()
            while self._running:
                timeout = min(_MAX_WAIT, self._seconds_until_due(idle=_MAX_WAIT))
                interrupt: BaseException | None = None
                for index, outcome in take_all(self._outbox, timeout):
                    # After an interrupt, the other outcomes of this wake are
                    # still taken in, as _stop_early takes those still queued:
                    # nodes that ended are recorded, not run again on resume.
                    try:
                        if interrupt is None and isinstance(outcome, ChildStarted):
                            self._record_child(index, outcome)
                        elif interrupt is None or (isinstance(outcome, Outcome) and outcome.interrupt is None):
                            self._complete(index, outcome)
                    except BaseException as exc:
                        interrupt = interrupt or exc
                if interrupt is not None:
                    raise interrupt
                self._look_at_control()
                self._end_if_parent_interrupted()
                self._dispatch()
                if self._outcomes_since_flush >= self._flush_every or self._flush_due_by_time():
                    self._flush()
            status = self._final_status()
            self._flush(status=status.value, ended_at=None if status is PipelineStatus.PAUSED else time.time())
        except BaseException:
            self._stop_early()
            raise
        finally:
            self._ended = True
            self._close_desk()
        self._pool.stop()
        self._calls.close()
        return status

    def _end_if_parent_interrupted(self) -> None:
        if self.parent_interrupted:
            raise RunEnded(f"pipeline run {self._run_id!r} ends: the run it is a child of was interrupted")

    def _seconds_until_due(self, idle: float) -> float:
        """Seconds until a flush by time or a look for control requests is due (0: now); ``idle`` when neither waits."""
        now = time.monotonic()
        wait = self._last_flush + self._flush_seconds - now if self._changed or self._unwritten_starts else idle
        if self._control is not None and self.halt is None:
            wait = min(wait, self._next_control - now)
        return max(0.0, wait)

    def _seed(self) -> None:
        """Count down the nodes already final (copied ``done``), then queue what can start."""
        nodes = self._graph.nodes
        for index, state in enumerate(self._states):
            if state in _FINAL:
                self._values[index], self._node_states[index] = unwrap_state(self._values[index])
                if state in _HARD:
                    self._hard_failures += 1
                if nodes[index].chains:
                    self._chains_end(index)  # a resume: a chain whose nodes all ended takes no slot
                for dependent in nodes[index].dependents:
                    self._waiting[dependent] -= 1
        ended: list[int] = []
        for index, state in enumerate(self._states):
            if state not in _FINAL and self._waiting[index] == 0:
                self._release(index, ended)
        self._cascade(ended)

    def _dispatch(self) -> None:
        # halt is looked at each turn: the keeper may take up a request while a lone node runs here.
        while self.halt is None and self._ready and self._running < self._max_parallel:
            index = self._next_ready()
            if self._waits_for_a_pause(index):
                self._ready.appendleft(index)
                self.request_halt("pause")
                return
            if not self._admit(index):
                continue  # its group's slots are taken: it waits for a chain to end
            self._start(index)
        if self.halt is not None:
            self._dispatch_halted()
        elif self._graph.limits:
            self._unstick()

    def _next_ready(self) -> int:
        """The ready node to start next: the most urgent by ``priorities``, else the first ready."""
        if self._priority_source is not None and len(self._ready) > self._max_parallel - self._running:
            self._priorities = self._priority_source()  # statistics are read once, when they matter
            self._priority_source = None
            if self._priorities is not None:
                self._ready = ReadyByPriority(self._ready, self._priorities)
        return self._ready.popleft()

    def _start(self, index: int) -> None:
        node = self._graph.nodes[index].node
        execution_id = batch_execution_id(self._prefix, self._rows[index].key) if node.kind == BATCH else None
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
        job = (index, node, args, kwargs, inputs, execution_id)
        if self._runs_here(index, node):
            self._run_here(job)  # nothing else to run: no hand-off to a node thread and back
        else:
            self._pool.submit(job)

    def _arguments(self, node: _Node) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
        if not node.deps:
            args, kwargs, inputs = node.args, node.kwargs, node.inputs
        else:
            values = self._values
            graph = self._graph

            def value_of(pipeline: Pipeline) -> Any:
                return graph.value_of(pipeline, values)

            # Only what holds something: a chain's node has one argument, no keywords, no inputs.
            args = substitute(node.args, value_of) if node.args else node.args
            kwargs = substitute(node.kwargs, value_of) if node.kwargs else node.kwargs
            inputs = None if node.inputs is None else substitute(node.inputs, value_of)
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
        called: Outcome | None = None,
        here: bool = False,
    ) -> Outcome:
        """In a node thread (or, ``here``, the coordinator's): run the node to its outcome.

        ``called``: the outcome of the call, made on the coordinator's thread
        (what is left is its child run). ``here``: a call that returns a
        pipeline returns at once, its child run not started.
        """
        task = node.task
        context = contextlib.nullcontext() if self._node_context is None else self._node_context(index)
        try:
            with context:
                return self._run_node(index, node, task, args, kwargs, inputs, execution_id, called, here)
        except BaseException as exc:
            return self._caught(exc)

    def _caught(self, exc: BaseException) -> Outcome:
        """The outcome of a node around which ``exc`` was caught: never lost, never a crash of the run."""
        if isinstance(exc, Exception):  # a bug of ours: fail the node
            return describe_failure(exc, self._codec_name, 1, time.time())
        now = time.time()  # Ctrl-C on the coordinator's thread (a lone node): the run is interrupted
        return Outcome(ok=False, interrupt=exc, started=now, ended=now)

    def _run_node(
        self,
        index: int,
        node: _Node,
        task: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        inputs: Any,
        execution_id: str | None,
        called: Outcome | None = None,
        here: bool = False,
    ) -> Outcome:
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
                    stop=self.stop,
                    alarm=self._alarm if here else None,
                )
            else:
                past = self._past_children.get(index)
                previous_child = None
                if past is not None:
                    previous_child, payload = past
                    outcome = Outcome(ok=True, child=payload, attempts=0)
                elif called is not None:
                    outcome = called
                else:
                    prepared = None if environment is None else environment.call(task, key)
                    outcome = self._calls.call(task, args, kwargs, prepared)
                state = self._node_states[index]
                if outcome.ok and task.options.with_state and outcome.child is None:
                    outcome, state = stateful_child(outcome, state)
                if outcome.ok and outcome.child is not None and not here:
                    outcome = self._run_child(index, outcome.child, previous_child, state)
        except BaseException as exc:
            outcome = self._caught(exc)
        return outcome

    # -- applying outcomes ------------------------------------------------------

    def _complete(self, index: int, outcome: Outcome) -> None:
        if outcome.interrupt is not None:
            self._interrupted.add(index)  # ended: nothing more comes from it
            raise outcome.interrupt
        self._running -= 1
        graph_node = self._graph.nodes[index]
        options = graph_node.node.task.options
        if outcome.stopped:
            self._stopped_part_way(index, outcome)
            return
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
        self._states[index] = state
        self._ended_here.add(index)
        if graph_node.chains:
            self._chains_end(index)
        row = self._rows[index]
        started_at = self._started.pop(index, None)
        self._note(
            index,
            next_version(
                row,
                state,
                outcome.attempts,
                outcome.started if started_at is None else started_at,
                outcome.ended,
                # A failed child run's node keeps its pickled pipeline: a resume resumes that child.
                outcome.encoded if outcome.ok else (row.result if row.child_run_id else None),
                outcome.exc_type,
                outcome.message,
                outcome.traceback,
                outcome.exception,
                outcome.execution_id or row.execution_id,
            ),
        )
        if state == _FAILED and graph_node.tolerant:
            self._tolerant_failure(index)  # in_parallel(return_exceptions=True): its exception is a value
        self._outcomes_since_flush += 1
        if self._on_event is not None:
            self._on_event("end", index)
        ended: list[int] = []
        self._count_down(index, ended)
        self._cascade(ended)

    def _stopped_part_way(self, index: int, outcome: Outcome) -> None:
        """A batch node stopped by a pause (back to pending) or a cancel (``cancelled``); resumable."""
        self._look_at_control(force=True)  # a request made in this process stops it before we look
        state = _CANCELLED if self.halt == "cancel" else _PENDING
        self._states[index] = state
        self._started.pop(index, None)
        row = dataclasses.replace(
            self._rows[index], execution_id=outcome.execution_id or self._rows[index].execution_id
        )
        self._note(index, with_state(row, state, None, outcome.ended if state == _CANCELLED else None))
        self._outcomes_since_flush += 1
        if self._on_event is not None:
            self._on_event("end", index)
        if state == _CANCELLED:
            if self._graph.nodes[index].chains:
                self._chains_end(index)
            ended: list[int] = []
            self._count_down(index, ended)
            self._cascade(ended)

    def _stoppable_nodes_running(self) -> bool:
        """Whether a batch node or a child run is still running (one whose interrupt came back has ended)."""
        nodes, rows, ended = self._graph.nodes, self._rows, self._interrupted
        return any(
            state == _RUNNING and (nodes[i].node.kind == BATCH or rows[i].child_run_id is not None) and i not in ended
            for i, state in enumerate(self._states)
        )

    def _count_down(self, index: int, ended: list[int]) -> None:
        for dependent in self._graph.nodes[index].dependents:
            self._waiting[dependent] -= 1
            if self._waiting[dependent] == 0:
                self._release(dependent, ended)

    def _release(self, index: int, ended: list[int]) -> None:
        """Every node ``index`` waits for has ended: queue it, or end it by the rules."""
        if self.halt == "cancel" and not self._always_runs(index):
            self._end_unstarted(index, _CANCELLED, ended)
            return  # a finally_do node goes on below: it always runs
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
        self._end_unstarted(index, verdict, ended)

    def _end_unstarted(self, index: int, verdict: str, ended: list[int]) -> None:
        """End a node that did not run (``ended`` collects it, for the cascade)."""
        ended_row = with_state(self._rows[index], verdict, None, time.time())
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
        self._states[index] = verdict
        self._values[index] = None
        if self._graph.nodes[index].chains:
            self._chains_end(index)
        self._note(index, ended_row)
        if verdict == _FAILED_DEPENDENCY and self._graph.nodes[index].tolerant:
            self._tolerant_failure(index)
        self._outcomes_since_flush += 1
        if self._on_event is not None:
            self._on_event("end", index)
        ended.append(index)

    def _cascade(self, ended: list[int]) -> None:
        """Count down the dependents of nodes that ended without running (a stack, no recursion)."""
        while ended:
            self._count_down(ended.pop(), ended)

    def _stop_early(self) -> None:
        """Interrupted (or a bug of ours): record what is known, running nodes back to pending."""
        self._ended = True  # a child run not recorded yet is not started (see ChildStarted)
        # Batch nodes on node threads stop taking inputs, as a pause stops
        # them, and child runs end interrupted (they read _ended): their
        # executions and runs end with this run instead of going on unseen
        # (and a resume in this process would find them running).
        self.stop.set()
        self._pool.stop()
        # Outcomes that arrived meanwhile are kept, as executions keep theirs,
        # and so are those of the batch nodes and child runs told to stop, for a while.
        deadline = time.monotonic() + BATCH_STOP_SECONDS
        try:
            wait = 0.0
            while True:
                for index, outcome in take_all(self._outbox, wait):
                    if isinstance(outcome, Outcome) and outcome.interrupt is None:
                        self._complete(index, outcome)
                    elif isinstance(outcome, Outcome):
                        self._interrupted.add(index)
                wait = deadline - time.monotonic()
                if wait <= 0 or not self._stoppable_nodes_running():
                    break
        except BaseException:  # a second Ctrl-C while waiting: record what we have
            logger.debug("could not apply late outcomes of run %s", self._run_id, exc_info=True)
        for index, state in enumerate(self._states):
            if state == _RUNNING:
                self._states[index] = _PENDING
                self._started.pop(index, None)
                self._note(index, with_state(self._rows[index], _PENDING, None, None))
        try:
            self._flush(status=PipelineStatus.INTERRUPTED.value, ended_at=time.time())
        except BaseException:
            logger.exception("could not record the end of interrupted pipeline run %s", self._run_id)
        self._calls.close(wait=False)
