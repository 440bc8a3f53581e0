"""pylo.retry.http_retry against a real HTTP server on 127.0.0.1.

The server answers each path from a script (a list of statuses and headers,
then 200). Policies are given a recording ``sleep`` with ``.copy(sleep=...)``,
so tests assert on the waits the policy computed and never sleep for them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import pickle
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tenacity import AsyncRetrying, Retrying

from pylo import Pylo
from pylo.retry import RETRY_STATUSES, http_retry, http_status, is_transient_http_error, retry_after

ROOT = Path(__file__).resolve().parent.parent

Response = tuple[int, dict[str, str]]


class ScriptedServer:
    """A ThreadingHTTPServer whose paths answer scripted statuses, then 200."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Response]] = {}
        self.requests: Counter[str] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.scripted = self  # type: ignore[attr-defined]  # how the handler finds its script
        # A short poll interval: shutdown() waits for the next poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-http", daemon=True
        )

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def script(self, path: str, *responses: Response) -> str:
        """Answer ``path`` with ``responses`` in order, then 200; return its URL."""
        with self._lock:
            self._scripts[path] = list(responses)
        return self.url(path)

    def next_response(self, path: str) -> Response:
        with self._lock:
            self.requests[path] += 1
            script = self._scripts.get(path)
            return script.pop(0) if script else (200, {})

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, headers = self.server.scripted.next_response(self.path)  # type: ignore[attr-defined]
        body = json.dumps({"path": self.path, "status": status}).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    scripted.start()
    yield scripted
    scripted.stop()


