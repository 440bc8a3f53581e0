"""How the worker contract suite builds a Pylo on each backend."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contract_tasks import Async

from pylo import Pylo

BACKENDS = ["threads", "processes-spawn", "processes-fork", "asyncio", "dask"]
MODULES = {
    "threads": "pylo.workers.threads",
    "processes": "pylo.workers.processes",
    "asyncio": "pylo.workers.aio",
    "dask": "pylo.workers.dask",
}


@dataclass
class Workers:
    """How to build a Pylo on one backend, and adapt tasks and retry policies to it."""

    name: str
    make: Callable[..., Pylo]

    @property
    def is_async(self) -> bool:
        return self.name == "asyncio"

    def task(self, function: Callable[..., Any], *args: Any) -> Callable[[Any], Any]:
        """A module-level function, with leading arguments bound, in this backend's flavour."""
        bound = functools.partial(function, *args) if args else function
        return Async(bound) if self.is_async else bound

    def retrying(self, **kwargs: Any) -> Any:
        from tenacity import AsyncRetrying, Retrying

        return AsyncRetrying(**kwargs) if self.is_async else Retrying(**kwargs)
