"""A stateful property test of the contract in docs/guarantees.md: start, crash, resume and inspect, in any order.

Hypothesis drives random sequences of

* **start**: a fresh execution of random inputs, failure pattern and budget;
* **crash**: a fresh execution, or a resume of any execution, run in a child
  process that is SIGKILLed after a random number of task calls;
* **resume**: any execution, in this process;
* **inspect**: every execution, checked against what really ran.

Every task call is logged (O_APPEND, before the task returns), so the test
knows what ran even in a process that was killed. After each step:

1. every input of every execution is exactly once in ``(finished,
   unfinished)``, each list in input order;
2. finished inputs really ran and did not fail (or were inherited finished);
   failure records name inputs that ran and failed;
3. a resume never reruns an input its parent had finished, and leaves the
   parent exactly as it was;
4. ``list_executions`` lists exactly the executions made, with lineage and
   counts that agree with ``get_state``.
"""

from __future__ import annotations

import functools
import multiprocessing
import shutil
import signal
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from contract_tasks import calls
from hardening_tasks import fail_some, run_and_die
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from pylo import ExecutionStatus, Pylo


@dataclass
class _Execution:
    """What the test knows about one execution, independently of the store."""

    inputs: list[int]
    log: str
    fail_every: int
    parent: str | None = None
    # The parent's finished inputs when this execution was created from it.
    inherited: set[int] = field(default_factory=set)

    def ran(self) -> Counter[int]:
        return Counter(int(line) for line in calls(self.log))

    def fails(self, item: int) -> bool:
        return bool(self.fail_every) and item % self.fail_every == 0