def fetch(url: str) -> dict[str, Any]:
    """The task: GET ``url`` with urllib and decode its JSON (module level so it pickles)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.load(response))


def recording(policy: Retrying) -> tuple[Retrying, list[float]]:
    """The policy with a sleep that records each wait instead of sleeping."""
    waits: list[float] = []
    return policy.copy(sleep=waits.append), waits


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, so no one else takes it, but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound:
        bound.bind(("127.0.0.1", 0))
        yield int(bound.getsockname()[1])


# -- the policy against the server ------------------------------------------------


def test_429_then_503_then_200_succeeds_on_the_third_attempt(server: ScriptedServer) -> None:
    url = server.script("/flaky", (429, {"Retry-After": "0"}), (503, {}))
    policy, waits = recording(http_retry(initial=0.25))

    assert policy(fetch, url) == {"path": "/flaky", "status": 200}
    # Retry-After: 0 is honoured; the 503 has none, so the back-off of the second attempt.
    assert waits == [0.0, 0.5]
    assert server.requests["/flaky"] == 3
    assert policy.statistics["attempt_number"] == 3


def test_401_is_not_retried(server: ScriptedServer) -> None:
    url = server.script("/denied", (401, {}))
    policy, waits = recording(http_retry())

    with pytest.raises(urllib.error.HTTPError) as raised:
        policy(fetch, url)
    assert raised.value.code == 401
    assert waits == []
    assert server.requests["/denied"] == 1


def test_default_back_off_is_1_2_4_seconds_then_the_last_error_is_raised(server: ScriptedServer) -> None:
    url = server.script("/down", *[(503, {})] * 10)
    policy, waits = recording(http_retry())

    with pytest.raises(urllib.error.HTTPError) as raised:  # reraise=True: the task's own error
        policy(fetch, url)
    assert raised.value.code == 503
    assert waits == [1.0, 2.0, 4.0]
    assert server.requests["/down"] == 4


def test_back_off_stops_growing_at_maximum(server: ScriptedServer) -> None:
    url = server.script("/down", *[(502, {})] * 10)
    policy, waits = recording(http_retry(attempts=6, initial=1, maximum=5))

    with pytest.raises(urllib.error.HTTPError):
        policy(fetch, url)
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_after_as_an_http_date(server: ScriptedServer) -> None:
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    url = server.script("/busy", (503, {"Retry-After": email.utils.format_datetime(later, usegmt=True)}))
    policy, waits = recording(http_retry(max_retry_after=120))

    assert policy(fetch, url)["status"] == 200
    # The date has whole seconds, and a little time passed since it was made.
    assert len(waits) == 1 and 25 < waits[0] <= 30


def test_retry_after_is_capped_at_max_retry_after(server: ScriptedServer) -> None:
    url = server.script("/slow-down", (429, {"Retry-After": "3600"}))
    policy, waits = recording(http_retry(max_retry_after=5))

    assert policy(fetch, url)["status"] == 200
    assert waits == [5.0]


def test_an_invalid_retry_after_falls_back_to_the_back_off(server: ScriptedServer) -> None:
    url = server.script("/odd", (429, {"Retry-After": "soon"}), (429, {"Retry-After": "-3"}))
    policy, waits = recording(http_retry(initial=0.5))

    assert policy(fetch, url)["status"] == 200
    assert waits == [0.5, 1.0]


def test_connection_refused_is_retried(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/"
    policy, waits = recording(http_retry(attempts=3, initial=0.5))

    with pytest.raises(urllib.error.URLError) as raised:
        policy(fetch, url)
    assert isinstance(raised.value.reason, ConnectionRefusedError)
    assert waits == [0.5, 1.0]


def test_other_exceptions_are_not_retried() -> None:
    policy, waits = recording(http_retry())
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("a bug in the task")

    with pytest.raises(KeyError):
        policy(broken)
    assert calls == [1] and waits == []


def test_asynchronous_policy_retries_coroutines(server: ScriptedServer) -> None:
    url = server.script("/async", (503, {"Retry-After": "0"}))
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def fetch_async(address: str) -> dict[str, Any]:
        return await asyncio.to_thread(fetch, address)

    policy = http_retry(asynchronous=True).copy(sleep=record)
    assert isinstance(policy, AsyncRetrying)
    assert asyncio.run(policy(fetch_async, url))["status"] == 200
    assert waits == [0.0]


def test_policy_pickles_with_plain_pickle_and_behaves_the_same(server: ScriptedServer) -> None:
    url = server.script("/pickled", (503, {}), (429, {"Retry-After": "2"}))
    restored = pickle.loads(pickle.dumps(http_retry(initial=0.5)))
    assert isinstance(restored, Retrying)
    policy, waits = recording(restored)

    assert policy(fetch, url)["status"] == 200
    assert waits == [0.5, 2.0]
    assert isinstance(pickle.loads(pickle.dumps(http_retry(asynchronous=True))), AsyncRetrying)


# -- through pylo ------------------------------------------------------------------


def test_local_multithread_records_attempts_in_get_failures(server: ScriptedServer, tmp_path: Path) -> None:
    urls = [
        server.script("/ok"),
        server.script("/flaky", (429, {"Retry-After": "0"}), (503, {})),
        server.script("/down", *[(503, {})] * 10),
        server.script("/denied", (401, {})),
    ]
    with Pylo.local_multithread(
        tmp_path / "store", 2, retry=http_retry(attempts=3, initial=0.01), progress=False
    ) as pylo:
        execution_id = pylo.start_from_scratch(urls, fetch)
        finished, unfinished = pylo.get_state(execution_id)
        failures = pylo.get_failures(execution_id)

    assert finished == urls[:2] and unfinished == urls[2:]
    assert [(f.input, f.exception_type, f.attempts) for f in failures] == [
        (urls[2], "urllib.error.HTTPError", 3),
        (urls[3], "urllib.error.HTTPError", 1),
    ]
    assert "503" in str(failures[0].message) and "401" in str(failures[1].message)
    assert server.requests == Counter({"/ok": 1, "/flaky": 3, "/down": 3, "/denied": 1})


def test_local_multiprocess_sends_the_policy_to_its_workers(server: ScriptedServer, tmp_path: Path) -> None:
    urls = [
        server.script("/p-flaky", (503, {"Retry-After": "0"})),
        server.script("/p-down", *[(504, {})] * 10),
        server.script("/p-denied", (403, {})),
    ]
    with Pylo.local_multiprocess(
        tmp_path / "store", 2, retry=http_retry(attempts=2, initial=0.01), progress=False
    ) as pylo:
        execution_id = pylo.start_from_scratch(urls, fetch)
        finished, _ = pylo.get_state(execution_id)
        failures = pylo.get_failures(execution_id)

    assert finished == urls[:1]
    assert [(f.input, f.attempts) for f in failures] == [(urls[1], 2), (urls[2], 1)]
    assert server.requests == Counter({"/p-flaky": 2, "/p-down": 2, "/p-denied": 1})


def test_failures_doc_block_runs_as_written(server: ScriptedServer, tmp_path: Path) -> None:
    """docs/failures.md's http_retry block, with the local server standing in for the API."""
    server.script("/items/0", (429, {"Retry-After": "0"}))
    server.script("/items/2", (401, {}))
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "failures.md").read_text(encoding="utf-8"), re.S)
    block = next(b for b in blocks if "http_retry()" in b)
    code = block.replace("https://api.example.com", server.base)
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [f"{server.base}/items/2 urllib.error.HTTPError 1"]
    assert server.requests == Counter({"/items/0": 2, "/items/1": 1, "/items/2": 1})


