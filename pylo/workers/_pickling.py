"""Pickling for worker processes: plain pickle first, cloudpickle where it fails.

Plain pickle is the fast path and sends module-level functions and classes by
reference. It cannot send lambdas, closures or functions defined in an
interactive session; cloudpickle sends those by value. Its output loads with
plain :func:`pickle.loads` wherever cloudpickle is installed.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

__all__ = ["dumps", "loads"]

_PROTOCOL = pickle.HIGHEST_PROTOCOL

loads = pickle.loads


def _interactive() -> bool:
    """True when ``__main__`` is a REPL, a notebook or ``python -c``.

    Its functions pickle by reference as ``__main__.name``, which a worker
    started with spawn or forkserver cannot look up: only by value will do.
    """
    return not hasattr(sys.modules.get("__main__"), "__file__")


def dumps(value: Any) -> bytes:
    """Pickle ``value`` to send it to another process.

    Raises:
        TypeError: Neither pickle nor cloudpickle can pickle it; the message
            says why.
    """
    if not _interactive():
        try:
            return pickle.dumps(value, protocol=_PROTOCOL)
        except Exception:
            pass  # cloudpickle may manage (lambdas, closures), and its reason is the one to give
    try:
        import cloudpickle
    except ImportError:  # a broken install: plain pickle is all there is
        try:
            return pickle.dumps(value, protocol=_PROTOCOL)
        except Exception as exc:
            raise TypeError(f"{_reason(exc)} (cloudpickle, which sends lambdas and closures, is missing)") from exc
    try:
        return cloudpickle.dumps(value, protocol=_PROTOCOL)
    except Exception as exc:
        raise TypeError(_reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
