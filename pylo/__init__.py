"""pylo: run a function over many inputs, keep a durable snapshot, resume after failures.

The public API is what this module exports; see ``Pylo`` to start.
"""

from __future__ import annotations

from pylo.errors import (
    DamagedExecutions,
    ExecutionExists,
    ExecutionInUse,
    ExecutionNotFound,
    ExecutionNotResumable,
    InitializerFailed,
    InputSerializationError,
    PipelineCycleError,
    PipelineExists,
    PipelineFailed,
    PipelineNotFound,
    PipelineValidationError,
    PyloError,
    ResultSerializationError,
    StoredTaskError,
    StoreError,
    TaskTimeout,
    WorkerCrashed,
)
from pylo.execution import Failure, Pylo
from pylo.pipeline._records import NodeFailure, NodeRecord, PipelineRecord, PipelineStatus, TaskState
from pylo.stores._registry import register_store
from pylo.stores.base import ExecutionRecord, ExecutionStatus, Store

__version__ = "0.1.0.dev0"

__all__ = [
    "DamagedExecutions",
    "ExecutionExists",
    "ExecutionInUse",
    "ExecutionNotFound",
    "ExecutionNotResumable",
    "ExecutionRecord",
    "ExecutionStatus",
    "Failure",
    "InitializerFailed",
    "InputSerializationError",
    "NodeFailure",
    "NodeRecord",
    "PipelineCycleError",
    "PipelineExists",
    "PipelineFailed",
    "PipelineNotFound",
    "PipelineRecord",
    "PipelineStatus",
    "PipelineValidationError",
    "Pylo",
    "PyloError",
    "ResultSerializationError",
    "Store",
    "StoreError",
    "StoredTaskError",
    "TaskState",
    "TaskTimeout",
    "WorkerCrashed",
    "__version__",
    "register_store",
]
