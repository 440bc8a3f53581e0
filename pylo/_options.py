"""The run options of a Pylo: one frozen object, validated where it is made.

Every constructor (``Pylo.local_multithread`` and the others) turns its
keyword arguments into one :class:`RunOptions`; the coordinator, the lanes
and the execution record read them from there. Options are checked once, in
``__post_init__``, with messages that name the option, the rule and the
value, so a :meth:`RunOptions.replace` (what ``Pylo.with_options`` and the
pipeline layer use to derive options per node) is checked exactly like a
constructor call. What only some workers can take (an ``AsyncRetrying``
policy, a retry policy that must travel to other processes) is checked by
the backend: :meth:`pylo.workers.base.Backend.check_options`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from pylo._codec import Codec, get_codec, short_repr
from pylo._ratelimit import parse_rate_limit
from pylo._retry_spec import describe_retry
from pylo.workers._initializer import check_initializer, describe_initializer
from pylo.workers.base import RunnerSettings

__all__ = [
    "MAX_SECONDS",
    "RunOptionArgs",
    "RunOptions",
    "check_bool",
    "check_execution_id",
    "check_int",
    "check_seconds",
    "check_seconds_at_least",
]

#: Longest ``flush_seconds`` or ``timeout``: one week. Waits this long still
#: fit every timeout the backends pass to the system (poll(2) takes at most
#: about 24 days), and a longer one means "never": use the count, or None.
MAX_SECONDS = 7 * 24 * 3600
#: ``flush_seconds`` when none is given.
DEFAULT_FLUSH_SECONDS = 1.0

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``.

    Raises:
        TypeError: Not an int.
        ValueError: Below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_seconds(name: str, value: Any) -> float:
    """``value`` as a float if it is a number of seconds in ``(0, MAX_SECONDS]``.

    Raises:
        TypeError: Not a number.
        ValueError: Not finite, not positive, or above MAX_SECONDS.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds > 0, got {type(value).__name__} {value!r}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")
    if value > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS} seconds (one week), got {value:g}")
    return float(value)


def check_seconds_at_least(name: str, value: Any, minimum: float) -> float:
    """``value`` as a float if it is a finite number of seconds in ``[minimum, MAX_SECONDS]``.

    Raises:
        TypeError: Not a number.
        ValueError: Not finite, below ``minimum``, or above MAX_SECONDS (a
            wait that long is a mistake, and waits on threads refuse it).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds >= {minimum:g}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number of seconds >= {minimum:g}, got {value}")
    if value > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS} seconds (one week), got {value:g}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is True or False.

    Raises:
        TypeError: Anything else.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {short_repr(value)}")
    return value


def check_execution_id(name: str, value: Any) -> str:
    """``value`` if it is a valid execution id.

    Raises:
        TypeError: Not a str.
        ValueError: Not 1-128 of ``[A-Za-z0-9._-]`` starting with a letter or digit.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {short_repr(value)}")
    if not _ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"{name} {value!r} is not a valid execution id: use 1 to 128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return value


def check_retry(retry: Any, *, asynchronous: bool) -> None:
    """Refuse a retry policy that is not the tenacity flavour these workers call.

    Raises:
        TypeError: Not a ``tenacity.Retrying`` (``AsyncRetrying`` when
            ``asynchronous``) object.
    """
    if retry is None:
        return
    from tenacity import AsyncRetrying, BaseRetrying

    wanted = "AsyncRetrying" if asynchronous else "Retrying"
    if not isinstance(retry, BaseRetrying) or isinstance(retry, AsyncRetrying) != asynchronous:
        raise TypeError(
            f"retry must be a tenacity.{wanted} object such as "
            f"{wanted}(stop=stop_after_attempt(3), wait=wait_exponential()), "
            f"got {type(retry).__name__} {short_repr(retry)}"
        )


class RunOptionArgs(TypedDict, total=False):
    """The keyword options every ``Pylo`` constructor takes (see :class:`RunOptions`)."""

    flush_seconds: float
    retry: Any
    max_failures: int | None
    store_results: bool
    timeout: float | None
    rate_limit: float | str | None
    progress: bool | None
    codec: str
    initializer: Callable[..., Any] | None
    initargs: tuple[Any, ...]


_POSITIONAL = frozenset(
    {"number_of_workers", "max_worker_failures", "task_executions_before_flush", "store_exceptions"}
)


