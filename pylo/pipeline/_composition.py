"""The composition half of the run coordinator: the rules around each node call.

:class:`CompositionRules` is mixed into ``RunCoordinator`` and runs on the
coordinator's thread (``_run_child`` on a node thread, talking to the
coordinator through its outbox). It keeps, per node, the error a handler
receives, the state the node ends with, and a child run's bookkeeping:

- before a call (``_compose``): an ``exceptionally`` with nothing to recover
  and a false ``continue_if`` end the node ``skipped`` with the previous
  value; handlers get the upstream error in place of the previous result;
  ``with_state`` tasks get the state first; arguments are checked against
  the task's signature;
- a ``with_state`` result is split into ``(state, result)``; the state is
  stored beside the result (``wrap_state``) so a resume finds it;
- a task that returned a pipeline: the child is recorded on the node and
  flushed, then run (or resumed) as a child run (``_dynamic.run_child``).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from pylo._codec import get_codec
from pylo._tracebacks import qualified_name, safe_str
from pylo.pipeline._builder import BATCH, EXCEPTIONALLY, FINALLY, Pipeline, _Node
from pylo.pipeline._executors import Outcome, describe_failure
from pylo.pipeline._outcomes import (
    GroupFailed,
    check_arguments,
    combined_error,
    member_exception,
    merge_states,
    wrap_state,
)

if TYPE_CHECKING:
    from pylo.pipeline._graph import Graph
    from pylo.pipeline._host import Host
    from pylo.pipeline._run_environment import RunEnvironment
    from pylo.stores.runs import NodeRow

__all__ = ["ChildStarted", "CompositionRules", "qualified", "stateful_child", "why_not_run"]

_HARD = frozenset({"failed", "failed_dependency"})
_FINAL = frozenset({"done", "failed", "failed_softly", "failed_dependency", "skipped", "cancelled"})
_RUNNING = "running"
#: How often a node thread waiting for its child run to be recorded looks whether the coordinator ended.
_RECORD_POLL_SECONDS = 0.1


class CompositionRules:
    """Composition state and rules of a run coordinator (a mixin; see the module docstring)."""

    _graph: Graph
    _rows: list[NodeRow]
    _states: list[str]
    _values: list[Any]
    _host: Host
    _run_id: str
    _codec_name: str
    _hooks: tuple[Any, ...]
    _environment: RunEnvironment | None
    _max_parallel: int
    halt: str | None
    _started: dict[int, float]
    _outbox: queue.SimpleQueue[Any]

    def _note(self, index: int, row: NodeRow) -> None:
        raise NotImplementedError

    def _flush(self, status: str | None = None, ended_at: float | None = None) -> None:
        raise NotImplementedError

    def _init_composition(self, rows: list[NodeRow]) -> None:
        # Set once the coordinator records nothing more: a node thread waiting
        # for its child run to be recorded then gives up.
        self._ended = False
        # The exception of each failed node (and, for a failed_dependency
        # node, of what it waited for): what exceptionally/finally_do receive.
        self._errors: list[BaseException | None] = [None] * len(rows)
        # Nodes that end "skipped" with a pass-through value (continue_if, exceptionally).
        self._passed: set[int] = set()
        # finally_do nodes: the value they pass on (the one before them).
        self._finally_values: dict[int, Any] = {}
        # Call nodes whose past run started a child run: (child run id, pickled pipeline).
        self._past_children = {
            i: (row.child_run_id, row.result)
            for i, row in enumerate(rows)
            if row.child_run_id is not None and row.result is not None and row.state not in _FINAL
        }
        # The state each node ended with (with_state tasks; None when the run has none).
        self._node_states: list[Any] = [None] * len(rows)
        # Nodes that ran a child run: the state they end with (set by the node thread).
        self._child_states: dict[int, Any] = {}

    def _upstream_error(self, index: int) -> BaseException | None:
        """The error of the nodes ``index`` waits for that failed hard (None when none did)."""
        nodes = self._graph.nodes
        failures = []
        for up in nodes[index].upstream:
            if self._states[up] in _HARD and not nodes[up].tolerant:
                failures.append((nodes[up].node.task.display_name, self._error_of(up)))
        return combined_error(failures) if failures else None

    def _error_of(self, index: int) -> BaseException:
        error = self._errors[index]
        if error is None:
            from pylo.errors import StoredTaskError

            row = self._rows[index]
            if row.exception is not None:
                try:
                    error = get_codec(self._codec_name).decode_exception(row.exception)
                except Exception:
                    error = None
            if not isinstance(error, BaseException):
                error = StoredTaskError(row.exc_type or "Exception", row.message or "", row.traceback or "")
            self._errors[index] = error
        return error

    def _state_in(self, index: int) -> Any:
        """The state node ``index`` starts with: its initial state, or its upstream nodes' merged."""
        graph_node = self._graph.nodes[index]
        if graph_node.node.initial is not None:
            return graph_node.node.initial[0]
        states = self._node_states
        if all(states[up] is None for up in graph_node.upstream):
            return None  # the common case: nothing to merge, no names to find
        nodes = self._graph.nodes
        # A batch node carries no state (it is many calls): what follows it starts without its state.
        return merge_states(
            [
                (nodes[up].node.task.display_name, self._node_states[up])
                for up in graph_node.upstream
                if nodes[up].node.kind != BATCH
            ]
        )

    def _compose(
        self, index: int, node: _Node, args: tuple[Any, ...], kwargs: dict[str, Any], state: Any = None
    ) -> Outcome | tuple[Any, ...] | None:
        """Composition rules before a call: an outcome that ends the node now, new args, or None."""
        if node.kind == BATCH:
            return None
        first = node.args[0] if node.args else None
        previous = self._graph.value_of(first, self._values) if isinstance(first, Pipeline) else None
        if node.handler is not None:
            error = self._upstream_error(index)
            if node.handler == EXCEPTIONALLY and error is None:
                return self._pass_through(index, previous)  # nothing failed: skipped, value passes on
            if node.handler == FINALLY:
                self._finally_values[index] = None if error is not None else previous
                if error is None and self.halt == "cancel":
                    from pylo.pipeline._errors import PipelineCancelled

                    error = PipelineCancelled(self._run_id)  # the run was cancelled: it receives that
            if error is not None:
                args = (error, *args[1:])
            elif node.handler == FINALLY and previous is None and node.args:
                args = (None, *args[1:])  # a cancelled or softly failed node before it
        elif node.condition is not None and not node.condition(previous):
            return self._pass_through(index, previous)
        changed = node.handler is not None
        if node.task.options.with_state:
            args, changed = (state, *args), True
        problem = check_arguments(node.task, args, kwargs)
        if problem is not None:
            return describe_failure(problem, self._codec_name, 0, time.time())
        return args if changed else None

    def _split_state(self, index: int, outcome: Outcome) -> Outcome:
        """A with_state task returned ``(state, result)``: keep the state, the result is the value."""
        value = outcome.value
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            from pylo.errors import PipelineValidationError

            problem = PipelineValidationError(
                f"`{self._graph.nodes[index].node.task.display_name}` has with_state=True, so it must return "
                f"(state, result), got {type(value).__name__}"
            )
            return describe_failure(problem, self._codec_name, outcome.attempts, outcome.started)
        self._node_states[index], result = value
        return dataclasses.replace(outcome, value=result, encoded=self._encode(result))

    def _pass_through(self, index: int, value: Any) -> Outcome:
        self._passed.add(index)
        now = time.time()
        return Outcome(ok=True, value=value, encoded=self._encode(value), attempts=0, started=now, ended=now)

    def _encode(self, value: Any) -> bytes | None:
        try:
            return get_codec(self._codec_name).encode_value(value)
        except Exception:
            return None

    def _run_child(self, index: int, payload: bytes, previous_child: str | None, state: Any) -> Outcome:
        """In a node thread: the task returned a pipeline; record it, then run it as a child run."""
        from pylo.pipeline._dynamic import run_child

        def record(child_id: str) -> None:
            started = ChildStarted(child_id, payload)
            self._outbox.put((index, started))
            # The coordinator may have ended (interrupted) before it took this
            # message in, or taken it and not recorded it: then the child must
            # not start, and this thread must not wait for ever.
            while not started.recorded.wait(_RECORD_POLL_SECONDS):
                if self._ended:
                    break
            if not started.accepted:
                raise RunEnded(f"pipeline run {self._run_id!r} ended before its child run {child_id!r} was recorded")

        outcome, state = run_child(
            self._host,
            self._run_id,
            self._rows[index].key,
            payload,
            state=state,
            previous_child=previous_child,
            record=record,
            codec_name=self._codec_name,
            hooks=self._hooks,
            environment=self._environment,
            max_parallel=self._max_parallel,
            halted=lambda: "interrupt" if self._ended else self.halt,
        )
        self._child_states[index] = state
        return outcome

    def _tolerant_failure(self, index: int) -> None:
        """A ``return_exceptions`` member failed (or did not run): its exception becomes its value, durably.

        Its row keeps what a resume needs to put the same exception in the
        same place: for a node that did not run, the exception of what it
        waited for (type, message, traceback text, the encoded object); and
        the state it carries, beside it. The value is rebuilt from the row,
        as a resume rebuilds it.
        """
        row = self._rows[index]
        error = self._errors[index]
        if row.state == "failed_dependency" and error is not None:
            nodes = self._graph.nodes
            texts = [self._rows[up].traceback for up in nodes[index].upstream if self._states[up] in _HARD]
            row = dataclasses.replace(
                row,
                exc_type=qualified(error),
                message=safe_str(error),
                traceback="\n".join(text for text in texts if text) or None,
                exception=get_codec(self._codec_name).encode_exception(error),
            )
        state = self._node_states[index]
        if state is not None:
            row = dataclasses.replace(row, result=self._encode(wrap_state(None, state)))
        self._note(index, row)
        codec = get_codec(self._codec_name)
        self._values[index] = member_exception(row.exc_type, row.message, row.traceback, row.exception, codec)

    def _record_child(self, index: int, started: ChildStarted) -> None:
        """Make the child run findable from its node before the child starts (a resume resumes it)."""
        from pylo.pipeline._recording import with_state

        row = with_state(self._rows[index], _RUNNING, self._started.get(index), None)
        self._note(index, dataclasses.replace(row, child_run_id=started.child_id, result=started.payload))
        try:
            self._flush()
        except BaseException:
            started.recorded.set()  # not accepted: the node thread gives up at once
            raise
        started.accepted = True
        started.recorded.set()


