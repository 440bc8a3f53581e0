"""A lone node runs on the coordinator's own thread, while a keeper thread flushes and looks for requests.

When a node starts with no other node running and none ready (each node of a
chain; a pipeline's only node, such as a batch node), handing it to a node
thread and taking its outcome back costs two thread hand-offs for nothing:
no other node can start meanwhile. Those hand-offs were most of what a
chain's node cost beyond a plain thread pool's, and on a loaded machine the
larger part of what a batch node added to its execution. So
:class:`LoneNode` (mixed into ``RunCoordinator``) runs such a node on the
coordinator's thread, and its outcome goes to the outbox as a node thread's
would.

While the node runs, the coordinator cannot keep its clocks: the flush every
``flush_seconds`` (earlier outcomes, and the node's ``running`` row) and the
look for a pause or cancel request every ``control_seconds`` (which stops a
running batch node). The process's keeper thread keeps them: it wakes by
those clocks and, for each run it watches whose coordinator is away in a
node, takes the coordinator's desk (a lock the coordinator holds at all
other times) and does what the coordinator's loop would do. The desk makes
the two one writer at a time. The keeper tries the desk without blocking
and is never woken per node, so leaving and retaking the desk cost no
hand-off. A run is watched from its first lone node to its end; the
keeper is made by the first run watched and joined when the last ends.

A batch node needs no keeper unless it lasts: its execution's loop runs on
the coordinator's thread too, and wakes when the first flush or look could
be due (``pylo._engine.ALARM``); only then is the run watched. Starting and
joining the keeper took a batch node that ends sooner (a fraction of a
second) half a millisecond of thread hand-offs, half of what it added to
its execution.

A node runs here only when nothing else could use the time and the rest of
its work needs no coordinator: threads workers, no event loop running in
the coordinator's thread (a task's own ``asyncio.run`` must work), no
``async def`` task, no ``with_state``, no child run to resume, no
``wait_for`` to wait on. A call that returns a pipeline runs its child run
on a node thread (the coordinator records the child's start, so it must be
free).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pylo.pipeline._executors import Outcome

if TYPE_CHECKING:
    import queue

    from pylo.pipeline._builder import _Node
    from pylo.pipeline._node_threads import NodeThreads
    from pylo.pipeline._run_environment import RunEnvironment

__all__ = ["LoneNode"]

#: Shortest and longest sleep of the keeper between two looks at the clocks.
_MIN_NAP = 0.02  # a look the coordinator is due to make itself is not retried in a busy loop
_MAX_NAP = 1.0
#: How long the end of the last run waits for the keeper to end (it is woken: at once, unless in a flush).
_JOIN_SECONDS = 5.0


class _Keeper:
    """The process's keeper thread, while runs watch it: tends those whose coordinator is away.

    Made by the first run that has a lone node, it ends, and is joined, when
    the last run it watches ends, as node threads are: no thread of pylo's
    outlives the runs (a process that forks next is single-threaded again).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[LoneNode] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None  # the current thread's

    def watch(self, run: LoneNode) -> None:
        with self._lock:
            self._watched.add(run)
            if self._thread is None:
                stop = threading.Event()
                thread = threading.Thread(target=self._loop, args=(stop,), name="pylo-keeper", daemon=True)
                thread.start()  # noted once started: a thread that could not start is never joined
                self._thread, self._stop = thread, stop
        self._wake.set()  # the keeper looks at the clocks again, this run's among them

    def unwatch(self, run: LoneNode) -> None:
        with self._lock:
            self._watched.discard(run)
            if self._watched or self._thread is None or self._stop is None:
                return
            thread, stop = self._thread, self._stop
            self._thread = self._stop = None  # a run that comes next makes a keeper of its own
        stop.set()
        self._wake.set()
        if thread is not threading.current_thread():
            thread.join(_JOIN_SECONDS)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._lock:
                watched = list(self._watched)
            nap = min((run._nap() for run in watched), default=_MAX_NAP)
            self._wake.wait(min(_MAX_NAP, max(_MIN_NAP, nap)))
            self._wake.clear()
            if stop.is_set():
                return
            for run in watched:
                run._try_tend()


_KEEPER = _Keeper()


def _forget_keeper() -> None:
    global _KEEPER
    _KEEPER = _Keeper()  # a forked child has no keeper thread: it makes its own when it needs one


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_keeper)


