"""A nightly pipeline that meets bad movies, is fixed and resumed: only what did not finish runs again.

Run it from anywhere (it keeps its store in ./pylo-pipeline-example-store):

    python examples/pipeline_movies.py

The pipeline lists 200 movie ids, downloads each one in a batch node (one
pylo execution over the ids), totals the running time, counts genres on the
side and writes a report. Four movies have titles the downloader cannot
parse yet, so the first run fails part way: the download node fails with 4
of its 200 inputs unfinished, and the nodes after it do not run. The script
shows the run, "fixes the bug" and resumes: the listing and the genre count
keep their results, the download reruns only its 4 unfinished movies, and
the total and the report run for the first time.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from pylo import Pylo
from pylo.pipeline import Pipeline, PipelineFailed, task

STORE_DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "pylo-pipeline-example-store")

# What ran, by task and input: how the script shows what a resume reruns.
CALLS: Counter[str] = Counter()
_calls_lock = threading.Lock()
PARSER = {"fixed": False}


def ran(name: str) -> None:
    with _calls_lock:
        CALLS[name] += 1


@task
def list_movie_ids(day: str) -> list[int]:
    ran("list_movie_ids")
    return list(range(1, 201))


@task
def download(movie_id: int) -> dict[str, Any]:
    ran("download")
    if movie_id % 50 == 7 and not PARSER["fixed"]:
        raise ValueError(f"cannot parse the title of movie {movie_id}: 'Am\u00e9lie (2001)'")
    return {"id": movie_id, "title": f"Movie {movie_id}", "minutes": 80 + movie_id % 60}


@task
def total_minutes(rows: list[dict[str, Any]]) -> int:
    ran("total_minutes")
    return sum(row["minutes"] for row in rows)


@task
def count_genres(day: str) -> dict[str, int]:
    ran("count_genres")
    return {"drama": 120, "comedy": 80}


@task
def report(minutes: int, genres: dict[str, int], day: str) -> str:
    ran("report")
    return f"{day}: {minutes:,} minutes of film, {sum(genres.values())} movies by genre"


def nightly(day: str) -> Pipeline:
    ids = list_movie_ids.send(day)
    rows = download.map(ids)  # a batch node: one execution over the ids
    return report.send(total_minutes.send(rows), count_genres.send(day), day)


def show(pylo: Pylo, run_id: str) -> None:
    record = pylo.get_pipeline(run_id)
    print(f"run {record.id}: {record.status}")
    for node in record.nodes:
        line = f"  {node.display_name:<15} {node.state}"
        if node.execution_id is not None:
            line += f"  (execution {node.execution_id})"
        print(line)


def main() -> None:
    shutil.rmtree(STORE_DIR, ignore_errors=True)  # start afresh each time
    flow = nightly("2026-11-28")
    with Pylo.local_multithread(STORE_DIR, number_of_workers=8) as pylo:
        run_id = pylo.run_pipeline(flow)
        show(pylo, run_id)
        try:
            pylo.get_pipeline_result(run_id)
        except PipelineFailed as failed:
            for node in failed.failures:
                print(f"failed node: {node.display_name}: {node.failure.message if node.failure else '?'}")
                if node.execution_id is not None:
                    for failure in pylo.get_failures(node.execution_id):
                        print(f"  input {failure.input}: {failure.exception_type}: {failure.message}")
        print(f"first run called: {dict(sorted(CALLS.items()))}")

        PARSER["fixed"] = True  # the fix: in real life, edit download() and run the script again
        CALLS.clear()
        resumed = pylo.resume_pipeline(run_id, flow)
        show(pylo, resumed)
        print(f"the resume called: {dict(sorted(CALLS.items()))}")
        print(f"result: {pylo.get_pipeline_result(resumed)}")


if __name__ == "__main__":
    main()
