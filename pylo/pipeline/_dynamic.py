"""Dynamic pipelines: a task that returns a pipeline runs it as a child run.

Order of events, each durable before the next::

    the task returns a pipeline (pickled where the task ran)
        │ the parent coordinator records child_run_id and the pickled
        │ pipeline on the node's row, and flushes        (record_child)
        ▼
    the child run is created (its options name the parent run and node)
        │ and runs in the parent node's thread, a run of its own with its own
        │ coordinator (one writer per run still holds)
        ▼
    the child's result (and, for ``.inline()``, its state) is the node's outcome

A child run inherits what its parent run was given: its hooks, its
configuration (what ``with_context`` tasks read), its rate-limit buckets
(one per key for the run and its children) and its ``max_parallel``; a
cancel of the parent cancels it (the parent's node ends ``cancelled``, and
a resume of the parent resumes the child).

A resume of the parent finds the node not ``done`` but with a child run and
its pickled pipeline: it resumes that child (a new child run whose
``parent_id`` is the old child) instead of calling the task again, so the
task's body runs once and the child's finished nodes are kept. A child
recorded on its node but never created (the parent run was interrupted in
between) starts afresh from the recorded pipeline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pylo.errors import PipelineValidationError

if TYPE_CHECKING:
    from pylo.pipeline._builder import Pipeline
    from pylo.pipeline._executors import Outcome
    from pylo.pipeline._host import Host
    from pylo.pipeline._run_environment import RunEnvironment

__all__ = ["MAX_DEPTH", "encode_child", "run_child"]

#: Deepest nesting of child runs (a recursion without a base case stops here).
MAX_DEPTH = 200

# Nesting depth of the runs this process is running as children: run id -> depth.
_DEPTH: dict[str, int] = {}
_LOCK = threading.Lock()


def encode_child(pipeline: Pipeline) -> bytes:
    """Pickle a child pipeline so the parent's row can keep it (cloudpickle for lambdas)."""
    from pylo.workers._pickling import dumps

    return dumps(pipeline)


def depth_of(run_id: str) -> int:
    with _LOCK:
        return _DEPTH.get(run_id, 0)


def run_child(
    host: Host,
    parent_run_id: str,
    node_key: str,
    payload: bytes,
    *,
    state: Any,
    previous_child: str | None,
    record: Callable[[str], None],
    codec_name: str,
    hooks: tuple[Any, ...] = (),
    environment: RunEnvironment | None = None,
    max_parallel: int | None = None,
    halted: Callable[[], str | None] | None = None,
) -> tuple[Outcome, Any]:
    """Record, then run (or resume) a child run; its outcome and its final state.

    Args:
        host: The parent's host.
        parent_run_id, node_key: The node whose task returned the pipeline.
        payload: The pickled child pipeline.
        state: The parent node's state (given to an ``.inline()`` child).
        previous_child: A child run of the parent's past run to resume, or None.
        record: Records the new child's id on the parent node, durably, and
            returns once it is.
        codec_name: The parent's codec.
        hooks: The parent's hooks: the child run's events go to them too.
        environment: The parent's environment: the child runs with its
            configuration and shares its rate buckets (None: the child has
            an empty configuration).
        max_parallel: The parent's ``max_parallel`` (None: the Pylo's workers).
        halted: The parent run's halt (``"pause"``, ``"cancel"`` or None): a
            cancel of the parent cancels the child, whose node then ends
            ``cancelled`` (``stopped``), resumable: a resume of the parent
            resumes the child.

    Returns:
        The node's outcome (the child's result, or its failure) and the
        state the node ends with (an inline child's, else ``state``).
    """
    from pylo.pipeline._api import _run
    from pylo.pipeline._builder import _prepend
    from pylo.pipeline._executors import describe_failure, finish_call
    from pylo.pipeline._reading import read_result
    from pylo.workers._pickling import loads

    started = time.time()
    depth = depth_of(parent_run_id) + 1
    try:
        if depth > MAX_DEPTH:
            raise PipelineValidationError(
                f"dynamic pipelines nested more than {MAX_DEPTH} runs deep (node {node_key!r} of run "
                f"{parent_run_id!r}): does a recursion miss its base case?"
            )
        pipeline = loads(payload)
        inline = pipeline._inline
        if inline and state is not None:
            pipeline = _prepend(pipeline, None, ((), {}, state))
        if previous_child is not None and not _created(host, previous_child):
            # Recorded on the node, but the parent run ended before the child
            # run was created: nothing of it ran, so it starts afresh.
            previous_child = None
        child_id = host.new_id()
        with _LOCK:
            _DEPTH[child_id] = depth
        try:
            record(child_id)
            _run(
                host.pylo,
                pipeline,
                run_id=child_id,
                max_parallel=max_parallel,
                parent_id=previous_child,
                child_of={"run": parent_run_id, "node": node_key},
                hooks=hooks,
                inherit=environment,
                parent_halt=halted,
            )
        finally:
            with _LOCK:
                _DEPTH.pop(child_id, None)
        value, child_state = read_result(host.pylo, child_id, with_state=True)
    except Exception as exc:  # the child failed (PipelineFailed), or could not start
        from pylo.pipeline._errors import PipelineCancelled

        if isinstance(exc, PipelineCancelled) and halted is not None and halted() == "cancel":
            from pylo.pipeline._executors import Outcome

            return Outcome(ok=False, stopped=True, started=started, ended=time.time()), state
        return describe_failure(exc, codec_name, 1, started), state
    except BaseException as exc:  # the child was interrupted: so is its parent (a resume resumes both)
        from pylo.pipeline._executors import Outcome

        return Outcome(ok=False, interrupt=exc, started=started, ended=time.time()), state
    outcome = finish_call(value, codec_name, 1, started)
    return outcome, (child_state if inline else state)


def _created(host: Host, run_id: str) -> bool:
    """Whether run ``run_id`` is in the store (a child run is recorded on its node before it is created)."""
    from pylo.errors import PipelineNotFound

    try:
        host.runs().get_run(run_id)
    except PipelineNotFound:
        return False
    return True