class _Contract(RuleBasedStateMachine):
    store_name = "sqlite"
    executions = Bundle("executions")

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="pylo-stateful-"))
        self.store_dir = str(self.root / "store")
        self.model: dict[str, _Execution] = {}

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------

    def _pylo(self, budget: int = 1000) -> Pylo:
        return Pylo.local_multithread(
            self.store_dir,
            2,
            max_worker_failures=budget,
            task_executions_before_flush=3,
            store=self.store_name,
            flush_seconds=0.02,
            progress=False,
        )

    def _new(self, inputs: list[int], fail_every: int, parent: str | None = None) -> tuple[str, _Execution]:
        execution_id = f"x{len(self.model)}"
        inherited: set[int] = set()
        if parent is not None:
            with self._pylo() as pylo:
                inherited = set(pylo.get_state(parent)[0])
        execution = _Execution(inputs, str(self.root / f"{execution_id}.log"), fail_every, parent, inherited)
        return execution_id, execution

    def _check_resume(self, execution_id: str, parent_before: tuple[list[int], list[int]]) -> None:
        execution = self.model[execution_id]
        ran = execution.ran()
        assert not set(ran) & execution.inherited, "a resume reran inputs its parent had finished"
        assert not ran or max(ran.values()) == 1, "a resume ran an input twice"
        assert execution.parent is not None
        with self._pylo() as pylo:
            assert pylo.get_state(execution.parent) == parent_before, "a resume changed its parent"

    # -- rules ------------------------------------------------------------------------

    @rule(
        target=executions,
        size=st.integers(0, 60),
        fail_every=st.sampled_from([0, 3, 5]),
        budget=st.sampled_from([1000, 2]),
    )
    def start(self, size: int, fail_every: int, budget: int) -> str:
        inputs = [len(self.model) * 1000 + offset for offset in range(size)]
        execution_id, execution = self._new(inputs, fail_every)
        self.model[execution_id] = execution
        with self._pylo(budget) as pylo:
            pylo.start_from_scratch(
                inputs, functools.partial(fail_some, execution.log, fail_every), execution_id=execution_id
            )
            record = pylo.get_execution(execution_id)
        assert record.status in (ExecutionStatus.COMPLETED, ExecutionStatus.STOPPED)
        ran = execution.ran()
        assert not ran or max(ran.values()) == 1, "an input ran twice in one execution"
        return execution_id

    @rule(
        target=executions,
        size=st.integers(1, 60),
        fail_every=st.sampled_from([0, 4]),
        calls_before_death=st.integers(1, 50),
    )
    def crash(self, size: int, fail_every: int, calls_before_death: int) -> str:
        inputs = [len(self.model) * 1000 + offset for offset in range(size)]
        execution_id, execution = self._new(inputs, fail_every)
        self.model[execution_id] = execution
        self._run_and_kill(execution_id, inputs, None, execution, calls_before_death)
        return execution_id

    @rule(
        target=executions,
        past=executions,
        fail_every=st.sampled_from([0, 4]),
        calls_before_death=st.integers(1, 30),
    )
    def crash_a_resume(self, past: str, fail_every: int, calls_before_death: int) -> str:
        with self._pylo() as pylo:
            before = pylo.get_state(past)
        execution_id, execution = self._new(self.model[past].inputs, fail_every, parent=past)
        self.model[execution_id] = execution
        self._run_and_kill(execution_id, None, past, execution, calls_before_death)
        self._check_resume(execution_id, before)
        return execution_id

    @rule(target=executions, past=executions, fail_every=st.sampled_from([0, 3]))
    def resume(self, past: str, fail_every: int) -> str:
        with self._pylo() as pylo:
            before = pylo.get_state(past)
        execution_id, execution = self._new(self.model[past].inputs, fail_every, parent=past)
        self.model[execution_id] = execution
        with self._pylo() as pylo:
            pylo.start_from_past_execution(
                past, functools.partial(fail_some, execution.log, fail_every), execution_id=execution_id
            )
            unfinished = pylo.get_state(execution_id)[1]
        # A resume in this process attempts every unfinished input: only failures stay.
        assert all(execution.fails(item) for item in unfinished)
        self._check_resume(execution_id, before)
        return execution_id

    def _run_and_kill(
        self, execution_id: str, inputs: list[int] | None, past: str | None, execution: _Execution, deaths: int
    ) -> None:
        child = multiprocessing.get_context("spawn").Process(
            target=run_and_die,
            args=(
                self.store_dir,
                self.store_name,
                execution_id,
                inputs,
                past,
                execution.log,
                execution.fail_every,
                deaths,
            ),
        )
        child.start()
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join(10)
            raise AssertionError("the child neither finished nor died within 60 s")
        assert child.exitcode == -signal.SIGKILL, f"the child ended with {child.exitcode} (see its traceback)"

    # -- the contract -------------------------------------------------------------------

    @invariant()
    def every_execution_keeps_the_contract(self) -> None:
        with self._pylo() as pylo:
            records = {record.id: record for record in pylo.list_executions()}
            assert set(records) == set(self.model)
            for execution_id, execution in self.model.items():
                record = records[execution_id]
                assert record.parent_id == execution.parent
                assert record.status is not ExecutionStatus.RUNNING  # ended, or crashed
                finished, unfinished = pylo.get_state(execution_id)
                # 1. Every input exactly once, in input order.
                assert sorted(finished + unfinished) == execution.inputs
                assert finished == sorted(finished) and unfinished == sorted(unfinished)
                # 2. Finished inputs really ran here and passed, or were inherited.
                ran = execution.ran()
                passed = {item for item in ran if not execution.fails(item)}
                assert set(finished) <= passed | execution.inherited, "finished but never ran"
                failures = pylo.get_failures(execution_id)
                assert all(failure.input in ran and execution.fails(failure.input) for failure in failures)
                assert set(failure.input for failure in failures) <= set(unfinished)
                # 4. The record's counts are those of the snapshot.
                assert (record.total, record.finished) == (len(execution.inputs), len(finished))
                assert record.failed == len(failures)


class _SQLiteContract(_Contract):
    store_name = "sqlite"


class _FilesContract(_Contract):
    store_name = "files"


_SETTINGS = settings(
    max_examples=4,
    stateful_step_count=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("machine", [_SQLiteContract, _FilesContract], ids=["sqlite", "files"])
def test_start_crash_resume_and_inspect_keep_the_contract(machine: type[_Contract]) -> None:
    machine.TestCase.settings = _SETTINGS
    machine.TestCase().runTest()
