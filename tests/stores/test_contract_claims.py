"""The claim contract: one resume of an execution at a time, on every store kind."""

from __future__ import annotations

import multiprocessing

import pytest
from claim_kit import race_claim
from store_kit import WAIT, StoreFactory, make_record

from pylo.errors import ExecutionNotFound
from pylo.stores.base import Claim, Store

SPAWN = multiprocessing.get_context("spawn")


def claim(claimant: str, pid: int = 100, host: str = "here") -> Claim:
    return Claim("past", claimant, pid, host, 1_700_000_000.5)


def test_the_first_claim_wins_and_the_next_is_told_who_holds_it(store: Store) -> None:
    store.create_execution(make_record("past"))
    assert store.claim_execution("past", claim("first")) is None
    assert store.claim_execution("past", claim("second", pid=200)) == claim("first")
    # A claim is not re-entrant: the same claimant is told it holds it.
    assert store.claim_execution("past", claim("first")) == claim("first")


def test_a_claim_is_replaced_only_when_its_holder_is_the_one_named(store: Store) -> None:
    store.create_execution(make_record("past"))
    store.claim_execution("past", claim("stale"))
    assert store.claim_execution("past", claim("new"), replacing=claim("someone-else")) == claim("stale")
    assert store.claim_execution("past", claim("new"), replacing=claim("stale", pid=999)) == claim("stale")
    assert store.claim_execution("past", claim("new"), replacing=claim("stale")) is None
    assert store.claim_execution("past", claim("late"), replacing=claim("stale")) == claim("new")


def test_only_the_holder_releases_a_claim(store: Store) -> None:
    store.create_execution(make_record("past"))
    store.release_claim("past", "nobody")  # no claim: nothing to do
    store.claim_execution("past", claim("holder"))
    store.release_claim("past", "other")
    assert store.claim_execution("past", claim("next")) == claim("holder")
    store.release_claim("past", "holder")
    assert store.claim_execution("past", claim("next")) is None


def test_claims_are_per_execution_and_survive_reopening(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.create_execution(make_record("past"))
    store.create_execution(make_record("other"))
    assert store.claim_execution("past", claim("a")) is None
    assert store.claim_execution("other", Claim("other", "b", 1, "here", 1.0)) is None
    assert store_factory().claim_execution("past", claim("c")) == claim("a")


def test_claiming_an_unknown_execution_raises_execution_not_found(store: Store) -> None:
    with pytest.raises(ExecutionNotFound):
        store.claim_execution("past", claim("a"))


@pytest.mark.parametrize("replace", [False, True], ids=["claim", "replace-stale"])
def test_processes_claiming_at_once_have_exactly_one_winner(store_factory: StoreFactory, replace: bool) -> None:
    store = store_factory()
    store.create_execution(make_record("past"))
    stale = claim("stale")
    if replace:
        store.claim_execution("past", stale)
    count = 4
    barrier = SPAWN.Barrier(count)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=race_claim,
            args=(store_factory.spec, "past", claim(f"p{n}", pid=n), stale if replace else None, barrier, results),
        )
        for n in range(count)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=WAIT) for _ in processes]
    for process in processes:
        process.join(timeout=WAIT)
    assert not [outcome for outcome in outcomes if outcome[0] == "error"], outcomes
    winners = [name for verdict, name in outcomes if verdict == "won"]
    assert len(winners) == 1, outcomes
    assert {name for verdict, name in outcomes if verdict == "lost"} == set(winners)