def _check_names(given: Mapping[str, Any], exclude: frozenset[str] = frozenset()) -> None:
    names = {field.name for field in dataclasses.fields(RunOptions)} - exclude
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(
            f"unknown run option {', '.join(map(repr, unknown))}; valid options: {', '.join(sorted(names))}"
        )


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a Pylo runs its executions: frozen, and valid once made.

    Attributes:
        number_of_workers: Lanes, each with its own inputs and failure
            budget (``concurrency`` for asyncio workers). No more are started
            than there are inputs to run.
        max_worker_failures: A lane stops taking inputs once this many of
            its inputs have failed.
        task_executions_before_flush: Outcomes between two flushes, at most.
        flush_seconds: Longest time outcomes wait before a flush.
        store_exceptions: Keep each failure's exception, message and traceback.
        store_results: Keep each finished input's return value.
        retry: A tenacity ``Retrying`` (``AsyncRetrying`` for asyncio
            workers) policy, or None.
        max_failures: Stop the execution once this many inputs failed, or None.
        timeout: Seconds one input may take, retries included, or None.
        rate_limit: Most task starts per second, all lanes together, or
            None. Given as a number or a string such as ``"20/s"``; kept as
            starts per second.
        progress: Show a progress bar (None: when stderr is a terminal).
        codec: Name of the codec new executions are stored with.
        initializer: Called as ``initializer(*initargs)`` once in each
            worker before it runs its first input (an ``async def`` one is
            awaited on asyncio workers), or None. See docs/options.md.
        initargs: A tuple of arguments for ``initializer``.

    Raises:
        TypeError, ValueError: An option has the wrong type or is out of
            range; the message names the option, the rule and the value.
    """

    number_of_workers: int
    max_worker_failures: int = 1000
    # One stored batch (pylo._plan.MAX_BATCH): no chunk is larger than the
    # flush interval, so with 1,000 every batch ran as chunks of 1,000 and 24.
    task_executions_before_flush: int = 1024
    flush_seconds: float = DEFAULT_FLUSH_SECONDS
    store_exceptions: bool = True
    store_results: bool = False
    retry: Any = None
    max_failures: int | None = None
    timeout: float | None = None
    rate_limit: float | str | None = None
    progress: bool | None = None
    codec: str = "pickle"
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        check_int("number_of_workers", self.number_of_workers, 1)
        check_int("max_worker_failures", self.max_worker_failures, 1)
        check_int("task_executions_before_flush", self.task_executions_before_flush, 1)
        check_bool("store_exceptions", self.store_exceptions)
        check_bool("store_results", self.store_results)
        if self.max_failures is not None:
            check_int("max_failures", self.max_failures, 1)
        if self.progress is not None:
            check_bool("progress", self.progress)
        if self.retry is not None:
            from tenacity import BaseRetrying

            # Which flavour is the backend's call: Backend.check_options.
            if not isinstance(self.retry, BaseRetrying):
                raise TypeError(
                    "retry must be a tenacity.Retrying object (tenacity.AsyncRetrying for asyncio workers) "
                    "such as Retrying(stop=stop_after_attempt(3), wait=wait_exponential()), "
                    f"got {type(self.retry).__name__} {short_repr(self.retry)}"
                )
        get_codec(self.codec)  # raises with the list of valid names
        # Whether these workers can call it (and receive it) is the backend's call.
        check_initializer(self.initializer, self.initargs)
        # Normalised in place: frozen, but made here, before anyone sees it.
        set_field = object.__setattr__
        set_field(self, "flush_seconds", check_seconds("flush_seconds", self.flush_seconds))
        if self.timeout is not None:
            set_field(self, "timeout", check_seconds("timeout", self.timeout))
        set_field(self, "rate_limit", parse_rate_limit(self.rate_limit))

    @classmethod
    def make(
        cls,
        options: Mapping[str, Any],
        number_of_workers: int,
        max_worker_failures: int = 1000,
        task_executions_before_flush: int = 1024,
        store_exceptions: bool = True,
    ) -> RunOptions:
        """Options from a constructor's arguments: its ``**options`` and the seed's positional ones.

        Raises:
            TypeError: An unknown option name (the message lists the valid
                ones), or an option of the wrong type.
            ValueError: An option out of range.
        """
        _check_names(options, exclude=_POSITIONAL)
        return cls(
            number_of_workers,
            max_worker_failures,
            task_executions_before_flush,
            store_exceptions=store_exceptions,
            **options,
        )

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes``, validated like a new object.

        ``initializer=None`` drops the initargs too, unless they are given.

        Raises:
            TypeError: An unknown option name (the message lists the valid
                ones), or an option of the wrong type.
            ValueError: An option out of range.
        """
        _check_names(changes)
        if "initializer" in changes and changes["initializer"] is None:
            changes.setdefault("initargs", ())
        return dataclasses.replace(self, **changes)

    @property
    def rate(self) -> float | None:
        """``rate_limit`` in task starts per second (validated options hold nothing else)."""
        assert not isinstance(self.rate_limit, str)
        return self.rate_limit

    def runner_settings(self, codec: Codec) -> RunnerSettings:
        """What every lane of an execution written with ``codec`` needs to know."""
        return RunnerSettings(
            store_exceptions=self.store_exceptions,
            store_results=self.store_results,
            retry=self.retry,
            codec_name=codec.name,
            max_failures=self.max_failures,
            timeout=self.timeout,
            rate_limit=self.rate,
            initializer=self.initializer,
            initargs=self.initargs,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-serializable options kept on the execution record (a stored format: keep the keys)."""
        return {
            "number_of_workers": self.number_of_workers,
            "max_worker_failures": self.max_worker_failures,
            "task_executions_before_flush": self.task_executions_before_flush,
            "flush_seconds": self.flush_seconds,
            "store_exceptions": self.store_exceptions,
            "store_results": self.store_results,
            "retry": None if self.retry is None else repr(self.retry),  # for people; resume reads retry_policy
            "retry_policy": describe_retry(self.retry),
            "max_failures": self.max_failures,
            "timeout": self.timeout,
            "rate_limit": self.rate,
            # Name, import path (for `pylo resume`) and JSON initargs: pylo.workers._initializer.
            "initializer": describe_initializer(self.initializer, self.initargs),
        }
