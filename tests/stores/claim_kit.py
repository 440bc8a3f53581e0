"""Bodies of the processes of the claim contract tests (imported by name when spawned)."""

from __future__ import annotations

import traceback
from typing import Any

from store_kit import WAIT, StoreSpec

from pylo.stores.base import Claim


def race_claim(
    spec: StoreSpec, execution_id: str, claim: Claim, replacing: Claim | None, barrier: Any, results: Any
) -> None:
    """Open the store, wait for the others, then claim (or replace a claim on) the execution."""
    try:
        store = spec.open()
        try:
            barrier.wait(timeout=WAIT)
            current = store.claim_execution(execution_id, claim, replacing=replacing)
            results.put(("won", claim.claimant) if current is None else ("lost", current.claimant))
        finally:
            store.close()
    except BaseException:
        results.put(("error", traceback.format_exc()))
