"""A throwaway PostgreSQL server for tests, CI and benchmarks.

Used three ways:

* by pytest, through the session fixture :func:`postgres_url` (imported by
  ``tests/conftest.py``): the URL in ``PYLO_TEST_POSTGRES_URL`` when it is
  set, else a server started here for the session, else a skip that says why;
* by ``.ci/run``, as a script, so that CI and the fixture start a server the
  same way::

      python3 tests/pg_server.py start DIR   # prints the database URL
      python3 tests/pg_server.py stop DIR

* by ``benchmarks/flush_throughput.py``, through :func:`start` and
  :func:`stop`.

The server is the machine's own PostgreSQL (``initdb`` and ``pg_ctl`` from
``/usr/lib/postgresql/*/bin`` or ``PATH``), listening on 127.0.0.1 only, on a
free port, with trust authentication for the role ``pylo``, its data in a
directory of its own. PostgreSQL refuses to run as root, so under root it runs
as the ``postgres`` OS user (Debian's package creates it), or ``nobody``.

Only the standard library is needed to start and stop a server (the script
runs before anything is installed); the helpers that talk to a running server
import SQLAlchemy when called.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import pytest
except ImportError:  # the script and the benchmark may run where pytest is not installed
    pytest = None  # type: ignore[assignment]

#: Environment variable with the URL of a disposable PostgreSQL database.
URL_VARIABLE = "PYLO_TEST_POSTGRES_URL"

#: Role and database every server started here has.
ROLE = "pylo"
DATABASE = "pylo_test"

#: Seconds initdb, pg_ctl and createdb may take before we give up.
_TIMEOUT = 120

#: Settings that make a test server fast. They give up durability across a
#: machine crash, which a throwaway server does not need; benchmarks start
#: theirs with ``durable=True`` to measure what users get.
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")

#: Advisory lock key serializing CREATE SCHEMA between test processes ("pgsc").
_SCHEMA_LOCK_KEY = 0x70677363


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


@dataclass(frozen=True)
class Server:
    """A server started by :func:`start`."""

    base: Path
    bin_dir: Path
    port: int
    url: str


# -- starting and stopping ---------------------------------------------------------


def find_bin_dir() -> Path:
    """The directory of the newest ``initdb`` + ``pg_ctl`` pair on this machine.

    Raises:
        Unavailable: No such pair is installed.
    """
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise Unavailable(
        "no PostgreSQL server binaries (initdb and pg_ctl) in /usr/lib/postgresql/*/bin or on PATH; "
        f"install Debian's postgresql package, or set {URL_VARIABLE} to a disposable database"
    )


def _server_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as: None for ourselves, another one under root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise Unavailable("running as root, and there is neither a postgres nor a nobody user to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(command: list[str], user: pwd.struct_passwd | None, cwd: Path) -> str:
    """Run a server program (as ``user``), returning its output; raise Unavailable on failure."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
            **kwargs,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{Path(command[0]).name} failed: {exc}") from exc
    if done.returncode != 0:
        raise Unavailable(f"{Path(command[0]).name} exited with {done.returncode}: {done.stderr or done.stdout}")
    return done.stdout


def _log_tail(base: Path) -> str:
    try:
        lines = (base / "server.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-15:])


def start(base: Path, *, durable: bool = False) -> Server:
    """Create a cluster in ``base`` and start a server on 127.0.0.1.

    Args:
        base: An empty directory (created if missing) for the data and the
            log. It is handed to the server's OS user.
        durable: Keep PostgreSQL's default durability settings (for
            benchmarks); the default turns fsync off (for tests).

    Returns:
        The server, with the URL of its database :data:`DATABASE`.

    Raises:
        Unavailable: There is no server to run, or it would not start.
    """
    bin_dir = find_bin_dir()
    user = _server_user()
    base.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    base.chmod(0o700)
    data = base / "data"
    _run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", ROLE, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
        user,
        base,
    )
    # TCP only: a Unix socket path has a length limit a deep temporary
    # directory can exceed (pg_ctl runs the server through /bin/sh, which
    # turns '' into an empty value).
    settings = ["listen_addresses=127.0.0.1", "unix_socket_directories=''", "max_connections=200"]
    if not durable:
        settings += _FAST_SETTINGS
    failure = ""
    for _attempt in range(3):
        # A port found free may be taken before the server binds it: try another.
        port = _free_port()
        options = " ".join(f"-c {setting}" for setting in [f"port={port}", *settings])
        command = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60"]
        try:
            _run([*command, "-o", options, "start"], user, base)
        except Unavailable as exc:
            failure = f"{exc}\n{_log_tail(base)}"
            continue
        server = Server(base, bin_dir, port, f"postgresql+psycopg://{ROLE}@127.0.0.1:{port}/{DATABASE}")
        try:
            _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE, DATABASE], user, base)
        except Unavailable:
            stop(server.base)
            raise
        return server
    raise Unavailable(f"the PostgreSQL server in {base} would not start: {failure}")


