"""Exceptions raised by pylo.

Every error pylo raises on purpose is a :class:`PyloError`, so callers can
catch one base class. Messages name the offending value and, where there is
one, the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: errors.py imports nothing of pylo at run time
    from pylo.pipeline._records import NodeRecord
    from pylo.stores.base import ExecutionRecord

__all__ = [
    "ConfigError",
    "DamagedExecutions",
    "ExecutionExists",
    "ExecutionInUse",
    "ExecutionNotFound",
    "ExecutionNotResumable",
    "InitializerFailed",
    "InputSerializationError",
    "PipelineCycleError",
    "PipelineExists",
    "PipelineFailed",
    "PipelineNotFound",
    "PipelineValidationError",
    "PyloError",
    "ResourceUnavailable",
    "ResultSerializationError",
    "StoreError",
    "StoredTaskError",
    "TaskTimeout",
    "WorkerCrashed",
]


class PyloError(Exception):
    """Base class of every error raised by pylo."""


class ExecutionNotFound(PyloError, LookupError):
    """No execution with the given id exists in the store."""

    def __init__(self, execution_id: str, location: str) -> None:
        super().__init__(f"no execution with id {execution_id!r} in the store at {location}")
        self.execution_id = execution_id
        self.location = location


class ExecutionExists(PyloError):
    """An execution with the requested id is already in the store."""

    def __init__(self, execution_id: str, location: str) -> None:
        super().__init__(
            f"an execution with id {execution_id!r} already exists in the store at {location}; "
            "choose another id, or resume it with start_from_past_execution"
        )
        self.execution_id = execution_id
        self.location = location


class ExecutionInUse(PyloError):
    """An execution cannot be deleted: something still runs it or reads it.

    Attributes:
        execution_id: The execution that was kept.
        dependents: Ids of the executions that resumed it (directly or
            further down its lineage) and still read its inputs or results;
            empty when something else keeps it.
        reason: What keeps it, in a few words (for example
            ``"running (process 4242 on web-1)"``).
    """

    def __init__(
        self, execution_id: str, message: str, *, dependents: Sequence[str] = (), reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.dependents = list(dependents)
        self.reason = reason if reason is not None else message

    @classmethod
    def resumed_by(cls, execution_id: str, dependents: Sequence[str], location: str) -> ExecutionInUse:
        """The refusal for an execution that resumed executions still read, naming them."""
        named = ", ".join(repr(d) for d in dependents)
        noun = "execution" if len(dependents) == 1 else "executions"
        return cls(
            execution_id,
            f"execution {execution_id!r} in the store at {location} cannot be deleted: {noun} {named} "
            "resumed it and still read its inputs or results; delete those first (the newest first)",
            dependents=dependents,
            reason=f"resumed by {noun} {named}",
        )


class ExecutionNotResumable(PyloError):
    """The execution cannot be resumed (its inputs were never fully recorded)."""


class ResultSerializationError(PyloError):
    """A task's return value could not be stored (``store_results=True``).

    The input is recorded as failed with this error, so a resume runs it again.
    """


class StoreError(PyloError):
    """The store is damaged, foreign, of an unknown format, or failed to write."""


class DamagedExecutions(StoreError):
    """``list_executions`` found executions it cannot read; the others are on the error.

    A store that keeps each execution in files of its own (the file store)
    can read the intact executions even when one is damaged. Rather than
    hide the damaged ones (the user would think them lost) or refuse the
    whole list, it raises this error, which names each damaged execution's
    path and problem and carries everything that could be read, as
    ``shutil.copytree`` reports the files it could not copy after copying
    the rest.

    Attributes:
        executions: The intact executions, oldest first, as
            ``list_executions`` would have returned them.
        damaged: Execution id (as found on disk) -> the :class:`StoreError`
            that reading it raises.
        location: The store.
    """

    def __init__(
        self,
        location: str,
        executions: Sequence[ExecutionRecord],
        damaged: Mapping[str, StoreError],
    ) -> None:
        details = "; ".join(str(error) for error in damaged.values())
        super().__init__(
            f"{len(damaged)} damaged execution(s) in the store at {location} left out of the list: {details}. "
            f"The {len(executions)} intact execution(s) are in this error's `executions` attribute"
        )
        self.location = location
        self.executions = list(executions)
        self.damaged = dict(damaged)


class InputSerializationError(PyloError):
    """An input could not be serialized for the store."""

    def __init__(self, position: int, value_repr: str, reason: str) -> None:
        super().__init__(f"input at position {position} ({value_repr}) cannot be serialized: {reason}")
        self.position = position
        self.reason = reason


class StoredTaskError(PyloError):
    """Stands in for a task exception that cannot be rebuilt from the store.

    Returned (not raised) by ``get_exceptions`` when the original exception
    could not be pickled when it happened, or cannot be unpickled now (for
    example because its class needs constructor arguments or no longer
    exists).

    Attributes:
        type_name: Qualified name of the original exception type.
        message: ``str()`` of the original exception.
        traceback_text: The formatted traceback, as recorded.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[type[StoredTaskError], tuple[str, str, str]]:
        return (StoredTaskError, (self.type_name, self.message, self.traceback_text))


class TaskTimeout(PyloError):
    """Recorded as the failure of an input whose task ran past ``timeout`` seconds."""


