"""A run's task environment: its configuration, its rate-limit buckets, and what each node runs.

``run_pipeline`` makes one :class:`RunEnvironment` before anything is
recorded (a bad configuration or two rates for one key fail the run before
it exists), stores :attr:`RunEnvironment.stored_config` with the run, and
hands it to the coordinator, which asks it, per node::

    RunEnvironment ── config (resolved once; a resume: the parent's, secrets loaded again)
       │            ── limits (one KeyedRateLimits per run, closed when it ends)
       ├─ wait(task)              in the node's own thread, before it starts (once per batch node)
       ├─ call(task, key)         a call node: (function, retry) for the CallRunner
       └─ batch_call(task, key)   a batch node: the callable each input runs, and
                                  whether its retry must count attempts

Tasks without ``with_context``, ``wait_for`` and a rate key get their own
function and retry back, unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pylo._ratekeys import KeyedRateLimits, bucket_key, resolve_rate_limits
from pylo.pipeline._config import ResolvedConfig, load_config, resume_config, to_stored
from pylo.pipeline._context import TaskContext, counting_attempts
from pylo.pipeline._environment import prepare_call
from pylo.pipeline._resources import wait_for_resource, wait_for_resource_async

if TYPE_CHECKING:
    from pylo.pipeline._task import Task

__all__ = ["RunEnvironment"]


def _is_async(function: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


def _target(task: Task) -> Callable[..., Any]:
    # A plain task's function is wrapped through its Task, which pickles by
    # reference (to process and Dask workers) where the decorated function cannot.
    return task.function if task.is_async else task


class RunEnvironment:
    """The configuration and rate limits of one run, and how its nodes' calls are prepared.

    Make it with :meth:`fresh` or :meth:`resumed`; :meth:`open` the buckets
    when the run starts and :meth:`close` them when it ends.

    Attributes:
        config: The run's configuration (what ``context.config`` is).
        changes: On a resume given ``config=``: how it differs from the run's
            own configuration, one line per key (empty otherwise).
        rates: Key -> task starts per second, for every bucket of the run.
        trace_id: The run's trace id, when tracing is on.
    """

    def __init__(
        self,
        config: ResolvedConfig,
        rates: Mapping[str, float],
        changes: list[str] | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.config = config
        self.rates = dict(rates)
        self.changes = list(changes or [])
        self.trace_id = trace_id
        self.run_id = ""
        self._limits: KeyedRateLimits | None = None
        #: A child run's environment: the parent's, whose bucket directory it shares.
        self._parent: RunEnvironment | None = None

    @staticmethod
    def _rates(tasks: Iterable[Task]) -> dict[str, float]:
        return resolve_rate_limits((t.name, t.options.rate_limit, t.options.rate_key) for t in tasks)

    @classmethod
    def fresh(cls, tasks: Iterable[Task], config: Any) -> RunEnvironment:
        """A new run's environment: ``config`` loaded and merged, the tasks' buckets resolved.

        Raises:
            ConfigError: A configuration source cannot be loaded.
            PipelineValidationError: Bad or conflicting rate limits.
        """
        return cls(load_config(config), cls._rates(tasks))

    @classmethod
    def resumed(
        cls, tasks: Iterable[Task], stored: Mapping[str, Any] | None, config: Any, parent_id: str
    ) -> RunEnvironment:
        """A resume's environment: the parent's stored configuration (secrets loaded again).

        A ``config`` given to the resume is only compared with it; what
        differs is logged as a warning and kept in :attr:`changes`. A parent
        from before configurations were stored had an empty one.

        Raises:
            ConfigError: A secret source cannot be resolved again, or ``config`` cannot be loaded.
            PipelineValidationError: Bad or conflicting rate limits.
        """
        rates = cls._rates(tasks)
        if stored is None:
            stored = to_stored(load_config(None))
        resolved, changes = resume_config(stored, config, run_id=parent_id)
        return cls(resolved, rates, changes)

    def for_child(self, tasks: Iterable[Task]) -> RunEnvironment:
        """A child run's environment: this run's configuration and trace id, and its rate buckets.

        A task that returned a pipeline runs it as a child run; its tasks see
        what the parent's tasks see (``context.config``), and a rate key the
        parent uses is the same bucket in the child (one bucket per key for
        the run and its children). Keys only the child uses get buckets of
        their own, in the parent's directory.

        Raises:
            PipelineValidationError: Bad rate limits, or a key the child gives
                another rate than the parent.
        """
        from pylo.errors import PipelineValidationError

        own = self._rates(tasks)
        for key, rate in own.items():
            if key in self.rates and self.rates[key] != rate:
                raise PipelineValidationError(
                    f"rate key {key!r} is {rate:g}/s in a child run but {self.rates[key]:g}/s in its parent: "
                    "a key is one bucket for the run and its children; give both the same rate_limit"
                )
        child = RunEnvironment(self.config, {**self.rates, **own}, trace_id=self.trace_id)
        child._parent = self
        return child

    @property
    def stored_config(self) -> dict[str, Any]:
        """The configuration as the run row keeps it: JSON, without secret values."""
        return to_stored(self.config)

    def open(self, run_id: str) -> None:
        """The run starts: make its buckets (only when some task has a rate)."""
        self.run_id = run_id
        if self.rates and self._limits is None:
            shared = None if self._parent is None else self._parent._limits
            if shared is not None:
                # Not the owner: the parent's close removes the directory.
                self._limits = KeyedRateLimits(self.rates, shared.directory, burst=shared.burst)
            else:
                self._limits = KeyedRateLimits.create(self.rates)

    def close(self) -> None:
        """The run ended: remove its buckets."""
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.close()

    # -- per node -------------------------------------------------------------------

    def _context(self, task: Task, node_key: str) -> TaskContext | None:
        if not task.options.with_context:
            return None
        return TaskContext(self.run_id, node_key, task.name, 1, self.config.values, self.trace_id)

    def _prepared(self, task: Task, target: Callable[..., Any], node_key: str) -> Callable[..., Any]:
        options = task.options
        return prepare_call(
            target,
            context=self._context(task, node_key),
            limits=self._limits,
            rate_key=bucket_key(task.name, options.rate_limit, options.rate_key),
        )

    def _plain(self, task: Task) -> bool:
        options = task.options
        return not options.with_context and bucket_key(task.name, options.rate_limit, options.rate_key) is None

    def call(self, task: Task, node_key: str) -> tuple[Callable[..., Any], Any] | None:
        """What a call node runs: ``(function, retry)``, or None (the task's own).

        With a context, the retry policy counts attempts so ``context.attempt`` is right.
        """
        if self._plain(task):
            return None
        function = self._prepared(task, _target(task), node_key)
        retry = task.options.retry
        if task.options.with_context and retry is not None:
            retry = counting_attempts(retry)
        return function, retry

    def batch_call(self, task: Task, node_key: str) -> Callable[..., Any] | None:
        """What each input of a batch node runs in place of the task's function, or None (the function itself)."""
        if self._plain(task):
            return None
        return self._prepared(task, _target(task), node_key)

    def wait(self, task: Task) -> None:
        """Wait for the task's resource, in the calling (node) thread; nothing without ``wait_for``.

        Raises:
            ResourceUnavailable: Still not ready at ``wait_timeout``.
        """
        probe = task.options.wait_for
        if probe is None:
            return
        timeout = task.options.wait_timeout
        if _is_async(probe):
            asyncio.run(wait_for_resource_async(probe, timeout))
        else:
            wait_for_resource(probe, timeout)
