"""Fixtures for the ``pylo`` command's tests (helpers live in ``cli_kit``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules import ``cli_kit`` by name, whatever pytest's import mode is.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_kit import Cli, make_cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """A runner in ``tmp_path/work``, which holds ``tasks.py``, ``tasks_fixed.py`` and ``numbers.txt``."""
    return make_cli(tmp_path)
