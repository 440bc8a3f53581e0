"""``python -m pylo``: the same as the ``pylo`` command."""

from __future__ import annotations

import sys

from pylo.cli import main

if __name__ == "__main__":
    sys.exit(main())
