"""Module-level initializers and tasks for the per-worker setup tests.

``set_up`` plays "open a connection": it makes a token naming the worker it
ran in, logs it, and keeps it where that worker's tasks find it: a
``ContextVar`` (the lane's own on threads, processes and asyncio) and, for
Dask, where tasks of one process may run in fresh contexts, a module global.
``uses_setup`` logs the token its worker set up, or fails when there is none.
"""

from __future__ import annotations

import contextvars
import os
import threading
import uuid
from typing import Any

from tasks import log_call

_TOKEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("init_tasks_token", default=None)
_PROCESS: dict[str, str] = {}


def set_up(log: str, tag: str) -> None:
    token = f"{tag}-{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
    log_call(log, token)
    _TOKEN.set(token)
    _PROCESS["token"] = token


async def set_up_async(log: str, tag: str) -> None:
    set_up(log, tag)


def refuse(host: str) -> None:
    raise ConnectionRefusedError(f"cannot reach {host}")


def token() -> str | None:
    """The token of the worker this runs in."""
    return _TOKEN.get() or _PROCESS.get("token")


def uses_setup(log: str, item: Any) -> None:
    seen = token()
    if seen is None:
        raise RuntimeError("this worker was not set up")
    log_call(log, seen)


def crash_at(target: int, log: str, item: int) -> None:
    """Log the worker's token; kill the worker process at ``target`` (the first time)."""
    uses_setup(log, item)
    marker = f"{log}.crashed"
    if item == target and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