def stop(base: Path) -> None:
    """Stop the server whose directory is ``base`` (if it runs) and delete the directory."""
    data = base / "data"
    if (data / "postmaster.pid").exists():
        try:
            _run(
                [str(find_bin_dir() / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], _server_user(), base
            )
        except Unavailable as exc:
            print(f"pg_server: could not stop the server in {base}: {exc}", file=sys.stderr)
    shutil.rmtree(base, ignore_errors=True)


# -- schemas: one per test -------------------------------------------------------


def schema_name(key: str) -> str:
    """A schema name of PostgreSQL's plain form, the same for the same key."""
    return "pylo_test_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def url_with_schema(url: str, schema: str) -> str:
    """``url`` with libpq's ``options`` set so that connections use only ``schema``.

    SQLAlchemy's psycopg dialect hands query parameters to ``psycopg.connect``,
    which hands them to libpq, so any client given this URL (``Pylo``'s
    ``store=`` included) works in that schema.
    """
    from sqlalchemy.engine import make_url

    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        raise ValueError(f"not a plain schema name: {schema!r}")
    return make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)


def create_schema(url: str, schema: str) -> None:
    """Create ``schema`` in the database of ``url`` unless it exists."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            # CREATE SCHEMA IF NOT EXISTS is not safe against itself when the
            # processes of one test race; the lock makes it so.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        engine.dispose()


def drop_schema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it, if it exists."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_schema(url: str, key: str) -> Iterator[str]:
    """A URL selecting an empty schema named after ``key``, dropped afterwards.

    A schema of that name left over by an earlier run that died is dropped
    first.
    """
    schema = schema_name(key)
    drop_schema(url, schema)
    create_schema(url, schema)
    try:
        yield url_with_schema(url, schema)
    finally:
        drop_schema(url, schema)


# -- the pytest fixture ----------------------------------------------------------


def _check_reachable(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


def _postgres_url() -> Iterator[str]:
    assert pytest is not None
    given = os.environ.get(URL_VARIABLE)
    if given:
        try:
            _check_reachable(given)
        except Exception as exc:  # any failure means the same: the URL is unusable
            pytest.fail(f"{URL_VARIABLE} is set but its database cannot be reached: {exc}", pytrace=False)
        yield given
        return
    try:
        import psycopg  # noqa: F401 - only checks that the driver is installed
    except ImportError:
        pytest.skip("PostgreSQL tests need psycopg: pip install -e '.[test]'")
    base = Path(tempfile.mkdtemp(prefix="pylo-pg-"))
    try:
        server = start(base)
    except Unavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server could be started: {exc}")
    # Spawned test processes find the server through the environment.
    os.environ[URL_VARIABLE] = server.url
    try:
        yield server.url
    finally:
        os.environ.pop(URL_VARIABLE, None)
        stop(base)


if pytest is not None:
    #: Session fixture: the URL of a PostgreSQL database for tests, or a skip.
    postgres_url = pytest.fixture(scope="session", name="postgres_url")(_postgres_url)


# -- command line, for .ci/run ---------------------------------------------------


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: pg_server.py start|stop DIR", file=sys.stderr)
        return 2
    base = Path(argv[1]).resolve()
    if argv[0] == "stop":
        stop(base)
        return 0
    try:
        server = start(base)
    except Unavailable as exc:
        print(f"pg_server: {exc}", file=sys.stderr)
        return 1
    print(server.url)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
