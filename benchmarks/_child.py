"""A measurement in a fresh interpreter: the benchmark runs itself with ``--child``, and prints one JSON line.

Each side of a comparison starts from the same state (no imports, caches or
threads left by the other side), so neither pays for nor profits from what
ran before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_child(script: str, *args: str) -> Any:
    """Run ``python script --child args...`` from the project's root; the JSON of its last line of output."""
    output = subprocess.run(
        [sys.executable, script, "--child", *args], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    return json.loads(output.strip().splitlines()[-1])
