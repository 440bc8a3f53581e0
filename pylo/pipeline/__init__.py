"""Pipelines: durable graphs of task calls that resume task by task, and input by input.

The records and errors below are what users read about runs; the builder
(``task``, ``in_parallel``) and the coordinator live in this package's
private modules.
"""

from __future__ import annotations

from pylo.errors import (
    PipelineCycleError,
    PipelineExists,
    PipelineFailed,
    PipelineNotFound,
    PipelineValidationError,
)
from pylo.pipeline._builder import Pipeline, in_parallel
from pylo.pipeline._errors import BatchFailed, PipelineNotCompleted, PipelineNotResumable
from pylo.pipeline._records import NodeFailure, NodeRecord, PipelineRecord, PipelineStatus, TaskState
from pylo.pipeline._task import Task, TaskOptions, task

__all__ = [
    "BatchFailed",
    "NodeFailure",
    "NodeRecord",
    "PipelineCycleError",
    "PipelineExists",
    "PipelineFailed",
    "Pipeline",
    "PipelineNotCompleted",
    "PipelineNotFound",
    "PipelineNotResumable",
    "PipelineRecord",
    "PipelineStatus",
    "PipelineValidationError",
    "Task",
    "TaskOptions",
    "TaskState",
    "in_parallel",
    "task",
]
