"""Ready retry policies for tasks that call HTTP APIs.

:func:`http_retry` builds a tenacity policy to pass as ``retry=`` to any
``Pylo`` constructor: it retries what is worth retrying over HTTP (rate
limits, overloaded or unreachable servers) with exponential back-off, waits
as long as a ``Retry-After`` header asks, and gives up at once on anything
else, so a ``401`` or a bug in the task is recorded after one attempt.

What is recognised, by duck typing (``requests`` and ``httpx`` are never
imported, and need not be installed):

* **An HTTP status**, retried when it is in ``retry_statuses`` (429, 502, 503
  and 504 by default) and never otherwise:

  - an exception with a ``response`` whose ``status_code`` is an ``int``:
    ``requests.HTTPError`` (from ``raise_for_status()``),
    ``httpx.HTTPStatusError``, and anything shaped like them;
  - ``urllib.error.HTTPError`` (recognised by class name, including
    subclasses): its ``code``.

* **A connection error**, always retried, when the exception has no HTTP
  status and is:

  - a ``ConnectionError`` (refused, reset, broken pipe,
    ``http.client.RemoteDisconnected``) or a ``TimeoutError``
    (``socket.timeout``);
  - a ``urllib.error.URLError`` (how ``urllib.request`` reports a refused
    connection, a DNS failure or a timeout);
  - a class named ``ConnectionError`` or ``Timeout`` from a ``requests.``
    module (``requests.ConnectionError``, ``requests.Timeout`` and their
    subclasses such as ``ConnectTimeout``, ``ReadTimeout``, ``SSLError``);
  - a class named ``TransportError`` from an ``httpx.`` module (timeouts,
    network and protocol errors), except ``UnsupportedProtocol`` and
    ``LocalProtocolError``, which are the caller's mistakes.

* **A ``Retry-After`` header** on the response (``response.headers`` for
  requests and httpx, ``headers`` for urllib): a number of seconds or an
  HTTP-date. When present and valid it replaces the back-off for that wait,
  capped at ``max_retry_after`` seconds.

The policy and its parts are module-level classes, so it pickles and reaches
process and Dask workers.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any, Literal, overload

from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)
from tenacity.wait import wait_base

from pylo._options import check_seconds_at_least

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = [
    "RETRY_STATUSES",
    "http_retry",
    "http_status",
    "is_transient_http_error",
    "retry_after",
    "wait_retry_after",
]

#: The statuses :func:`http_retry` retries by default: too many requests, bad
#: gateway, service unavailable, gateway timeout.
RETRY_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})

_URLLIB_HTTP_ERROR = "urllib.error.HTTPError"
_URLLIB_URL_ERROR = "urllib.error.URLError"
_REQUESTS_CONNECTION = frozenset({"ConnectionError", "Timeout"})
_HTTPX_NOT_TRANSIENT = frozenset({"UnsupportedProtocol", "LocalProtocolError"})


def _class_names(exc: BaseException) -> list[tuple[str, str]]:
    """``(module, name)`` of every class in the exception's MRO."""
    return [(cls.__module__, cls.__qualname__) for cls in type(exc).__mro__]


def _has_class(exc: BaseException, qualified: str) -> bool:
    return any(f"{module}.{name}" == qualified for module, name in _class_names(exc))


