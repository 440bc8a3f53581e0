"""``pylo pipeline run/resume --config PATH``: the run's configuration from the shell, the real command."""

from __future__ import annotations

import json

import pytest
from cli_kit import Cli

FLOWS = """
import json
import os

from pylo.pipeline import task


@task(with_context=True)
def settings(ctx):
    with open("seen.log", "a", encoding="utf-8") as file:
        file.write(json.dumps(ctx.config.to_dict(), sort_keys=True) + "\\n")
    if os.path.exists("broken.flag"):
        raise RuntimeError("broken")
    return "ok"


flow = settings.send()
"""


@pytest.fixture
def flows(cli: Cli) -> Cli:
    cli.write("envflows.py", FLOWS)
    cli.write("base.json", json.dumps({"api": {"url": "https://a.test", "page_size": 50}}))
    cli.write("prod.toml", '[api]\nurl = "https://prod.test"\n')
    return cli


def seen(cli: Cli) -> list[dict]:
    return [json.loads(line) for line in (cli.cwd / "seen.log").read_text(encoding="utf-8").splitlines()]


def test_config_files_merge_in_order_and_a_resume_keeps_the_runs_own(flows: Cli) -> None:
    flows.write("broken.flag", "")
    first = flows(
        "pipeline", "run", "envflows:flow", "--run-id", "c-1", "--config", "base.json", "--config", "prod.toml"
    )
    assert first.returncode == 1, first.stdout + first.stderr
    merged = {"api": {"url": "https://prod.test", "page_size": 50}}
    assert seen(flows) == [merged]

    (flows.cwd / "broken.flag").unlink()
    flows.write("other.json", json.dumps({"api": {"url": "https://other.test", "page_size": 50}}))
    resumed = flows("pipeline", "resume", "c-1", "envflows:flow", "--run-id", "c-2", "--config", "other.json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert seen(flows) == [merged, merged]  # the run's own configuration, not other.json
    assert "the configuration changed since run c-1" in resumed.stderr
    assert "api.url: was 'https://prod.test', now 'https://other.test'" in resumed.stderr


def test_a_config_file_that_cannot_load_is_a_usage_error_and_nothing_runs(flows: Cli) -> None:
    completed = flows("pipeline", "run", "envflows:flow", "--config", "missing.yaml")
    assert completed.returncode == 2
    assert completed.stderr.startswith("pylo: error: ") and "missing.yaml" in completed.stderr
    assert not (flows.cwd / "seen.log").exists()
