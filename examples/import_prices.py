"""A batch job that meets bad records and a flaky service, then is fixed and resumed.

Run it from anywhere (it keeps its store in ./pylo-example-store):

    python examples/import_prices.py

It imports 5,000 price records. Some records are malformed, and a simulated
remote service drops some calls (retried) and is down for others. The first run keeps going past
them; pylo records which records finished and why the others failed. The
script then prints the failures grouped by cause, "fixes the bug" (a second
version of the task that handles malformed records) and resumes: only the
unfinished records run again.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from pylo import Pylo

STORE_DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "pylo-example-store")
IMPORTED: dict[int, float] = {}  # stands in for a database table


def make_records(count: int) -> list[str]:
    """Raw lines as a feed would deliver them; every 97th one is malformed."""
    rng = random.Random(7)
    lines = []
    for record_id in range(count):
        if record_id % 97 == 13:
            lines.append(f'{{"id": {record_id}, "price": "12,50 EUR"}}')  # not a number
        else:
            lines.append(json.dumps({"id": record_id, "price": round(rng.uniform(1, 500), 2)}))
    return lines


_attempts: Counter[int] = Counter()
_service = {"outage": True}


def call_pricing_service(record_id: int, price: float) -> float:
    """A remote call that fails like real services do.

    Every 31st record meets a transient error on its first attempt (the
    retry policy absorbs it). During the first run the service is also down
    for every 250th record, longer than the retries last.
    """
    _attempts[record_id] += 1
    if record_id % 31 == 0 and _attempts[record_id] == 1:
        raise ConnectionError(f"pricing service reset the connection for record {record_id}")
    if _service["outage"] and record_id % 250 == 7:
        raise TimeoutError(f"pricing service timed out for record {record_id}")
    return round(price * 1.2, 2)


def import_record(line: str) -> None:
    """Version 1 of the task: assumes every price is a number."""
    record = json.loads(line)
    IMPORTED[record["id"]] = call_pricing_service(record["id"], float(record["price"]))


def import_record_fixed(line: str) -> None:
    """Version 2, after reading the failures: accept '12,50 EUR' style prices."""
    record = json.loads(line)
    price = record["price"]
    if isinstance(price, str):
        price = float(price.replace("EUR", "").strip().replace(",", "."))
    IMPORTED[record["id"]] = call_pricing_service(record["id"], price)


def main() -> None:
    # Retry flaky calls up to 3 times; anything else fails the record at once.
    retry = Retrying(
        retry=retry_if_exception_type((ConnectionError, TimeoutError)),
        stop=stop_after_attempt(3),
        wait=wait_fixed(0.01),
        reraise=True,
    )
    pylo = Pylo.local_multithread(STORE_DIR, number_of_workers=4, retry=retry)

    records = make_records(5_000)
    first_id = pylo.start_from_scratch(records, import_record)
    finished, unfinished = pylo.get_state(first_id)
    print(f"first run {first_id}: {len(finished):,} finished, {len(unfinished):,} unfinished")

    # Group failures by cause: the exception type and its message with numbers blanked out.
    failures = pylo.get_failures(first_id)
    causes = Counter((f.exception_type, re.sub(r"\d+", "#", f.message or "")) for f in failures)
    print("failures by cause:")
    for (exc_type, message), count in causes.most_common():
        print(f"  {count:5d} x {exc_type}: {message}")
    example = failures[0]
    print(f"first failure: position {example.position}, after {example.attempts} attempts, input {example.input}")

    _service["outage"] = False  # the service is back; the code is fixed
    resumed_id = pylo.start_from_past_execution(first_id, import_record_fixed)
    finished, unfinished = pylo.get_state(resumed_id)
    print(f"resumed as {resumed_id}: {len(finished):,} finished, {len(unfinished):,} unfinished")

    print("executions in the store:")
    for record in pylo.list_executions()[-2:]:
        print(
            f"  {record.id}  parent={record.parent_id}  status={record.status}  "
            f"finished={record.finished:,}  failed={record.failed:,}  pending={record.pending:,}"
        )
    pylo.close()
    if unfinished:
        sys.exit(1)


if __name__ == "__main__":
    main()
