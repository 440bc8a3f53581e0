"""Whether the process behind a running execution, run or claim is known to be dead.

One rule serves executions, pipeline runs and resume claims: a process on
another machine cannot be checked, so it is presumed alive; a process on
this machine is dead when signal 0 finds no such pid; and when the pid is
this very process, only the caller knows whether the work is still going.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

__all__ = ["pid_is_gone"]


def pid_is_gone(pid: int | None, host: str | None, *, running_here: Callable[[], bool]) -> bool:
    """True when process ``pid`` on ``host`` is known to have ended.

    Args:
        pid: The process id recorded by the work's owner (None: unknown, presumed alive).
        host: The host name recorded with it.
        running_here: Called only when ``pid`` is this process: whether the
            work is still running in it (a pid is reused by a later run in
            the same process, so the pid alone does not say).
    """
    if pid is None or host != socket.gethostname():
        return False  # unknown, or another machine: we cannot tell
    if pid == os.getpid():
        return not running_here()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False