def _from_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _response(exc: BaseException) -> Any:
    """The response carried by a requests or httpx error, or None."""
    try:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    except Exception:  # a property that raises: deciding to retry must not fail
        return None
    if isinstance(status, int) and not isinstance(status, bool):
        return response
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception reports, or None.

    Args:
        exc: Any exception.

    Returns:
        ``exc.response.status_code`` when it is an ``int`` (requests, httpx);
        ``exc.code`` for a ``urllib.error.HTTPError``; otherwise None.
    """
    response = _response(exc)
    if response is not None:
        return int(response.status_code)
    if _has_class(exc, _URLLIB_HTTP_ERROR):
        code = getattr(exc, "code", None)
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    return None


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = _class_names(exc)
    if any(f"{module}.{name}" == _URLLIB_URL_ERROR for module, name in names):
        return True
    if any(_from_package(module, "requests") and name in _REQUESTS_CONNECTION for module, name in names):
        return True
    httpx_names = {name for module, name in names if _from_package(module, "httpx")}
    return "TransportError" in httpx_names and not httpx_names & _HTTPX_NOT_TRANSIENT


def is_transient_http_error(exc: BaseException, statuses: Collection[int] = RETRY_STATUSES) -> bool:
    """Whether an HTTP call that raised ``exc`` is worth trying again.

    Args:
        exc: The exception the call raised.
        statuses: The HTTP statuses worth retrying.

    Returns:
        True for an HTTP status in ``statuses``, or for a connection error
        that carries no HTTP status (see the module docstring for what is
        recognised). False for every other exception, other statuses
        included.
    """
    status = http_status(exc)
    if status is not None:
        return status in statuses
    return _is_connection_error(exc)


def _headers(exc: BaseException) -> Any:
    response = _response(exc)
    if response is not None:
        return getattr(response, "headers", None)
    if _has_class(exc, _URLLIB_HTTP_ERROR):
        return getattr(exc, "headers", None)
    return None


def retry_after(exc: BaseException, *, now: dt.datetime | None = None) -> float | None:
    """The seconds an HTTP error's ``Retry-After`` header asks to wait, or None.

    Args:
        exc: Any exception; only the HTTP errors :func:`http_status`
            recognises carry headers.
        now: The time an HTTP-date is counted from (aware; default: now).

    Returns:
        The header's seconds (a non-negative number), or the seconds from
        ``now`` until its HTTP-date (0 for a date in the past). None when
        there is no header or its value is neither.
    """
    headers = _headers(exc)
    get = getattr(headers, "get", None)
    if not callable(get):
        return None
    try:
        # requests, httpx and email.message headers are case-insensitive; a plain dict is not.
        value = get("Retry-After") or get("retry-after")
    except Exception:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about the local zone
        when = when.replace(tzinfo=dt.timezone.utc)
    reference = now if now is not None else dt.datetime.now(dt.timezone.utc)
    return max(0.0, (when - reference).total_seconds())


class _TransientHTTPError:
    """The predicate of :func:`http_retry`: a class, not a closure, so it pickles."""

    def __init__(self, statuses: frozenset[int]) -> None:
        self.statuses = statuses

    def __call__(self, exc: BaseException) -> bool:
        return is_transient_http_error(exc, self.statuses)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({sorted(self.statuses)})"


class wait_retry_after(wait_base):  # lower case like tenacity's own wait strategies
    """Wait as long as the last error's ``Retry-After`` says, else as ``fallback`` says.

    A tenacity wait strategy: combine it like tenacity's own.

    Args:
        fallback: The wait when the last attempt's exception has no valid
            ``Retry-After`` header (e.g. ``wait_exponential()``).
        maximum: The longest wait a ``Retry-After`` header may ask for, in
            seconds; longer ones are cut to it.
    """

    def __init__(self, fallback: wait_base, maximum: float) -> None:
        self.fallback = fallback
        self.maximum = maximum

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            exc = outcome.exception()
            seconds = retry_after(exc) if exc is not None else None
            if seconds is not None:
                return min(seconds, self.maximum)
        return self.fallback(retry_state)


def _check_statuses(statuses: Any) -> frozenset[int]:
    if isinstance(statuses, (str, bytes, int)) or not isinstance(statuses, Iterable):
        raise TypeError(
            f"retry_statuses must be a collection of HTTP statuses such as {{429, 503}}, "
            f"got {type(statuses).__name__} {statuses!r}"
        )
    checked = frozenset(statuses)
    for status in sorted(checked, key=repr):
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"retry_statuses must hold int statuses, got {type(status).__name__} {status!r}")
        if not 400 <= status <= 599:
            raise ValueError(f"retry_statuses must hold error statuses from 400 to 599, got {status}")
    return checked


@overload
def http_retry(
    *,
    attempts: int = ...,
    initial: float = ...,
    maximum: float = ...,
    max_retry_after: float = ...,
    retry_statuses: Iterable[int] = ...,
    asynchronous: Literal[False] = ...,
) -> Retrying: ...


@overload
def http_retry(
    *,
    attempts: int = ...,
    initial: float = ...,
    maximum: float = ...,
    max_retry_after: float = ...,
    retry_statuses: Iterable[int] = ...,
    asynchronous: Literal[True],
) -> AsyncRetrying: ...


@overload
def http_retry(
    *,
    attempts: int = ...,
    initial: float = ...,
    maximum: float = ...,
    max_retry_after: float = ...,
    retry_statuses: Iterable[int] = ...,
    asynchronous: bool = ...,
) -> Retrying | AsyncRetrying: ...


def http_retry(
    *,
    attempts: int = 4,
    initial: float = 1.0,
    maximum: float = 30.0,
    max_retry_after: float = 60.0,
    retry_statuses: Iterable[int] = RETRY_STATUSES,
    asynchronous: bool = False,
) -> Retrying | AsyncRetrying:
    """A tenacity policy for tasks that call HTTP APIs.

    Retries rate limits (429), bad gateways and unavailable servers (502,
    503, 504) and connection errors; never any other status (a 401 or 404
    fails at once) nor any other exception. Waits ``initial`` seconds, then
    twice as long each time (1, 2, 4 s by default), up to ``maximum``; a
    ``Retry-After`` header replaces that wait, up to ``max_retry_after``. The
    last exception is re-raised, so pylo records the task's own error. See
    the module docstring for exactly which exceptions are recognised.

    Example::

        Pylo.local_multithread("store", 8, retry=http_retry())

    Args:
        attempts: Attempts per input, the first included (``1`` never
            retries).
        initial: The first back-off wait, in seconds.
        maximum: The longest back-off wait, in seconds.
        max_retry_after: The longest wait a ``Retry-After`` header may ask
            for, in seconds; longer ones are cut to it.
        retry_statuses: The HTTP statuses to retry.
        asynchronous: Build a ``tenacity.AsyncRetrying`` (for
            ``Pylo.local_asyncio``) instead of a ``tenacity.Retrying``.

    Returns:
        A ``tenacity.Retrying``, or a ``tenacity.AsyncRetrying`` when
        ``asynchronous`` is true; it pickles, so process and Dask workers can
        use it.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range: ``attempts < 1``, negative
            or infinite seconds, ``maximum < initial``, a status outside
            400-599.
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise TypeError(f"attempts must be an int >= 1, got {type(attempts).__name__} {attempts!r}")
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    initial = check_seconds_at_least("initial", initial, 0)
    maximum = check_seconds_at_least("maximum", maximum, 0)
    if maximum < initial:
        raise ValueError(f"maximum must be >= initial ({initial:g}), got {maximum:g}")
    max_retry_after = check_seconds_at_least("max_retry_after", max_retry_after, 0)
    statuses = _check_statuses(retry_statuses)
    if not isinstance(asynchronous, bool):
        raise TypeError(f"asynchronous must be True or False, got {type(asynchronous).__name__} {asynchronous!r}")

    policy = AsyncRetrying if asynchronous else Retrying
    return policy(
        retry=retry_if_exception(_TransientHTTPError(statuses)),
        stop=stop_after_attempt(attempts),
        wait=wait_retry_after(wait_exponential(multiplier=initial, max=maximum), max_retry_after),
        reraise=True,
    )
