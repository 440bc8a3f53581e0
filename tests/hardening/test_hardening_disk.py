"""A store that cannot be written stops the execution with a clear StoreError; the snapshot survives.

A child process runs an execution with its file size limited
(``RLIMIT_FSIZE``, SIGXFSZ ignored: writes past the limit fail with EFBIG,
as on a full disk). Its first inputs succeed and are flushed; later ones
fail with large messages until a flush cannot be written. The parent then
checks the snapshot as of the last good flush and resumes it to the end.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
from contract_tasks import calls, logged
from hardening_tasks import run_until_disk_full

from pylo import ExecutionStatus, Pylo

#: Bytes any one file of the child may grow to: room for the inputs and the
#: first flushes, not for dozens of 64 KB failure messages.
LIMIT = 1 << 20
FIRST_FAILING = 500
INPUTS = list(range(2000))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("store_name", ["sqlite", "files"])
def test_a_write_that_fails_stops_the_run_and_the_last_good_flush_resumes(tmp_path: Path, store_name: str) -> None:
    store_dir = tmp_path / "store"
    report = tmp_path / "report.json"
    child = multiprocessing.get_context("spawn").Process(
        target=run_until_disk_full, args=(str(store_dir), store_name, LIMIT, FIRST_FAILING, str(report))
    )
    child.start()
    child.join(90)
    assert not child.is_alive(), "the run hung after its store stopped taking writes"
    assert child.exitcode == 0
    outcome = json.loads(report.read_text(encoding="utf-8"))

    # A clear error, naming the store, and saying why.
    assert outcome["raised"] is not None, "the run ended as if nothing had happened"
    assert outcome["store_error"], outcome
    assert str(store_dir) in outcome["message"]
    # The cause as the OS or SQLite words it: EFBIG, SQLITE_FULL or SQLITE_IOERR.
    assert re.search("too large|full|I/O error", outcome["message"]), outcome["message"]

    with Pylo.local_multithread(store_dir, 2, store=store_name, progress=False) as pylo:
        record = pylo.get_execution("full")
        # The full final flush cannot be written, but the status-only write
        # that follows it is small enough to fit: readers elsewhere see the end.
        assert record.status is ExecutionStatus.ABORTED
        assert record.stop_reason == "aborted" and (record.stop_detail or "").startswith("the store failed: ")
        finished, unfinished = pylo.get_state("full")
        assert sorted(finished + unfinished) == INPUTS
        assert finished == sorted(finished)
        assert finished, "no flush made it before the store filled up"
        assert set(finished) <= set(range(FIRST_FAILING)), "an input that failed is marked finished"
        assert record.finished == len(finished)

        log = str(tmp_path / "resume.log")
        resumed = pylo.start_from_past_execution("full", partial(logged, log, 0))
        rerun = Counter(int(line) for line in calls(log))
        assert sorted(rerun) == unfinished and max(rerun.values()) == 1
        assert pylo.get_state(resumed) == (INPUTS, [])
        assert pylo.get_execution(resumed).status is ExecutionStatus.COMPLETED
        # The resume left the failed execution as it was.
        assert pylo.get_state("full") == (finished, unfinished)
