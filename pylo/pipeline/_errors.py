"""Errors of the pipeline layer that are not in :mod:`pylo.errors` (yet).

They live here so this layer's branch does not edit the shared errors module
while others do; the lead may move them to :mod:`pylo.errors` at merge.
"""

from __future__ import annotations

from pylo.errors import PyloError

__all__ = ["BatchFailed", "PipelineCancelled", "PipelineControlError", "PipelineNotCompleted", "PipelineNotResumable"]


class BatchFailed(PyloError):
    """The failure of a batch node: some inputs of its execution did not finish.

    ``Pylo.get_failures(execution_id)`` lists them; a resume of the run runs
    only those inputs again.

    Attributes:
        execution_id: The batch node's execution.
        failed: Inputs that failed.
        pending: Inputs never attempted (a worker's failure budget ran out).
        total: All inputs.
    """

    def __init__(self, execution_id: str, failed: int, pending: int, total: int) -> None:
        super().__init__(
            f"{failed + pending} of {total} inputs did not finish in execution {execution_id!r} "
            f"({failed} failed, {pending} not attempted); see Pylo.get_failures({execution_id!r}), "
            "fix the task and resume the run to rerun only those inputs"
        )
        self.execution_id = execution_id
        self.failed = failed
        self.pending = pending
        self.total = total

    def __reduce__(self) -> tuple[type[BatchFailed], tuple[str, int, int, int]]:
        return (BatchFailed, (self.execution_id, self.failed, self.pending, self.total))


class PipelineNotCompleted(PyloError):
    """``get_pipeline_result`` on a run that has no result: it neither completed nor failed.

    Attributes:
        run_id: The run.
        status: Its status (``running``, ``interrupted``, ``crashed``...).
    """

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(
            f"pipeline run {run_id!r} has no result: it is {status}; resume it with resume_pipeline to finish it"
        )
        self.run_id = run_id
        self.status = status

    def __reduce__(self) -> tuple[type[PipelineNotCompleted], tuple[str, str]]:
        return (PipelineNotCompleted, (self.run_id, self.status))


class PipelineNotResumable(PyloError):
    """The run cannot be resumed now (it is still running in a live process on this machine)."""


class PipelineCancelled(PyloError):
    """``get_pipeline_result`` on a cancelled run.

    Attributes:
        run_id: The run.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(f"pipeline run {run_id!r} was cancelled: it has no result")
        self.run_id = run_id

    def __reduce__(self) -> tuple[type[PipelineCancelled], tuple[str]]:
        return (PipelineCancelled, (self.run_id,))


class PipelineControlError(PyloError, ValueError):
    """A pause, unpause or cancel the run's status does not allow (it ended, or is not paused).

    Attributes:
        run_id: The run.
        action: ``"pause"``, ``"unpause"`` or ``"cancel"``.
        status: The run's status.
    """

    def __init__(self, run_id: str, action: str, status: str, detail: str | None = None) -> None:
        allowed = "paused" if action == "unpause" else "running or paused"
        super().__init__(
            detail or f"cannot {action} pipeline run {run_id!r}: it is {status}, and only a {allowed} run can be"
        )
        self.run_id = run_id
        self.action = action
        self.status = status
        #: Set when the run's status allows the action but something is missing (a pipeline to run finally_do).
        self.detail = detail

    def __reduce__(self) -> tuple[type[PipelineControlError], tuple[str, str, str, str | None]]:
        return (PipelineControlError, (self.run_id, self.action, self.status, self.detail))
