"""One resume of an execution at a time: the claim a resume holds while it runs.

Two processes resuming the same execution (an overlapping cron job) would
both rerun every unfinished input. Before a resume creates anything it
claims the past execution in the store, atomically
(:meth:`~pylo.stores.base.Store.claim_execution`); a second resume is
refused with an error naming the first. A claim outlives a crash, so a
claim whose holder is gone is stale and may be taken over: its resume has
ended, or its process on this host is dead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from pylo._liveness import pid_is_gone
from pylo.errors import ExecutionNotFound, ExecutionNotResumable, PyloError, StoreError
from pylo.stores.base import Claim, ExecutionStatus, Store

__all__ = ["hold_claim", "resume_claim"]

logger = logging.getLogger(__name__)

# (claimed execution, claimant) of the claims this process holds: a claim
# with our pid is live only if it is one of them (pids are reused).
_HELD_HERE: set[tuple[str, str]] = set()
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def resume_claim(store: Store, execution_id: str, claimant: str) -> Iterator[None]:
    """Hold the claim on ``execution_id`` for the resume ``claimant`` while the block runs.

    Raises:
        ExecutionNotResumable: Another resume, still alive, holds the claim;
            the message names it.
        ExecutionNotFound: No such execution.
        StoreError: The store cannot be written.
    """
    with hold_claim(store, execution_id, claimant, _resume_refused) as held:
        if not held:
            logger.warning(
                "%s cannot refuse a second resume of execution %s: make sure only one runs", store, execution_id
            )
        yield


def _resume_refused(current: Claim) -> PyloError:
    since = dt.datetime.fromtimestamp(current.claimed_at).strftime("%Y-%m-%d %H:%M:%S")
    return ExecutionNotResumable(
        f"execution {current.execution_id!r} is already being resumed by execution {current.claimant!r} "
        f"(process {current.pid} on {current.host}, since {since}); wait for it to end, then resume "
        f"{current.claimant!r} if it leaves inputs unfinished"
    )


@contextlib.contextmanager
def hold_claim(store: Store, execution_id: str, claimant: str, refused: Callable[[Claim], PyloError]) -> Iterator[bool]:
    """Hold the claim on ``execution_id`` for ``claimant`` while the block runs.

    A resume holds it while it runs; a delete holds it while it deletes, so
    that neither starts while the other is under way. A claim whose holder
    is gone is taken over.

    Yields:
        True when the claim is held, False when the store keeps no claims.

    Raises:
        PyloError: ``refused(current)`` when a holder still alive has it.
        ExecutionNotFound: No such execution.
        StoreError: The store cannot be written.
    """
    claim = Claim(execution_id, claimant, os.getpid(), socket.gethostname(), time.time())
    key = (execution_id, claimant)
    with _HELD_LOCK:
        _HELD_HERE.add(key)
    try:
        if _take(store, claim, refused):
            try:
                yield True
            finally:
                _release(store, execution_id, claimant)
        else:
            yield False
    finally:
        with _HELD_LOCK:
            _HELD_HERE.discard(key)


def _take(store: Store, claim: Claim, refused: Callable[[Claim], PyloError]) -> bool:
    """Take the claim; False when the store keeps no claims."""
    try:
        current = store.claim_execution(claim.execution_id, claim)
    except NotImplementedError:
        return False
    if current is not None and _is_stale(store, current):
        logger.info(
            "taking over the claim on execution %s from %s (process %d on %s), which is gone",
            claim.execution_id,
            current.claimant,
            current.pid,
            current.host,
        )
        current = store.claim_execution(claim.execution_id, claim, replacing=current)
    if current is not None:
        raise refused(current)
    return True


def _is_stale(store: Store, claim: Claim) -> bool:
    """True when the claim's resume is known to be over: it ended, or its process is dead."""
    try:
        record = store.get_execution(claim.claimant)
    except ExecutionNotFound:
        record = None  # it died before creating its execution, or is creating it now
    if record is not None and record.status is not ExecutionStatus.RUNNING:
        return True

    def held_here() -> bool:
        with _HELD_LOCK:
            return (claim.execution_id, claim.claimant) in _HELD_HERE

    return pid_is_gone(claim.pid, claim.host, running_here=held_here)


def _release(store: Store, execution_id: str, claimant: str) -> None:
    try:
        store.release_claim(execution_id, claimant)
    except StoreError:
        # A full disk, say. The claim is stale anyway once our execution has
        # ended or our process is gone; the next resume takes it over.
        logger.warning("could not release the claim on execution %s", execution_id, exc_info=True)
