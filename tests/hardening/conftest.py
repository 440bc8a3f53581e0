"""Hardening tests: pylo under pressure (concurrency, damage, full disks, hostile tasks).

Spawned children import this directory's helpers, ``tasks`` and the worker
suite's ``backends`` by name; putting their directories on ``sys.path``
(which spawned children inherit) makes that work whatever pytest's import
mode is. The ``workers`` fixture (and the Dask cluster behind it) is the
worker suites' own, from ``tests/workers/worker_fixtures.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _directory in (_HERE, _HERE.parent, _HERE.parent / "workers"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))


from worker_fixtures import client, cluster, workers  # noqa: E402 - needs the sys.path set above

__all__ = ["client", "cluster", "workers"]