class WorkerCrashed(PyloError):
    """Recorded as the failure of the input a worker process was running when it died.

    The process ended without reporting (``os._exit``, a signal such as
    SIGKILL or SIGSEGV, the OOM killer); the message says how it ended.
    """


class InitializerFailed(PyloError):
    """A worker's ``initializer`` raised, so that worker could run no input.

    Raised by ``start_from_scratch`` and ``start_from_past_execution``: the
    execution ends ``aborted`` with every input no worker ran still
    pending, so a resume after the fix runs them (see docs/options.md).

    Attributes:
        initializer: ``module:qualname`` of the initializer.
        worker: Which worker it failed in (``"worker 1"``, ``"Dask worker
            tcp://..."``).
        type_name: Qualified name of the exception the initializer raised.
        error_message: ``str()`` of that exception.
        traceback_text: Its formatted traceback.
    """

    def __init__(self, initializer: str, worker: str, type_name: str, error_message: str, traceback_text: str) -> None:
        super().__init__(
            f"the initializer {initializer} failed in {worker}: {type_name}: {error_message}. That worker ran "
            "no input; the inputs no worker ran stay pending: fix the initializer, then resume the execution"
        )
        self.initializer = initializer
        self.worker = worker
        self.type_name = type_name
        self.error_message = error_message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[type[InitializerFailed], tuple[str, str, str, str, str]]:
        return (
            InitializerFailed,
            (self.initializer, self.worker, self.type_name, self.error_message, self.traceback_text),
        )


# -- pipelines -----------------------------------------------------------------


class PipelineNotFound(PyloError, LookupError):
    """No pipeline run with the given id exists in the store."""

    def __init__(self, run_id: str, location: str) -> None:
        super().__init__(f"no pipeline run with id {run_id!r} in the store at {location}")
        self.run_id = run_id
        self.location = location


class PipelineExists(PyloError):
    """A pipeline run with the requested id is already in the store."""

    def __init__(self, run_id: str, location: str) -> None:
        super().__init__(
            f"a pipeline run with id {run_id!r} already exists in the store at {location}; "
            "choose another run id, or resume it with resume_pipeline"
        )
        self.run_id = run_id
        self.location = location


class PipelineValidationError(PyloError, ValueError):
    """A pipeline cannot run as described (bad arguments, misplaced ``finally_do``...).

    Raised before anything runs or is recorded.
    """


class PipelineCycleError(PipelineValidationError):
    """The pipeline's dependencies form a cycle, so no order can run it.

    Attributes:
        cycle: The task names around the cycle, the first repeated at the
            end (``["a", "b", "a"]``).
    """

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(
            f"the pipeline has a dependency cycle: {' -> '.join(self.cycle)}; "
            "remove one of the .after() dependencies that close it"
        )


class PipelineFailed(PyloError):
    """A pipeline run ended ``failed``; raised by ``get_pipeline_result``.

    Attributes:
        run_id: The failed run.
        failures: The records of the nodes that failed (state ``failed``),
            in the run's node order; each carries its failure.
    """

    def __init__(self, run_id: str, failures: Sequence[NodeRecord]) -> None:
        self.run_id = run_id
        self.failures = list(failures)
        lines = []
        for node in self.failures:
            failure = node.failure
            what = "failed" if failure is None else f"{failure.exception_type}: {failure.message}"
            lines.append(f"{node.key} ({node.display_name}): {what}")
        summary = "; ".join(lines) if lines else "no node recorded a failure"
        super().__init__(
            f"pipeline run {run_id!r} failed ({len(self.failures)} failed node(s)): {summary}; "
            "fix the task and call resume_pipeline to rerun only what did not finish"
        )


class ConfigError(PyloError, ValueError):
    """A run's configuration cannot be loaded, merged, stored or resolved again.

    The message names the source (file, ``scheme://`` address or mapping) and
    the key where there is one. A YAML file read without PyYAML installed is
    one too: its message says to install PyYAML.
    """


class ResourceUnavailable(PyloError):
    """A task's ``wait_for`` probe was not true before its ``wait_timeout`` passed.

    Recorded as the failure of the node (or batch input) that waited; the
    node did not run. Chained (``__cause__``) to the probe's last exception
    when its last poll raised.

    Attributes:
        probe: The probe's qualified name (``module.function``), or its repr.
        timeout: The ``wait_timeout`` in seconds (None: no limit).
        polls: How many times the probe was called.
        last_error: ``"Type: message"`` of the exception the last poll raised,
            or None when it returned a false value.
    """

    def __init__(self, probe: str, timeout: float | None, polls: int, last_error: str | None = None) -> None:
        self.probe = probe
        self.timeout = timeout
        self.polls = polls
        self.last_error = last_error
        last = "it returned a false value" if last_error is None else f"its last poll raised {last_error}"
        super().__init__(
            f"resource not available: probe {probe} was not true within wait_timeout={timeout} s "
            f"({polls} poll(s); {last}); start the resource, fix the probe or raise wait_timeout"
        )

    def __reduce__(self) -> tuple[type[ResourceUnavailable], tuple[str, float | None, int, str | None]]:
        return (ResourceUnavailable, (self.probe, self.timeout, self.polls, self.last_error))
