"""Pipeline tests: a clean call log for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pipeline_tasks
import pytest


@pytest.fixture(autouse=True)
def clean_calls() -> Iterator[None]:
    pipeline_tasks.reset()
    yield
    pipeline_tasks.reset()
