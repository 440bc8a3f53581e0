"""What the file store keeps beside each execution's logs: its resume claim and its label index.

* ``executions/<id>/claim.json``: the claim of the resume running now (see
  :meth:`~pylo.stores.base.Store.claim_execution`), read and replaced under an
  exclusive ``flock`` of the execution's directory, which serializes
  claimers in every process and is dropped by the kernel if one dies.
* ``labels/<digest>/<id>``: one empty file per execution carrying the label
  whose ``key``/``value`` hash to ``<digest>``. Listing executions with given
  labels reads the index directories of those labels and only the records
  they name, instead of every execution; a reader still checks each
  record's labels (an entry may outlive a failed creation).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from pylo.stores import _filelog, _filerecord
from pylo.stores._common import make_private_dirs
from pylo.stores.base import Claim

__all__ = [
    "CLAIM_NAME",
    "LABELS_DIR",
    "drop_claim",
    "index_labels",
    "indexed_names",
    "locked",
    "swap_claim",
    "unindex_labels",
]

#: Name of an execution's claim file.
CLAIM_NAME = "claim.json"
#: Directory of the label index, under the store's root.
LABELS_DIR = "labels"


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on a directory; FileNotFoundError when it is gone."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _read_claim(location: str, path: Path, execution_id: str) -> Claim | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(data)
        return Claim(
            execution_id,
            _filerecord.get_field(document, "claimant", str),
            _filerecord.get_field(document, "pid", int),
            _filerecord.get_field(document, "host", str),
            float(_filerecord.get_field(document, "claimed_at", (int, float))),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise _filelog.damaged(location, path, f"cannot be read as a claim ({type(exc).__name__}: {exc})") from exc


def swap_claim(location: str, directory: Path, claim: Claim, replacing: Claim | None) -> Claim | None:
    """Set ``claim`` unless someone other than ``replacing`` holds one; return that holder's claim.

    Raises:
        FileNotFoundError: The execution's directory is gone.
        StoreError: The claim file is damaged.
    """
    with locked(directory):
        path = directory / CLAIM_NAME
        current = _read_claim(location, path, claim.execution_id)
        if current is not None and (replacing is None or not current.same_holder(replacing)):
            return current
        document = {"claimant": claim.claimant, "pid": claim.pid, "host": claim.host, "claimed_at": claim.claimed_at}
        _filelog.write_atomically(path, json.dumps(document).encode() + b"\n")
        return None


def drop_claim(location: str, directory: Path, execution_id: str, claimant: str) -> None:
    """Remove the claim if ``claimant`` holds it (an execution that is gone has none)."""
    with contextlib.suppress(FileNotFoundError), locked(directory):
        path = directory / CLAIM_NAME
        current = _read_claim(location, path, execution_id)
        if current is not None and current.claimant == claimant:
            os.unlink(path)


def _digest(key: str, value: str) -> str:
    # Labels may be long or hold any character: a fixed-size name of both.
    return hashlib.sha256(f"{key}\0{value}".encode()).hexdigest()[:32]


def index_labels(root: Path, name: str, labels: Mapping[str, str]) -> None:
    """Add the execution whose directory is ``name`` to the index of each of its labels."""
    for key, value in labels.items():
        directory = root / LABELS_DIR / _digest(key, value)
        make_private_dirs(directory)
        os.close(os.open(directory / name, os.O_WRONLY | os.O_CREAT, 0o600))


def unindex_labels(root: Path, name: str, labels: Mapping[str, str]) -> None:
    """Take the execution whose directory is ``name`` out of the index of each of its labels."""
    for key, value in labels.items():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / LABELS_DIR / _digest(key, value) / name)


def indexed_names(root: Path, labels: Mapping[str, str]) -> set[str]:
    """Directory names of the executions indexed under every one of ``labels``."""
    found: set[str] | None = None
    for key, value in labels.items():
        try:
            names = set(os.listdir(root / LABELS_DIR / _digest(key, value)))
        except FileNotFoundError:
            return set()
        found = names if found is None else found & names
        if not found:
            return set()
    return found or set()
