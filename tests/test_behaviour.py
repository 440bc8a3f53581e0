"""Behaviour of executions: each test states one rule of the contract (docs/concepts.md, docs/guarantees.md)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from tasks import (
    Movie,
    NeedsArguments,
    always_fail,
    double,
    fail_on_lane_zero,
    fail_on_multiples_of_seven,
    noop,
    raise_needs_arguments,
    raise_unpicklable,
)

from pylo import (
    ExecutionExists,
    ExecutionNotFound,
    ExecutionStatus,
    InputSerializationError,
    Pylo,
    StoredTaskError,
)

MakePylo = Callable[..., Pylo]


class Recorder:
    """A task that remembers every input it ran (thread-safe)."""

    def __init__(self, fail: Callable[[Any], bool] = lambda item: False) -> None:
        self.calls: list[Any] = []
        self._lock = threading.Lock()
        self._fail = fail

    def __call__(self, item: Any) -> None:
        with self._lock:
            self.calls.append(item)
        if self._fail(item):
            raise ValueError(f"bad {item!r}")


# -- rule 1 and 2: every input in exactly one state, returned in input order --


def test_all_inputs_finish_and_come_back_in_order(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    execution_id = pylo.start_from_scratch(range(5000), noop)
    assert pylo.get_state(execution_id) == (list(range(5000)), [])
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.COMPLETED
    assert (record.total, record.finished, record.failed, record.pending) == (5000, 5000, 0, 0)
    assert record.inputs_complete and record.ended_at is not None and record.parent_id is None


def test_failed_inputs_are_unfinished_in_input_order(make_pylo: MakePylo) -> None:
    pylo = make_pylo(number_of_workers=3)
    inputs = list(range(3000))
    execution_id = pylo.start_from_scratch(inputs, fail_on_multiples_of_seven)
    finished, unfinished = pylo.get_state(execution_id)
    assert unfinished == [x for x in inputs if x % 7 == 0]
    assert finished == [x for x in inputs if x % 7]
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.COMPLETED
    assert record.failed == len(unfinished) and record.pending == 0


def test_each_input_runs_exactly_once_in_one_execution(make_pylo: MakePylo) -> None:
    task = Recorder()
    pylo = make_pylo(number_of_workers=4)
    inputs = [f"item-{i}" for i in range(4000)]
    pylo.start_from_scratch(inputs, task)
    assert Counter(task.calls) == Counter(inputs)


# -- resume (rule 8) --------------------------------------------------------


def test_resume_reruns_only_failures(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    first = Recorder(fail=lambda item: item % 10 == 3)
    past_id = pylo.start_from_scratch(range(500), first)
    failed_before = [x for x in range(500) if x % 10 == 3]
    assert pylo.get_state(past_id)[1] == failed_before

    fixed = Recorder()
    new_id = pylo.start_from_past_execution(past_id, fixed)
    assert new_id != past_id
    assert sorted(fixed.calls) == failed_before
    assert pylo.get_state(new_id) == (list(range(500)), [])
    child = pylo.get_execution(new_id)
    assert child.parent_id == past_id and child.status is ExecutionStatus.COMPLETED
    assert pylo.get_failures(new_id) == [] and pylo.get_exceptions(new_id) == []
    # The past execution is left exactly as it was.
    assert pylo.get_state(past_id)[1] == failed_before
    assert len(pylo.get_failures(past_id)) == len(failed_before)


def test_finished_inputs_are_never_rerun_across_resumes(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    ran: Counter[int] = Counter()
    lock = threading.Lock()
    current = {"round": 0}

    def flaky(item: int) -> None:
        # Round r (0-4) fails the multiples of r + 2; round 5 fails nothing.
        with lock:
            ran[item] += 1
        round_number = current["round"]
        if round_number < 5 and item % (round_number + 2) == 0:
            raise RuntimeError("not yet")

    execution_id = pylo.start_from_scratch(range(300), flaky)
    for round_number in range(1, 6):
        current["round"] = round_number
        execution_id = pylo.start_from_past_execution(execution_id, flaky)
    assert pylo.get_state(execution_id) == (list(range(300)), [])
    # An input runs again only after a failure: once, plus once per failed round in a row.
    for item in range(300):
        failed_rounds = 0
        while failed_rounds < 5 and item % (failed_rounds + 2) == 0:
            failed_rounds += 1
        assert ran[item] == failed_rounds + 1, item


def test_a_resume_can_be_resumed_and_keeps_lineage(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    root = pylo.start_from_scratch(range(50), always_fail)
    child = pylo.start_from_past_execution(root, always_fail)
    grandchild = pylo.start_from_past_execution(child, noop)
    assert pylo.get_execution(grandchild).parent_id == child
    assert pylo.get_execution(child).parent_id == root
    assert pylo.get_state(grandchild) == (list(range(50)), [])
    assert [r.id for r in pylo.list_executions()] == [root, child, grandchild]


# -- budgets (rule 4) -------------------------------------------------------


def test_a_worker_stops_after_max_worker_failures(make_pylo: MakePylo) -> None:
    pylo = make_pylo(number_of_workers=2, max_worker_failures=3)
    execution_id = pylo.start_from_scratch(range(100), always_fail)
    failures = pylo.get_failures(execution_id)
    assert len(failures) == 6
    assert Counter(f.worker for f in failures) == {0: 3, 1: 3}
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED
    assert (record.finished, record.failed, record.pending) == (0, 6, 94)
    assert pylo.get_state(execution_id) == ([], list(range(100)))


def test_a_budget_stops_only_the_worker_that_used_it_up(make_pylo: MakePylo) -> None:
    pylo = make_pylo(number_of_workers=2, max_worker_failures=2)
    execution_id = pylo.start_from_scratch(range(2000), fail_on_lane_zero)
    failures = pylo.get_failures(execution_id)
    assert [f.worker for f in failures] == [0, 0]
    record = pylo.get_execution(execution_id)
    # Worker 1 went on and finished everything but what worker 0 held.
    assert record.failed == 2
    assert record.finished + record.failed + record.pending == 2000
    assert record.finished >= 2000 - 1024
    finished, unfinished = pylo.get_state(execution_id)
    assert sorted(finished + unfinished) == list(range(2000))


def test_max_failures_stops_the_whole_execution(make_pylo: MakePylo) -> None:
    pylo = make_pylo(number_of_workers=2, max_failures=5)
    execution_id = pylo.start_from_scratch(range(10_000), always_fail)
    record = pylo.get_execution(execution_id)
    assert record.status is ExecutionStatus.STOPPED
    # Lanes running when the limit is reached may each finish their input.
    assert 5 <= record.failed <= 5 + 1
    assert record.pending == 10_000 - record.failed


# -- failures and exceptions (rule 5) ---------------------------------------


def test_get_exceptions_returns_objects_by_position(make_pylo: MakePylo) -> None:
    pylo = make_pylo(number_of_workers=3)
    execution_id = pylo.start_from_scratch(range(200), fail_on_multiples_of_seven)
    exceptions = pylo.get_exceptions(execution_id)
    assert [type(e) for e in exceptions] == [ValueError] * 29
    assert [str(e) for e in exceptions] == [f"bad input {x}" for x in range(0, 200, 7)]


def test_get_failures_describes_each_failure(make_pylo: MakePylo) -> None:
    pylo = make_pylo(number_of_workers=2)
    execution_id = pylo.start_from_scratch([Movie(1, "a"), Movie(2, "b")], always_fail)
    failures = pylo.get_failures(execution_id)
    assert [f.input for f in failures] == [Movie(1, "a"), Movie(2, "b")]
    assert [f.position for f in failures] == [0, 1]
    first = failures[0]
    assert first.exception_type == "RuntimeError"
    assert first.message == "always fails: Movie(movie_id=1, title='a', tags=())"
    assert "in always_fail" in (first.traceback or "") and "RuntimeError" in (first.traceback or "")
    assert isinstance(first.exception, RuntimeError)
    assert first.attempts == 1 and first.worker in (0, 1)
    assert first.time.tzinfo is not None


def test_exceptions_that_cannot_be_pickled_come_back_as_stored_errors(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    unpicklable = pylo.start_from_scratch([1], raise_unpicklable)
    needs_args = pylo.start_from_scratch([2], raise_needs_arguments)
    for execution_id, type_name, message in [
        (unpicklable, "tasks.Unpicklable", "cannot pickle me (1)"),
        (needs_args, "tasks.NeedsArguments", "code 7: input 2"),
    ]:
        (exc,) = pylo.get_exceptions(execution_id)
        assert isinstance(exc, StoredTaskError)
        assert (exc.type_name, exc.message) == (type_name, message)
        assert type_name.split(".")[1] in exc.traceback_text
    assert not isinstance(pylo.get_exceptions(needs_args)[0], NeedsArguments)


def test_store_exceptions_false_stores_no_exceptions(make_pylo: MakePylo) -> None:
    pylo = make_pylo(store_exceptions=False)
    execution_id = pylo.start_from_scratch(range(30), fail_on_multiples_of_seven)
    assert pylo.get_exceptions(execution_id) == []
    failures = pylo.get_failures(execution_id)
    assert [f.input for f in failures] == [0, 7, 14, 21, 28]
    assert all(f.exception is None and f.exception_type is None and f.message is None for f in failures)
    assert all(f.traceback is None for f in failures)
    assert pylo.get_state(execution_id)[1] == [0, 7, 14, 21, 28]


def test_retry_policy_finishes_an_input_that_succeeds_after_retries(make_pylo: MakePylo) -> None:
    from tenacity import Retrying, stop_after_attempt

    seen: Counter[int] = Counter()
    lock = threading.Lock()

    def flaky(item: int) -> None:
        with lock:
            seen[item] += 1
            count = seen[item]
        if item == 5 and count < 3:
            raise ConnectionError("try again")
        if item == 9:
            raise ConnectionError("never works")

    pylo = make_pylo(retry=Retrying(stop=stop_after_attempt(4), reraise=True))
    execution_id = pylo.start_from_scratch(range(12), flaky)
    finished, unfinished = pylo.get_state(execution_id)
    assert unfinished == [9] and 5 in finished
    (failure,) = pylo.get_failures(execution_id)
    assert failure.attempts == 4 and failure.exception_type == "ConnectionError"
    assert seen[5] == 3 and seen[9] == 4


# -- inputs (rule 7) --------------------------------------------------------


COMMON_INPUTS: list[Any] = [
    (1, "a"),
    {"id": 3, "tags": ["x", "y"]},
    None,
    b"\x00\xffbytes",
    frozenset({1, 2, 3}),
    Movie(42, "Heat", ("crime",)),
    3.5,
    2**100,
    "unicodé ✓",
    [1, [2, [3]]],
    True,
    (),
]


def test_inputs_of_every_common_type_round_trip(make_pylo: MakePylo) -> None:
    pylo = make_pylo()

    def fail_on_none(item: Any) -> None:
        if item is None or item == 3.5:
            raise ValueError("no")

    execution_id = pylo.start_from_scratch(COMMON_INPUTS, fail_on_none)
    finished, unfinished = pylo.get_state(execution_id)
    assert unfinished == [None, 3.5]
    assert finished == [x for x in COMMON_INPUTS if x is not None and x != 3.5]
    assert [f.input for f in pylo.get_failures(execution_id)] == [None, 3.5]
    resumed = pylo.start_from_past_execution(execution_id, noop)
    assert pylo.get_state(resumed) == (COMMON_INPUTS, [])


def test_generator_inputs_are_recorded_and_resumable(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    task = Recorder(fail=lambda item: item[1] % 100 == 0)
    execution_id = pylo.start_from_scratch(((f"k{i}", i) for i in range(3000)), task)
    finished, unfinished = pylo.get_state(execution_id)
    assert unfinished == [(f"k{i}", i) for i in range(0, 3000, 100)]
    assert len(finished) == 3000 - 30
    assert pylo.get_execution(execution_id).total == 3000


def test_a_long_generator_runs_from_memory_first_then_from_the_store(
    make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its first batches' encoded inputs are kept from recording them, up to a
    # bound; the later ones are read back from the store. Both reach the task.
    from pylo import _plan

    monkeypatch.setattr(_plan, "KEEP_PAYLOAD_BYTES", 3_000)
    pylo = make_pylo(number_of_workers=1)
    task = Recorder()
    execution_id = pylo.start_from_scratch((f"input {n}" for n in range(5000)), task)
    assert task.calls == [f"input {n}" for n in range(5000)]
    assert pylo.get_state(execution_id) == ([f"input {n}" for n in range(5000)], [])


def test_set_inputs_work(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    inputs = {f"s{i}" for i in range(700)}
    execution_id = pylo.start_from_scratch(inputs, noop)
    finished, unfinished = pylo.get_state(execution_id)
    assert set(finished) == inputs and len(finished) == 700 and unfinished == []


def test_empty_inputs_complete_at_once(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    task = Recorder()
    for empty in ([], iter(()), set(), range(0)):
        execution_id = pylo.start_from_scratch(empty, task)
        assert pylo.get_state(execution_id) == ([], [])
        record = pylo.get_execution(execution_id)
        assert record.status is ExecutionStatus.COMPLETED and record.total == 0
        resumed = pylo.start_from_past_execution(execution_id, task)
        assert pylo.get_state(resumed) == ([], [])
    assert task.calls == []


def test_duplicate_inputs_are_separate_positions(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    task = Recorder(fail=lambda item: item == "b")
    execution_id = pylo.start_from_scratch(["a", "b", "a", "b"], task)
    assert pylo.get_state(execution_id) == (["a", "a"], ["b", "b"])
    assert [f.position for f in pylo.get_failures(execution_id)] == [1, 3]


def test_an_input_that_cannot_be_serialized_is_named_by_position(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    task = Recorder()
    inputs = [1, 2, threading.Lock(), 4]
    with pytest.raises(InputSerializationError, match=r"position 2 \(<unlocked _thread.lock object"):
        pylo.start_from_scratch(inputs, task, execution_id="bad-inputs")
    assert task.calls == []
    assert pylo.get_execution("bad-inputs").status is ExecutionStatus.ABORTED


def test_input_objects_reach_the_task_unchanged(make_pylo: MakePylo) -> None:
    pylo = make_pylo(number_of_workers=1)
    inputs = [Movie(i, f"m{i}") for i in range(10)]
    task = Recorder()
    pylo.start_from_scratch(inputs, task)
    assert task.calls == inputs and all(a is b for a, b in zip(task.calls, inputs, strict=True))


# -- results ----------------------------------------------------------------


def test_store_results_keeps_return_values_across_resumes(make_pylo: MakePylo) -> None:
    pylo = make_pylo(store_results=True)
    past_id = pylo.start_from_scratch(range(20), lambda x: 1 / (x % 5))
    assert pylo.get_results(past_id) == [(x, 1 / (x % 5)) for x in range(20) if x % 5]
    new_id = pylo.start_from_past_execution(past_id, double)
    assert pylo.get_results(new_id) == [(x, 1 / (x % 5) if x % 5 else x * 2) for x in range(20)]


def test_results_are_not_kept_by_default(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    execution_id = pylo.start_from_scratch(range(5), double)
    assert pylo.get_results(execution_id) == []


# -- ids (rule 10) and sharing a store (rule 9) -----------------------------


def test_user_chosen_ids(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    assert pylo.start_from_scratch([1, 2], noop, execution_id="nightly-2026.11.22") == "nightly-2026.11.22"
    assert pylo.start_from_past_execution("nightly-2026.11.22", noop, execution_id="retry_1") == "retry_1"
    assert [r.id for r in pylo.list_executions()] == ["nightly-2026.11.22", "retry_1"]


def test_a_duplicate_id_is_refused_and_leaves_the_execution_alone(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    pylo.start_from_scratch([1, 2, 3], fail_on_multiples_of_seven, execution_id="run")
    task = Recorder()
    with pytest.raises(ExecutionExists, match="'run' already exists"):
        pylo.start_from_scratch([4, 5], task, execution_id="run")
    with pytest.raises(ExecutionExists):
        pylo.start_from_past_execution("run", task, execution_id="run")
    assert task.calls == []
    assert pylo.get_state("run") == ([1, 2, 3], [])
    assert pylo.get_execution("run").status is ExecutionStatus.COMPLETED


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.get_state("nope"),
        lambda p: p.get_exceptions("nope"),
        lambda p: p.get_failures("nope"),
        lambda p: p.get_results("nope"),
        lambda p: p.get_execution("nope"),
        lambda p: p.start_from_past_execution("nope", noop),
    ],
    ids=["get_state", "get_exceptions", "get_failures", "get_results", "get_execution", "resume"],
)
def test_unknown_ids_raise_execution_not_found(make_pylo: MakePylo, call: Callable[[Pylo], Any]) -> None:
    pylo = make_pylo()
    with pytest.raises(ExecutionNotFound, match="no execution with id 'nope'") as info:
        call(pylo)
    assert info.value.execution_id == "nope"


def test_a_second_pylo_on_the_same_directory_sees_the_same_executions(make_pylo: MakePylo) -> None:
    first = make_pylo()
    execution_id = first.start_from_scratch(range(100), fail_on_multiples_of_seven)
    second = make_pylo(number_of_workers=5)
    assert [r.id for r in second.list_executions()] == [execution_id]
    assert second.get_state(execution_id) == first.get_state(execution_id)
    resumed = second.start_from_past_execution(execution_id, noop)
    assert first.get_state(resumed) == (list(range(100)), [])


def test_list_executions_oldest_first_with_counts(make_pylo: MakePylo) -> None:
    pylo = make_pylo()
    ids = [pylo.start_from_scratch(range(n), fail_on_multiples_of_seven) for n in (10, 20, 30)]
    records = pylo.list_executions()
    assert [r.id for r in records] == ids
    counts = [(r.total, r.finished, r.failed, r.pending) for r in records]
    assert counts == [(10, 8, 2, 0), (20, 17, 3, 0), (30, 25, 5, 0)]
    assert all(r.task_name == "tasks:fail_on_multiples_of_seven" for r in records)
    assert all(r.created <= r.ended for r in records if r.ended is not None)


# -- flushing (rule 6) ------------------------------------------------------


def test_outcomes_are_flushed_every_n_outcomes(make_pylo: MakePylo, store_dir: Any) -> None:
    pylo = make_pylo(number_of_workers=1, task_executions_before_flush=1)
    reader = make_pylo()
    seen: list[int] = []

    def check(item: int) -> None:
        (record,) = reader.list_executions()
        seen.append(record.finished)

    pylo.start_from_scratch(range(40), check)
    # With a flush per outcome, the store trails the task by at most the
    # chunks a lane has queued (one running, one prefetched).
    assert all(seen[i] >= i - 2 for i in range(40)), seen


def test_the_default_flush_interval_is_one_stored_batch(make_pylo: MakePylo) -> None:
    # A chunk never holds more outcomes than a flush, nor spans two batches:
    # a smaller default (it was 1,000) cut every batch into two chunks.
    from pylo._plan import MAX_BATCH

    pylo = make_pylo(number_of_workers=1)
    execution_id = pylo.start_from_scratch(range(3), noop)
    assert pylo.get_execution(execution_id).options["task_executions_before_flush"] == MAX_BATCH == 1024


def test_outcomes_are_flushed_every_flush_seconds(make_pylo: MakePylo) -> None:
    pylo = make_pylo(number_of_workers=1, task_executions_before_flush=10**6, flush_seconds=0.05)
    reader = make_pylo()
    observed = threading.Event()

    def wait_for_flush(item: int) -> None:
        if item == 60:
            # Inputs 0..59 must become durable by time alone; poll with a deadline.
            import time

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if reader.list_executions()[0].finished >= 50:
                    observed.set()
                    return
                time.sleep(0.01)

    pylo.start_from_scratch(range(100), wait_for_flush)
    assert observed.is_set()


# -- interruption (rule 3) --------------------------------------------------


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_saves_outcomes_and_can_be_resumed(make_pylo: MakePylo, interrupt: type[BaseException]) -> None:
    pylo = make_pylo(number_of_workers=2)

    def task(item: int) -> None:
        if item == 1500:
            raise interrupt()

    with pytest.raises(interrupt):
        pylo.start_from_scratch(range(3000), task, execution_id="cut")
    record = pylo.get_execution("cut")
    assert record.status is ExecutionStatus.INTERRUPTED
    finished, unfinished = pylo.get_state("cut")
    assert 1500 in unfinished and len(finished) + len(unfinished) == 3000
    assert record.finished == len(finished) and record.finished > 0
    rerun = Recorder()
    resumed = pylo.start_from_past_execution("cut", rerun)
    assert sorted(rerun.calls) == unfinished
    assert pylo.get_state(resumed) == (list(range(3000)), [])


# -- the json codec ---------------------------------------------------------


def test_json_codec_stores_json_values_and_never_pickles(make_pylo: MakePylo, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    pylo = make_pylo(codec="json", store_results=True)
    inputs: list[Any] = [{"id": 1, "tags": ["a"]}, "text", 3, 4.5, None, [1, [2]], True]

    def task(item: Any) -> Any:
        if item == 3:
            raise KeyError("no such record")
        return {"echo": item}

    execution_id = pylo.start_from_scratch(inputs, task)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a json store must never be unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    reader = make_pylo(codec="json")
    assert reader.get_state(execution_id) == ([x for x in inputs if x != 3], [3])
    assert reader.get_results(execution_id) == [(x, {"echo": x}) for x in inputs if x != 3]
    (exc,) = reader.get_exceptions(execution_id)
    assert isinstance(exc, StoredTaskError) and exc.type_name == "KeyError" and "no such record" in exc.message
    assert reader.get_execution(execution_id).codec == "json"
    resumed = reader.start_from_past_execution(execution_id, noop)
    assert reader.get_state(resumed) == (inputs, [])


@pytest.mark.parametrize(
    ("bad", "reason"),
    [((1, 2), "a tuple would come back from JSON as a list"), ({1: "a"}, "dict keys become strings")],
)
def test_json_codec_refuses_what_would_not_come_back_equal(make_pylo: MakePylo, bad: Any, reason: str) -> None:
    pylo = make_pylo(codec="json")
    with pytest.raises(InputSerializationError, match=f"position 1 .*{reason}"):
        pylo.start_from_scratch(["ok", bad], noop)


def test_unknown_codec_is_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="unknown codec 'yaml'; valid codecs: 'json', 'pickle'"):
        Pylo.local_multithread(tmp_path / "store", 2, codec="yaml")
    assert not (tmp_path / "store").exists()