# -- what is recognised -------------------------------------------------------------


def test_urllib_http_error_status_and_retry_after(server: ScriptedServer) -> None:
    url = server.script("/limited", (429, {"Retry-After": "7"}))
    with pytest.raises(urllib.error.HTTPError) as raised:
        fetch(url)
    assert http_status(raised.value) == 429
    assert retry_after(raised.value) == 7.0
    assert is_transient_http_error(raised.value)


def _stand_in(module: str, name: str, *bases: type, **attributes: Any) -> type:
    """A class with the module and name a library gives it: all that duck typing sees."""
    return type(name, bases or (Exception,), {"__module__": module, "__qualname__": name, **attributes})


class _Response:
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = headers or {}


class _ErrorWithResponse(Exception):
    def __init__(self, message: str, response: _Response | None = None) -> None:
        super().__init__(message)
        self.response = response


# requests.exceptions: RequestException(IOError) > HTTPError, ConnectionError > SSLError, Timeout > ReadTimeout.
_RequestException = _stand_in("requests.exceptions", "RequestException", _ErrorWithResponse, OSError)
_RequestsHTTPError = _stand_in("requests.exceptions", "HTTPError", _RequestException)
_RequestsConnectionError = _stand_in("requests.exceptions", "ConnectionError", _RequestException)
_RequestsSSLError = _stand_in("requests.exceptions", "SSLError", _RequestsConnectionError)
_RequestsTimeout = _stand_in("requests.exceptions", "Timeout", _RequestException)
_RequestsReadTimeout = _stand_in("requests.exceptions", "ReadTimeout", _RequestsTimeout)
_RequestsTooManyRedirects = _stand_in("requests.exceptions", "TooManyRedirects", _RequestException)
# httpx._exceptions: HTTPError > RequestError > TransportError > ..., HTTPError > HTTPStatusError.
_HttpxHTTPError = _stand_in("httpx._exceptions", "HTTPError")
_HttpxStatusError = _stand_in("httpx._exceptions", "HTTPStatusError", _ErrorWithResponse, _HttpxHTTPError)
_HttpxRequestError = _stand_in("httpx._exceptions", "RequestError", _HttpxHTTPError)
_HttpxTransportError = _stand_in("httpx._exceptions", "TransportError", _HttpxRequestError)
_HttpxConnectError = _stand_in("httpx._exceptions", "ConnectError", _HttpxTransportError)
_HttpxReadTimeout = _stand_in("httpx._exceptions", "ReadTimeout", _HttpxTransportError)
_HttpxUnsupportedProtocol = _stand_in("httpx._exceptions", "UnsupportedProtocol", _HttpxTransportError)
_HttpxDecodingError = _stand_in("httpx._exceptions", "DecodingError", _HttpxRequestError)


