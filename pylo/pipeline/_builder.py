"""Building pipelines: immutable descriptions of task calls and how they connect.

A :class:`Pipeline` is either one node (a task call, or a batch node that
maps a task over inputs) or a group of member pipelines (``in_parallel``),
whose value is the list of its members' values. Nodes are compared by
identity: two calls of one task are two nodes, and two different tasks that
share a name are two nodes too.

Everything here is immutable except ``Pipeline.after``, which adds ordering
dependencies to nodes already made (as ProcessFlow's ``a >> b`` does), and
so is the one way to build a cycle; the graph refuses cycles before a run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pylo._codec import short_repr
from pylo.errors import PipelineValidationError
from pylo.pipeline._task import Task

__all__ = ["Pipeline", "call_pipeline", "in_parallel", "map_pipeline"]

# Declaration order: the tie-break of the stable topological order.
_ordinals = itertools.count()

CALL = "call"
BATCH = "batch"
EXCEPTIONALLY = "exceptionally"
FINALLY = "finally"


class _Node:
    """One task call of a pipeline. Identity matters: nodes are never merged."""

    __slots__ = (
        "after",
        "args",
        "condition",
        "deps",
        "handler",
        "initial",
        "inputs",
        "kind",
        "kwargs",
        "map_options",
        "ordinal",
        "spread_first",
        "task",
    )

    def __init__(
        self,
        task: Task,
        kind: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        inputs: Any = None,
        map_options: Mapping[str, Any] | None = None,
        spread_first: bool = False,
        after: list[Pipeline] | None = None,
        handler: str | None = None,
        condition: Callable[[Any], Any] | None = None,
        initial: tuple[Any] | None = None,
    ) -> None:
        self.task = task
        #: None, EXCEPTIONALLY or FINALLY: the error-handling rules of the node (see _outcomes).
        self.handler = handler
        #: continue_if's condition on the previous result (None: always run).
        self.condition = condition
        #: with_initial(state=...): ``(state,)`` for a first node that carries initial parameters.
        self.initial = initial
        self.kind = kind
        self.args = args
        self.kwargs = kwargs
        self.inputs = inputs
        self.map_options = dict(map_options or {})
        self.spread_first = spread_first
        self.after: list[Pipeline] = list(after or ())
        self.ordinal = next(_ordinals)
        # Data dependencies, in argument order: each is replaced by its value.
        found: list[Pipeline] = []
        _find_pipelines((inputs, args, kwargs), found)
        self.deps: tuple[Pipeline, ...] = tuple(found)

    def copy_with(self, task: Task) -> _Node:
        return _Node(
            task,
            self.kind,
            self.args,
            self.kwargs,
            inputs=self.inputs,
            map_options=self.map_options,
            spread_first=self.spread_first,
            after=self.after,
            handler=self.handler,
            condition=self.condition,
            initial=self.initial,
        )

    def with_args(
        self,
        args: tuple[Any, ...],
        spread_first: bool,
        kwargs: dict[str, Any] | None = None,
        initial: tuple[Any] | None = None,
    ) -> _Node:
        """A copy (a new node) calling the same task with other arguments."""
        node = _Node(
            self.task,
            self.kind,
            args,
            self.kwargs if kwargs is None else kwargs,
            inputs=self.inputs,
            map_options=self.map_options,
            spread_first=spread_first,
            after=self.after,
            handler=self.handler,
            condition=self.condition,
            initial=self.initial if initial is None else initial,
        )
        return node

    def __repr__(self) -> str:
        return f"<node {self.task.display_name} #{self.ordinal}>"


#: Values that are never a pipeline nor hold one: skipped without a look (a batch node's inputs are often these).
_ATOMS = frozenset({int, float, str, bytes, bool, type(None)})


def _find_pipelines(value: Any, found: list[Pipeline]) -> None:
    """Collect pipelines in ``value``, looking inside lists, tuples and dicts."""
    stack = [value]
    atoms = _ATOMS
    while stack:
        item = stack.pop()
        if isinstance(item, Pipeline):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend([member for member in reversed(item) if type(member) not in atoms])
        elif isinstance(item, dict):
            stack.extend([member for member in reversed(list(item.values())) if type(member) not in atoms])
    # The stack reverses twice, so found is in argument order.


def substitute(value: Any, value_of: Callable[[Pipeline], Any]) -> Any:
    """``value`` with each pipeline in it (also in lists, tuples, dicts) replaced by its value."""
    if isinstance(value, Pipeline):
        return value_of(value)
    if isinstance(value, list):
        return [substitute(item, value_of) for item in value]
    if isinstance(value, tuple):
        items = [substitute(item, value_of) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, dict):
        out = {key: substitute(item, value_of) for key, item in value.items()}
        return out if type(value) is dict else type(value)(out)
    return value


class Pipeline:
    """An immutable description of task calls; nothing runs until ``Pylo.run_pipeline``.

    Make one with ``task.send(...)``, ``task.map(...)`` or :func:`in_parallel`.
    """

    __slots__ = ("_inline", "_max_parallelism", "_members", "_node", "_return_exceptions")

    def __init__(
        self,
        node: _Node | None = None,
        members: tuple[Pipeline, ...] | None = None,
        max_parallelism: int | None = None,
        return_exceptions: bool = False,
    ) -> None:
        self._node = node
        self._members = members
        self._max_parallelism = max_parallelism
        self._return_exceptions = return_exceptions
        #: Run as a child of a task that returns it: share the task's state.
        self._inline = False

    @property
    def is_group(self) -> bool:
        """True for an ``in_parallel`` group."""
        return self._node is None

    def last_nodes(self) -> Iterator[_Node]:
        """The nodes whose results make this pipeline's value, in member order."""
        stack: list[Pipeline] = [self]
        while stack:
            pipeline = stack.pop()
            if pipeline._node is not None:
                yield pipeline._node
            else:
                assert pipeline._members is not None
                stack.extend(reversed(pipeline._members))

    def continue_with(self, next_step: Task | Callable[..., Any] | Pipeline, *args: Any, **kwargs: Any) -> Pipeline:
        """Then call ``next_step(result, *args, **kwargs)``; a tuple result is spread over the arguments.

        ``next_step`` may be a pipeline: the result is prepended to the
        arguments of its first task (of every member's first task, for a
        group), and the pipeline's own arguments follow.

        Raises:
            PipelineValidationError: ``next_step`` is not a task, a function or
                a pipeline; arguments given with a pipeline; or this pipeline
                ends with ``finally_do``.
        """
        self._check_not_final("continue_with")
        if isinstance(next_step, Pipeline):
            if args or kwargs:
                raise PipelineValidationError(
                    "continue_with(pipeline) takes no further arguments: give them to the pipeline's tasks"
                )
            return _prepend(next_step, self)
        return Pipeline(_Node(_as_task(next_step), CALL, (self, *args), kwargs, spread_first=True))

    def continue_if(
        self, condition: Callable[[Any], Any], next_step: Task | Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Pipeline:
        """Like ``continue_with``, but call ``next_step`` only when ``condition(result)`` is true.

        When it is false the node ends ``skipped`` and passes the result on
        unchanged.

        Raises:
            PipelineValidationError: ``condition`` is not callable, or as for ``continue_with``.
        """
        if not callable(condition):
            raise PipelineValidationError(f"continue_if needs a callable condition, got {short_repr(condition)}")
        self._check_not_final("continue_if")
        return Pipeline(_Node(_as_task(next_step), CALL, (self, *args), kwargs, spread_first=True, condition=condition))

    def exceptionally(self, handler: Task | Callable[..., Any], *args: Any, **kwargs: Any) -> Pipeline:
        """Then, only if something before failed, call ``handler(exception, *args, **kwargs)``.

        Its return value recovers the pipeline (the failure no longer fails
        the run). When nothing failed the node ends ``skipped`` and passes
        the result on. If it raises, its error goes on to the next
        ``exceptionally``.

        Raises:
            PipelineValidationError: This pipeline ends with ``finally_do``.
        """
        self._check_not_final("exceptionally")
        return Pipeline(_Node(_as_task(handler), CALL, (self, *args), kwargs, handler=EXCEPTIONALLY))

    def finally_do(self, cleanup: Task | Callable[..., Any], *args: Any, **kwargs: Any) -> Pipeline:
        """Then always call ``cleanup(result_or_exception, *args, **kwargs)``.

        It runs after a success, a failure or a cancellation, and is not
        fruitful: the pipeline's result (or error) is the one before it. It
        must be the last task of a pipeline, and there can be only one.

        Raises:
            PipelineValidationError: This pipeline already ends with ``finally_do``.
        """
        self._check_not_final("finally_do")
        return Pipeline(_Node(_as_task(cleanup), CALL, (self, *args), kwargs, handler=FINALLY))

    def with_initial(
        self, args: tuple[Any, ...] | list[Any] = (), kwargs: Mapping[str, Any] | None = None, state: Any = None
    ) -> Pipeline:
        """This pipeline with initial parameters: ``args`` prepended and ``kwargs`` added to its first
        task's call (every member's, for a group), and ``state`` as the state it starts with.

        Raises:
            PipelineValidationError: The pipeline already carries initial parameters.
        """
        return _prepend(self, None, (tuple(args), dict(kwargs or {}), state))

    def inline(self) -> Pipeline:
        """This pipeline, to be returned by a task: as a child run it shares that task's state.

        A child run that is not inline starts with its own state (None, or
        its ``with_initial`` state) and the parent's state goes on unchanged.
        """
        copy = Pipeline(self._node, self._members, self._max_parallelism, self._return_exceptions)
        copy._inline = True
        return copy

    def _check_not_final(self, operation: str) -> None:
        for node in self.last_nodes():
            if node.handler == FINALLY:
                raise PipelineValidationError(
                    f"{operation} after finally_do: finally_do must be the last task of a pipeline, and only one"
                )

    def after(self, *pipelines: Pipeline) -> Pipeline:
        """Make this pipeline's last node(s) wait for ``pipelines``, without taking their values.

        Returns this pipeline itself (it is the one operation that changes
        nodes already made, and so can form a cycle, which ``run_pipeline``
        refuses before anything runs).

        Raises:
            PipelineValidationError: An argument is not a pipeline.
        """
        for other in pipelines:
            if not isinstance(other, Pipeline):
                raise PipelineValidationError(
                    f"after() takes pipelines, got {type(other).__name__} {short_repr(other)}"
                )
        for node in self.last_nodes():
            node.after.extend(pipelines)
        return self

    def set(self, **options: Any) -> Pipeline:
        """A new pipeline whose last task (each member's, for a group) has these options changed.

        Raises:
            TypeError, ValueError: An unknown option or a bad value.
        """
        if self._node is not None:
            return Pipeline(self._node.copy_with(self._node.task.with_options(**options)))
        assert self._members is not None
        return Pipeline(
            members=tuple(m.set(**options) for m in self._members),
            max_parallelism=self._max_parallelism,
            return_exceptions=self._return_exceptions,
        )

    def wait(self) -> Pipeline:
        """Pause the run once this pipeline's last task (each member's, for a group) ends.

        Nodes that wait for it do not start; the run ends ``paused`` and
        ``Pylo.unpause_pipeline`` goes on from there. Same as ``.set(wait=True)``.
        """
        return self.set(wait=True)

    def __repr__(self) -> str:
        if self._node is not None:
            return f"Pipeline({self._node.task.display_name})"
        return f"Pipeline(in_parallel of {len(self._members or ())})"


def _prepend(
    pipeline: Pipeline, previous: Pipeline | None, initial: tuple[tuple[Any, ...], dict[str, Any], Any] | None = None
) -> Pipeline:
    """``pipeline`` with ``previous``'s result (or ``initial`` parameters) given to its first task(s).

    New nodes, same shape: a description is never changed.
    """
    node = pipeline._node
    if node is None:
        assert pipeline._members is not None
        return Pipeline(
            members=tuple(_prepend(member, previous, initial) for member in pipeline._members),
            max_parallelism=pipeline._max_parallelism,
            return_exceptions=pipeline._return_exceptions,
        )
    if node.args and isinstance(node.args[0], Pipeline) and (node.spread_first or node.handler is not None):
        # A chain: the result goes to the chain's first task.
        return Pipeline(node.with_args((_prepend(node.args[0], previous, initial), *node.args[1:]), node.spread_first))
    if node.initial is not None:
        raise PipelineValidationError(
            f"{node.task.display_name} already carries initial parameters (with_initial): combining pipelines "
            "that both carry them is ambiguous; give with_initial to the combined pipeline only"
        )
    if node.kind == BATCH:
        raise PipelineValidationError("continue_with cannot prepend a result to a batch node (map); use map(pipeline)")
    if initial is None:
        return Pipeline(node.with_args((previous, *node.args), True))
    init_args, init_kwargs, state = initial
    return Pipeline(
        node.with_args((*init_args, *node.args), node.spread_first, {**init_kwargs, **node.kwargs}, (state,))
    )


def _as_task(value: Any) -> Task:
    if isinstance(value, Task):
        return value
    if callable(value):
        return Task(value)
    raise PipelineValidationError(f"expected a task or a function, got {type(value).__name__} {short_repr(value)}")


def call_pipeline(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Pipeline:
    """The one-node pipeline of ``task(*args, **kwargs)``."""
    return Pipeline(_Node(task, CALL, args, dict(kwargs)))


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PipelineValidationError(f"{name} must be an int >= 1, got {type(value).__name__} {short_repr(value)}")
    if value < 1:
        raise PipelineValidationError(f"{name} must be >= 1, got {value}")
    return value


def _check_map_options(options: Mapping[str, Any]) -> dict[str, Any]:
    checked = dict(options)
    if checked.pop("store_results", True) is not True:
        raise PipelineValidationError(
            "a batch node always stores its results (they are its value): leave store_results out of map()"
        )
    for name in ("max_worker_failures", "max_failures", "task_executions_before_flush"):
        if checked.get(name) is not None:
            _check_count(name, checked[name])
    for name in ("flush_seconds",):
        if name in checked:
            value = checked[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise PipelineValidationError(f"{name} must be a number of seconds > 0, got {short_repr(value)}")
    if "store_exceptions" in checked and not isinstance(checked["store_exceptions"], bool):
        raise PipelineValidationError(
            f"store_exceptions must be True or False, got {short_repr(checked['store_exceptions'])}"
        )
    return checked


def map_pipeline(
    task: Task,
    inputs: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Mapping[str, Any],
) -> Pipeline:
    """The one-node pipeline of a batch node: ``task(input, *args, **kwargs)`` per input."""
    if task.options.with_state:
        raise PipelineValidationError(
            f"{task.display_name} has with_state=True and cannot be mapped: a batch node is many calls and "
            "carries no state; use send() in an in_parallel group instead"
        )
    if not isinstance(inputs, Pipeline):
        if isinstance(inputs, (str, bytes, bytearray)) or not isinstance(inputs, Iterable):
            raise PipelineValidationError(
                f"map needs an iterable of inputs or a pipeline whose result is one, got "
                f"{type(inputs).__name__} {short_repr(inputs)}"
            )
        # A description may run more than once (a resume): keep the inputs, not an iterator.
        # A range or a tuple already is that, and an execution plans a range without listing it.
        if not isinstance(inputs, (range, tuple)):
            inputs = list(inputs)
    return Pipeline(_Node(task, BATCH, args, dict(kwargs), inputs=inputs, map_options=_check_map_options(options)))


def in_parallel(
    pipelines: Iterable[Pipeline],
    max_parallelism: int | None = None,
    num_stages: int = 1,
    return_exceptions: bool = False,
) -> Pipeline:
    """A group: its members run in parallel; its value is the list of their values, in order.

    Args:
        pipelines: The members (pipelines; groups nest). May be empty (value ``[]``).
        max_parallelism: At most this many members run at once, each member
            a chain from its first node's start to its last node's end
            (nodes several members need hold no slot); None: only the
            run's ``max_parallel`` limits them.
        num_stages: Split the members into this many stages whose results
            are joined in order. A group is a value, not a stored node, so
            there is no aggregation state to split: the value is the same
            list, in the same order, whatever the number of stages.
        return_exceptions: A failed member's exception takes its place in the
            list instead of failing the nodes that use the group (and the run).

    Raises:
        PipelineValidationError: A member is not a pipeline, or a bad option.
    """
    members = tuple(pipelines) if not isinstance(pipelines, Pipeline) else None
    if members is None:
        raise PipelineValidationError("in_parallel takes a list of pipelines, got a single pipeline; wrap it in [ ]")
    for member in members:
        if not isinstance(member, Pipeline):
            raise PipelineValidationError(
                f"in_parallel takes pipelines, got {type(member).__name__} {short_repr(member)}; "
                "make one with task.send(...)"
            )
    if max_parallelism is not None:
        _check_count("max_parallelism", max_parallelism)
    _check_count("num_stages", num_stages)
    if not isinstance(return_exceptions, bool):
        raise PipelineValidationError(f"return_exceptions must be True or False, got {short_repr(return_exceptions)}")
    return Pipeline(members=members, max_parallelism=max_parallelism, return_exceptions=return_exceptions)