def qualified(error: BaseException) -> str:
    """The stored type name of ``error``: ``module.QualName``, bare for builtins."""
    return qualified_name(type(error))


def why_not_run(error: BaseException) -> str:
    if isinstance(error, GroupFailed):
        return str(error)
    return f"not run: an upstream task failed ({type(error).__name__}: {error})"


def stateful_child(outcome: Outcome, state: Any) -> tuple[Outcome, Any]:
    """A with_state task that returned ``(state, pipeline)``: the pipeline is a child run."""
    value = outcome.value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Pipeline):
        from pylo.pipeline._dynamic import encode_child

        return dataclasses.replace(outcome, value=None, encoded=None, child=encode_child(value[1])), value[0]
    return outcome, state


class ChildStarted:
    """A node thread's message: its task returned a pipeline, to run as child run ``child_id``.

    ``recorded`` is set when the coordinator is done with it: ``accepted``
    then says whether the child is recorded on its node (and may start).
    """

    __slots__ = ("accepted", "child_id", "payload", "recorded")

    def __init__(self, child_id: str, payload: bytes) -> None:
        self.child_id = child_id
        self.payload = payload
        self.recorded = threading.Event()
        self.accepted = False


class RunEnded(BaseException):
    """A run's coordinator ended (interrupted) while work of it went on in another thread.

    Raised in a node thread whose child run was not recorded before that,
    and in a child run's coordinator once its parent run was interrupted.
    A ``BaseException``, as the interrupt that ended the run is: the work
    ends interrupted too, and its outcome is one nobody takes in any more.
    """
