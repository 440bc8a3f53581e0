"""``execution.json``, the file store's record of one execution: written whole, replaced atomically.

It holds the fields of :class:`~pylo.stores.base.ExecutionRecord` (as
``record_fields`` names them), ``options``, and the ``inputs.log`` and
``outcomes.log`` offsets its counts cover (see :mod:`pylo.stores.files`).
Keys added after format version 1 (``labels``, ``stop_reason`` and
``stop_detail``) are written only when they hold something and read as
empty when absent, so documents of either age read alike. Flush headers of
``outcomes.log`` carry the stop keys the same way (:func:`stop_fields`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pylo.stores._common import counts_problem, record_fields
from pylo.stores.base import ExecutionRecord, ExecutionStatus

__all__ = ["get_field", "record_from_json", "record_to_json", "stop_fields", "stop_of"]


def record_to_json(record: ExecutionRecord, inputs_end: int, outcomes_end: int) -> bytes:
    document: dict[str, Any] = {
        **record_fields(record),
        "options": dict(record.options),
        # Log offsets covered by the counts above (see files.py).
        "inputs_end": inputs_end,
        "outcomes_end": outcomes_end,
    }
    if record.labels:  # absent in stores written before labels
        document["labels"] = dict(record.labels)
    document.update(stop_fields(record))  # absent in stores written before stop reasons
    return json.dumps(document, indent=1).encode()


def stop_fields(record: ExecutionRecord) -> dict[str, str | None]:
    """The record's stop reason and detail as document keys, or none at all when it has none."""
    if record.stop_reason is None:
        return {}
    return {"stop_reason": record.stop_reason, "stop_detail": record.stop_detail}


def stop_of(document: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The stop reason and detail of an ``execution.json`` or a flush header; (None, None) when absent."""
    reason, detail = document.get("stop_reason"), document.get("stop_detail")
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"'stop_reason' is {reason!r}")
    if detail is not None and not isinstance(detail, str):
        raise TypeError(f"'stop_detail' is {detail!r}")
    return reason, detail


def get_field(document: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    """``document[key]``, checked to be of ``kind``; raises TypeError or KeyError when it is not."""
    value = document[key]
    if value is None and optional:
        return None
    # bool is an int to isinstance; a flag is never a count and vice versa.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        raise TypeError(f"{key!r} is {value!r}")
    return value


def _labels(document: Mapping[str, Any]) -> dict[str, str]:
    labels = document.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise TypeError(f"'labels' is {labels!r}")
    return labels


def record_from_json(data: bytes) -> tuple[ExecutionRecord, int, int]:
    """Parse ``execution.json``; raises ValueError, TypeError or KeyError when damaged."""
    document = json.loads(data)
    if not isinstance(document, dict):
        raise TypeError("not a JSON object")
    record = ExecutionRecord(
        id=get_field(document, "id", str),
        parent_id=get_field(document, "parent_id", str, optional=True),
        input_source=get_field(document, "input_source", str),
        status=ExecutionStatus(get_field(document, "status", str)),
        created_at=float(get_field(document, "created_at", (int, float))),
        updated_at=float(get_field(document, "updated_at", (int, float))),
        ended_at=get_field(document, "ended_at", (int, float), optional=True),
        task_name=get_field(document, "task_name", str),
        codec=get_field(document, "codec", str),
        total=get_field(document, "total", int),
        finished=get_field(document, "finished", int),
        failed=get_field(document, "failed", int),
        inputs_complete=get_field(document, "inputs_complete", bool),
        pid=get_field(document, "pid", int, optional=True),
        host=get_field(document, "host", str, optional=True),
        options=get_field(document, "options", dict),
        labels=_labels(document),
    )
    stop_reason, stop_detail = stop_of(document)
    record = dataclasses.replace(record, stop_reason=stop_reason, stop_detail=stop_detail)
    problem = counts_problem(record.total, record.finished, record.failed)
    if problem is not None:
        raise ValueError(problem)
    return record, get_field(document, "inputs_end", int), get_field(document, "outcomes_end", int)
