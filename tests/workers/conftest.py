"""The worker suites run over every backend through the shared fixtures."""

from __future__ import annotations

from worker_fixtures import client, cluster, workers

__all__ = ["client", "cluster", "workers"]