@pytest.mark.parametrize(
    ("exc", "status", "transient"),
    [
        (_RequestsHTTPError("429", _Response(429)), 429, True),
        (_RequestsHTTPError("502", _Response(502)), 502, True),
        (_RequestsHTTPError("404", _Response(404)), 404, False),
        (_RequestsHTTPError("500", _Response(500)), 500, False),
        (_RequestsConnectionError("refused"), None, True),
        (_RequestsSSLError("handshake"), None, True),
        (_RequestsReadTimeout("read timed out"), None, True),
        (_RequestsTooManyRedirects("loop"), None, False),
        (_HttpxStatusError("503", _Response(503)), 503, True),
        (_HttpxStatusError("401", _Response(401)), 401, False),
        (_HttpxConnectError("refused"), None, True),
        (_HttpxReadTimeout("timed out"), None, True),
        (_HttpxUnsupportedProtocol("ftp://"), None, False),
        (_HttpxDecodingError("bad gzip"), None, False),
        (ConnectionResetError("reset"), None, True),
        (TimeoutError("timed out"), None, True),
        (urllib.error.URLError(ConnectionRefusedError(111, "refused")), None, True),
        (ValueError("bad"), None, False),
        # `code` alone is too common an attribute to mean an HTTP status.
        (_stand_in("grpc", "RpcError", code=503)("unavailable"), None, False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_recognises_requests_httpx_and_urllib_errors_by_duck_typing(
    exc: BaseException, status: int | None, transient: bool
) -> None:
    assert http_status(exc) == status
    assert is_transient_http_error(exc) is transient


def test_retry_after_from_requests_and_httpx_responses() -> None:
    assert retry_after(_RequestsHTTPError("429", _Response(429, {"Retry-After": "3"}))) == 3.0
    assert retry_after(_HttpxStatusError("503", _Response(503, {"retry-after": "1.5"}))) == 1.5
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    now = dt.datetime(2015, 10, 21, 7, 27, 50, tzinfo=dt.timezone.utc)
    assert retry_after(_RequestsHTTPError("429", _Response(429, {"Retry-After": date})), now=now) == 10.0
    assert retry_after(_RequestsHTTPError("429", _Response(429, {"Retry-After": date}))) == 0.0  # long past
    assert retry_after(_RequestsHTTPError("429", _Response(429))) is None
    assert retry_after(ConnectionResetError()) is None


def test_custom_statuses_replace_the_defaults() -> None:
    assert sorted(RETRY_STATUSES) == [429, 502, 503, 504]
    policy, waits = recording(http_retry(retry_statuses={500}, initial=0.5, attempts=2))
    calls = Counter[str]()

    def call(status: int) -> None:
        calls[str(status)] += 1
        raise _RequestsHTTPError(str(status), _Response(status))

    for status in (500, 503):
        with pytest.raises(_RequestsHTTPError):
            policy(call, status)
    assert calls == Counter({"500": 2, "503": 1})
    assert waits == [0.5]


# -- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attempts": 0}, ValueError, "attempts must be >= 1, got 0"),
        ({"attempts": 2.0}, TypeError, "attempts must be an int >= 1, got float 2.0"),
        ({"attempts": True}, TypeError, "attempts must be an int >= 1, got bool True"),
        ({"initial": -1}, ValueError, "initial must be a finite number of seconds >= 0, got -1"),
        ({"initial": "1"}, TypeError, "initial must be a number of seconds >= 0, got str '1'"),
        ({"maximum": float("inf")}, ValueError, "maximum must be a finite number of seconds >= 0, got inf"),
        ({"initial": 10, "maximum": 5}, ValueError, "maximum must be >= initial (10), got 5"),
        ({"max_retry_after": float("nan")}, ValueError, "max_retry_after must be a finite number of seconds >= 0"),
        ({"maximum": 604_801}, ValueError, "maximum must be at most 604800 seconds (one week), got 604801"),
        ({"retry_statuses": 503}, TypeError, "retry_statuses must be a collection of HTTP statuses such as"),
        ({"retry_statuses": {"503"}}, TypeError, "retry_statuses must hold int statuses, got str '503'"),
        ({"retry_statuses": {200}}, ValueError, "retry_statuses must hold error statuses from 400 to 599, got 200"),
        ({"asynchronous": 1}, TypeError, "asynchronous must be True or False, got int 1"),
    ],
)
def test_bad_arguments_are_refused_with_exact_messages(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        http_retry(**kwargs)
