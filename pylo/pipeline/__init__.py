"""Pipelines: durable graphs of task calls that resume task by task, and input by input.

The records and errors below are what users read about runs; the builder
(``task``, ``in_parallel``) and the coordinator live in this package's
private modules. A task's environment (its context, the run's
configuration and how it is loaded) is here too.
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
from pylo.pipeline._config import ResolvedConfig, Secret, load_config
from pylo.pipeline._config_loaders import register_config_loader
from pylo.pipeline._context import FrozenConfig, TaskContext
from pylo.pipeline._records import NodeFailure, NodeRecord, PipelineRecord, PipelineStatus, TaskState

__all__ = [
    "ConfigError",
    "FrozenConfig",
    "NodeFailure",
    "NodeRecord",
    "PipelineCycleError",
    "PipelineExists",
    "PipelineFailed",
    "PipelineNotFound",
    "PipelineRecord",
    "PipelineStatus",
    "PipelineValidationError",
    "ResolvedConfig",
    "ResourceUnavailable",
    "Secret",
    "TaskContext",
    "TaskState",
    "load_config",
    "register_config_loader",
]
