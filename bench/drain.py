"""``flask queue work`` with its CLI defaults, draining a backlog of no-op jobs.

    python -m bench.drain [--jobs 2000] [--db postgresql|mysql|sqlite]

Prints jobs/s for ``work(concurrency=4, interval=1.0)`` — what the CLI runs when
given no options — on a backlog that is all due before the worker starts.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from bench.common import bench_app, database_url, make_queue, print_table, seed_due
from flask_queue.worker import work


def drain(url: str, jobs: int) -> float:
    queue = make_queue()
    with bench_app(url, queue) as app, app.app_context():
        seed_due(queue, jobs)  # all due, none started by the seeding process
        started = time.monotonic()
        ran = work(queue, concurrency=4, interval=1.0, max_jobs=jobs, report=lambda _: None)
        assert ran == jobs
        return jobs / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--db", action="append", choices=["postgresql", "mysql", "sqlite"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db or ["postgresql", "sqlite"]:
            rate = drain(database_url(kind, tmp), args.jobs)
            rows.append([kind, f"{args.jobs:,}", f"{rate:,.0f} jobs/s"])
    print_table(
        "flask queue work, CLI defaults (concurrency 4, 1 s idle poll)",
        ["database", "jobs", "drain"],
        rows,
    )


if __name__ == "__main__":
    main()
