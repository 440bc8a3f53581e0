"""Hardening tests: pylo under pressure (concurrency, damage, full disks, hostile tasks).

Spawned children import this directory's helpers, ``tasks`` and the worker
suite's ``backends`` by name; putting their directories on ``sys.path``
(which spawned children inherit) makes that work whatever pytest's import
mode is. The ``workers`` fixture is the worker contract suite's own, loaded
from its conftest so both suites build backends the same way.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _directory in (_HERE, _HERE.parent, _HERE.parent / "workers"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))


def _load_workers_fixture() -> object:
    spec = importlib.util.spec_from_file_location(
        "_hardening_workers_conftest", _HERE.parent / "workers" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.workers


workers = _load_workers_fixture()
