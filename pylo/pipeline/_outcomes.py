"""Composition rules the coordinator applies around a node call.

Kept apart from the coordinator's loop: argument checks against the task's
signature, the error a node receives or reports when nodes it waits for
failed (one exception, or a :class:`GroupFailed` naming every failed
member), the pass-through value of ``continue_if``/``exceptionally``/
``finally_do`` nodes that do not produce one of their own, and which
failures count against the run (those no ``exceptionally`` recovered and
no ``in_parallel(return_exceptions=True)`` turned into a value).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Sequence
from typing import Any

from pylo.errors import PipelineValidationError
from pylo.pipeline._builder import EXCEPTIONALLY
from pylo.pipeline._task import Task

__all__ = ["GroupFailed", "check_arguments", "combined_error", "is_failed_run", "recovered"]

_HARD = frozenset({"failed", "failed_dependency"})


class GroupFailed(Exception):
    """Several nodes a node waits for failed (the members of a group, typically).

    Its message names every failed member; siblings ran to their end first.

    Attributes:
        failures: ``(display name, exception)`` of each failed node, in graph order.
    """

    def __init__(self, failures: Sequence[tuple[str, BaseException]]) -> None:
        described = "; ".join(f"{name} ({type(exc).__name__}: {exc})" for name, exc in failures)
        super().__init__(f"{len(failures)} members failed: {described}")
        self.failures = list(failures)

    def __reduce__(self) -> Any:
        return (GroupFailed, (self.failures,))


def combined_error(failures: Sequence[tuple[str, BaseException]]) -> BaseException:
    """The error a node receives for its failed upstream nodes: the one, or a GroupFailed of all."""
    if len(failures) == 1:
        return failures[0][1]
    return GroupFailed(failures)


#: Per task function, per number of leading parameters left out: its signature and positional bounds.
_SIGNATURES: weakref.WeakKeyDictionary[Any, dict[int, tuple[inspect.Signature, tuple[int, int] | None]]] = (
    weakref.WeakKeyDictionary()
)


def _signature_of(function: Any, skip: int) -> tuple[inspect.Signature, tuple[int, int] | None] | None:
    """``function``'s signature without its first ``skip`` positional parameter, and the bounds of a plain call.

    The bounds are ``(required, most)`` positional arguments when a call
    with positional arguments only binds exactly when their number is
    between them (no keyword-only parameter without a default; ``most`` is
    -1 with ``*args``), else None. Found once per function (weakly kept):
    ``inspect.signature`` costs more than a no-op node's whole call.
    """
    try:
        found = _SIGNATURES.get(function)
    except TypeError:  # not weakly referable: found every time
        found = None
    if found is not None and skip in found:
        return found[skip]
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # builtins without a signature: let the call tell
        return None
    if skip:
        parameters = list(signature.parameters.values())
        if parameters and parameters[0].kind in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD):
            signature = signature.replace(parameters=parameters[1:])
    bounds: tuple[int, int] | None = None
    kept = signature.parameters.values()
    if not any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in kept):
        positional = [p for p in kept if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required = sum(p.default is p.empty for p in positional)
        varargs = any(p.kind is p.VAR_POSITIONAL for p in kept)
        bounds = (required, -1 if varargs else len(positional))
    entry = (signature, bounds)
    try:
        _SIGNATURES.setdefault(function, {})[skip] = entry
    except TypeError:
        pass
    return entry


def check_arguments(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> PipelineValidationError | None:
    """The problem with calling ``task(*args, **kwargs)``, found before the call; None when it fits."""
    # A with_context task gets its TaskContext first, when it is called: not counted here.
    skip = 1 if getattr(task.options, "with_context", False) else 0
    entry = _signature_of(task.function, skip)
    if entry is None:
        return None
    signature, bounds = entry
    if bounds is not None and not kwargs:  # the common case, without binding
        required, most = bounds
        if required <= len(args) and (most < 0 or len(args) <= most):
            return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        name = task.display_name
        positional = [
            p
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty and p.name not in kwargs
        ]
        has_varargs = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
        if len(args) < len(positional):
            return PipelineValidationError(
                f"not enough arguments for `{name}`: expected {len(positional)}, got {len(args)}"
            )
        allowed = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in signature.parameters.values())
        if not has_varargs and len(args) > allowed:
            return PipelineValidationError(f"too many arguments for `{name}`: expected {allowed}, got {len(args)}")
        return PipelineValidationError(f"bad arguments for `{name}`: {exc}")
    return None


def is_failed_run(states: Sequence[str], nodes: Sequence[Any]) -> bool:
    """True when a failure is left that nothing recovered (see :func:`recovered`)."""
    kept = recovered(states, nodes)
    return any(state in _HARD and not kept[i] for i, state in enumerate(states))


def recovered(states: Sequence[str], nodes: Sequence[Any]) -> list[bool]:
    """Which ``failed``/``failed_dependency`` nodes were recovered, by graph index.

    One is recovered when it is a ``return_exceptions`` member (its
    exception is a value), or when it has dependents and every one is an
    ``exceptionally`` node that ended ``done`` or is itself recovered. A
    resume keeps recovered nodes as they are, like ``done`` ones.
    """
    kept = [False] * len(states)
    for index in range(len(states) - 1, -1, -1):  # dependents come later in the order
        if states[index] not in _HARD:
            continue
        node = nodes[index]
        if node.tolerant:
            kept[index] = True
            continue
        dependents = node.dependents
        kept[index] = bool(dependents) and all(
            (nodes[d].node.handler == EXCEPTIONALLY and states[d] == "done") or kept[d] for d in dependents
        )
    return kept


def member_exception(
    exc_type: str | None, message: str | None, traceback: str | None, encoded: bytes | None, codec: Any
) -> BaseException:
    """The exception in a failed ``return_exceptions`` member's place, rebuilt from what its row keeps.

    The running run and a resume both build it this way, so the list holds
    the same exception (type, message, traceback text) either way: the
    exception decoded by the run's codec, whose ``__cause__`` is a
    ``StoredTaskError`` with the recorded traceback text (as
    ``concurrent.futures`` attaches a worker's traceback); or that
    ``StoredTaskError`` itself when the exception cannot be rebuilt.
    """
    from pylo.errors import StoredTaskError

    text = StoredTaskError(exc_type or "Exception", message or "", traceback or "")
    if encoded is not None:
        try:
            exc = codec.decode_exception(encoded)
        except Exception:
            return text
        exc.__cause__ = text
        return exc
    return text


# -- state ------------------------------------------------------------------------

#: How a node's result is stored when the node also has a state: one JSON-able mapping.
STATE_KEY = "__pylo_state__"


def wrap_state(value: Any, state: Any) -> Any:
    """What a node stores: its value, with its state beside it when it has one."""
    return value if state is None else {STATE_KEY: state, "value": value}


def unwrap_state(stored: Any) -> tuple[Any, Any]:
    """``(value, state)`` of what :func:`wrap_state` stored."""
    if type(stored) is dict and len(stored) == 2 and STATE_KEY in stored and "value" in stored:
        return stored["value"], stored[STATE_KEY]
    return stored, None


def merge_states(states: Sequence[tuple[str, Any]]) -> Any:
    """The state a node starts with, from the states of the nodes it waits for.

    None states are ignored; dicts are merged key by key; any other states
    must be equal. A key (or a state) two nodes set to different values is
    an error naming both, never a silent pick.

    Raises:
        PipelineValidationError: A conflict.
    """
    merged: Any = None
    owner: dict[Any, str] = {}
    first_name = ""
    for name, state in states:
        if state is None:
            continue
        if merged is None:
            merged, first_name = (dict(state) if isinstance(state, dict) else state), name
            owner = dict.fromkeys(state, name) if isinstance(state, dict) else {}
            continue
        if isinstance(merged, dict) and isinstance(state, dict):
            for key, value in state.items():
                if key in merged and merged[key] != value:
                    raise PipelineValidationError(
                        f"state conflict on key {key!r}: {owner[key]} has {merged[key]!r}, {name} has {value!r}; "
                        "give each member of a group its own keys"
                    )
                merged[key] = value
                owner.setdefault(key, name)
        elif merged != state:
            raise PipelineValidationError(
                f"state conflict: {first_name} has {merged!r}, {name} has {state!r}; use dict states with "
                "distinct keys to merge the states of a group"
            )
    return merged