class LoneNode:
    """Runs a lone node on the coordinator's thread, the keeper keeping the clocks (a mixin; see the module)."""

    _running: int
    _ready: Any
    _outbox: queue.SimpleQueue[tuple[int, Any]]
    _pool: NodeThreads
    _environment: RunEnvironment | None
    _past_children: dict[int, Any]
    _interrupted: set[int]
    _flush_seconds: float
    _work: Callable[..., Outcome]
    _flush: Callable[..., None]
    _flush_due_by_time: Callable[[], bool]
    _seconds_until_due: Callable[..., float]
    _look_at_control: Callable[..., None]

    def _init_lone_node(self, kind: str) -> None:
        # Per run, not per node: what rules out running any node here.
        self._here_allowed = kind == "threads" and asyncio._get_running_loop() is None
        self._desk: threading.Lock | None = None  # made, and held, at the first lone node
        self._desk_closed = False
        self._watched = False  # by the keeper: from the first lone node, or a batch node's alarm, to the end
        #: While a batch node runs here: when its execution rings to have the run watched (ALARM).
        self._alarm: tuple[float, Callable[[], None]] | None = None
        #: What the keeper's flush or look raised: raised by the coordinator once back from the node.
        self._keeper_error: BaseException | None = None

    def _runs_here(self, index: int, node: _Node) -> bool:
        """True when ``index`` may run on the coordinator's thread (it is the only node to run)."""
        if not self._here_allowed or self._running != 1 or self._ready:
            return False
        task = node.task
        options = task.options
        if task.is_async or options.with_state or index in self._past_children:
            return False
        return self._environment is None or options.wait_for is None

    def _run_here(self, job: tuple[Any, ...]) -> None:
        """Run the node on this thread, the keeper keeping the clocks; its outcome goes to the outbox."""
        try:
            self._run_here_unguarded(job)
        except BaseException:
            self._interrupted.add(job[0])  # it ended here, with no outcome: nothing is to be waited for
            raise

    def _run_here_unguarded(self, job: tuple[Any, ...]) -> None:
        desk = self._desk
        if desk is None:
            desk = self._desk = threading.Lock()
            desk.acquire()  # the coordinator's, but while it is away in a node
        if not self._watched:
            if job[5] is None:  # a call: nothing of its own wakes while it runs
                self._watch()
            else:  # a batch node: its execution rings when the first clock could be due
                self._alarm = (time.monotonic() + self._nap(), self._watch_from_node)
        desk.release()
        try:
            # A fresh context, as a node thread gives: nothing the node sets reaches the coordinator.
            outcome: Outcome = contextvars.Context().run(self._work, *job, None, True)
        finally:
            desk.acquire()  # waits for a flush the keeper is making
            self._alarm = None
        if self._keeper_error is not None:
            raise self._keeper_error
        if outcome.ok and outcome.child is not None:
            self._pool.submit((*job, outcome))  # its child run, on a node thread: it needs the coordinator
            return
        self._outbox.put((job[0], outcome))

    def _watch(self) -> None:
        _KEEPER.watch(self)
        self._watched = True

    def _watch_from_node(self) -> None:
        """The alarm of a batch node running here: from its execution's loop, the run is watched from now on."""
        try:
            self._watch()
        except BaseException as exc:  # no keeper (no thread could start): raised once back from the node
            self._keeper_error = exc

    def _close_desk(self) -> None:
        """At the run's end (or interruption): the keeper stops watching it."""
        if self._desk is not None:
            self._desk_closed = True
            if self._watched:
                _KEEPER.unwatch(self)

    def _nap(self) -> float:
        """Seconds until a flush or a look in the store could be due (read without the desk: a hint)."""
        return self._seconds_until_due(idle=self._flush_seconds)

    def _try_tend(self) -> None:
        """On the keeper's thread: if the coordinator is away in a node, do what its loop does by the clocks."""
        desk = self._desk
        if desk is None or not desk.acquire(blocking=False):
            return  # the coordinator is at work: it keeps its clocks itself
        try:
            if self._desk_closed or self._keeper_error is not None:
                return
            if self._flush_due_by_time():
                self._flush()
            self._look_at_control()
        except BaseException as exc:  # the coordinator's loop would have raised it: so does the coordinator
            self._keeper_error = exc
        finally:
            desk.release()
