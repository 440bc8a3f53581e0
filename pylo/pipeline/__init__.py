"""Pipelines: durable graphs of task calls that resume task by task, and input by input.

Example:
    >>> from pylo.pipeline import task, in_parallel
    >>> @task
    ... def multiply(x, y):
    ...     return x * y
    >>> @task
    ... def total(values):
    ...     return sum(values)
    >>> flow = total.send(in_parallel([multiply.send(1, 2), multiply.send(3, 4)]))
    >>> run_id = pylo.run_pipeline(flow)  # doctest: +SKIP
    >>> pylo.get_pipeline_result(run_id)  # doctest: +SKIP
    14

Building (``task``, ``Pipeline``, ``in_parallel``) is pure description;
``Pylo.run_pipeline`` flattens a pipeline into a graph (stable order, node
keys, cycle check), records the run and its nodes, and runs it with one
coordinator that is the run's only writer. The records and errors below are
what users read about runs. A task's environment (its context, the run's configuration and how it is
loaded) is here too.
"""

from __future__ import annotations

from pylo.errors import (
    ConfigError,
    PipelineCycleError,
    PipelineExists,
    PipelineFailed,
    PipelineNotFound,
    PipelineValidationError,
    ResourceUnavailable,
)
from pylo.pipeline._builder import Pipeline, in_parallel
from pylo.pipeline._config import ResolvedConfig, Secret, load_config
from pylo.pipeline._config_loaders import register_config_loader
from pylo.pipeline._context import FrozenConfig, TaskContext
from pylo.pipeline._errors import BatchFailed, PipelineNotCompleted, PipelineNotResumable
from pylo.pipeline._outcomes import GroupFailed
from pylo.pipeline._records import NodeFailure, NodeRecord, PipelineRecord, PipelineStatus, TaskState
from pylo.pipeline._task import Task, TaskOptions, task

__all__ = [
    "BatchFailed",
    "ConfigError",
    "FrozenConfig",
    "GroupFailed",
    "NodeFailure",
    "NodeRecord",
    "Pipeline",
    "PipelineCycleError",
    "PipelineExists",
    "PipelineFailed",
    "PipelineNotCompleted",
    "PipelineNotFound",
    "PipelineNotResumable",
    "PipelineRecord",
    "PipelineStatus",
    "PipelineValidationError",
    "ResolvedConfig",
    "ResourceUnavailable",
    "Secret",
    "Task",
    "TaskContext",
    "TaskOptions",
    "TaskState",
    "in_parallel",
    "load_config",
    "register_config_loader",
    "task",
]
