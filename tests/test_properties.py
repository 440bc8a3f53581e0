"""Property tests: random runs never break rule 1 of the contract."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylo import ExecutionStatus, Pylo
from pylo.stores.base import ChunkRow


def is_subsequence(part: list[int], whole: list[int]) -> bool:
    remaining = iter(whole)
    return all(any(item == other for other in remaining) for item in part)


@pytest.fixture(scope="module", params=["sqlite", "files"])
def store_dir_and_name(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as directory:
        yield directory, str(request.param)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    inputs=st.lists(st.integers(min_value=0, max_value=60), max_size=400),
    failing=st.frozensets(st.integers(min_value=0, max_value=60)),
    workers=st.integers(min_value=1, max_value=4),
    budget=st.integers(min_value=1, max_value=6),
    flush_every=st.integers(min_value=1, max_value=50),
    as_generator=st.booleans(),
)
def test_every_input_is_in_exactly_one_state(
    store_dir_and_name: tuple[str, str],
    inputs: list[int],
    failing: frozenset[int],
    workers: int,
    budget: int,
    flush_every: int,
    as_generator: bool,
) -> None:
    directory, store_name = store_dir_and_name
    pylo = Pylo.local_multithread(
        directory, workers, max_worker_failures=budget, task_executions_before_flush=flush_every, store=store_name
    )

    def task(item: int) -> None:
        if item in failing:
            raise ValueError(item)

    source = (x for x in inputs) if as_generator else inputs
    execution_id = pylo.start_from_scratch(source, task)
    finished, unfinished = pylo.get_state(execution_id)
    record = pylo.get_execution(execution_id)
    failures = pylo.get_failures(execution_id)

    assert Counter(finished) + Counter(unfinished) == Counter(inputs)
    assert is_subsequence(finished, inputs) and is_subsequence(unfinished, inputs)
    assert not set(finished) & failing
    assert all(f.input in failing for f in failures)
    assert [f.position for f in failures] == sorted(f.position for f in failures)
    assert all(inputs[f.position] == f.input for f in failures)
    assert (record.total, record.finished, record.failed) == (len(inputs), len(finished), len(failures))
    assert all(count <= budget for count in Counter(f.worker for f in failures).values())
    if record.status is ExecutionStatus.COMPLETED:
        assert record.pending == 0 and unfinished == [x for x in inputs if x in failing]
    else:
        assert record.status is ExecutionStatus.STOPPED and record.pending > 0

    # Chunk rows: every attempted position in exactly one, by the worker that ran it.
    attempted = covered(pylo.store.read_chunks(execution_id))
    failed_positions = {f.position for f in failures}
    assert sorted(attempted) == sorted(set(attempted))
    assert len(attempted) == record.finished + record.failed
    assert failed_positions <= set(attempted)
    assert all(attempted[f.position] == f.worker for f in failures)

    resumed = pylo.start_from_past_execution(execution_id, lambda item: None)
    assert pylo.get_state(resumed) == (inputs, [])
    # A resume's rows cover what it ran: what the first execution left unfinished.
    finished_before = set(attempted) - failed_positions
    assert set(covered(pylo.store.read_chunks(resumed))) == set(range(len(inputs))) - finished_before
    pylo.close()


def covered(rows: list[ChunkRow]) -> dict[int, int]:
    """The worker of each position the rows cover; the rows must not overlap."""
    workers: dict[int, int] = {}
    for row in rows:
        for position in range(row.first_position, row.last_position + 1):
            assert position not in workers
            workers[position] = row.worker
    return workers
