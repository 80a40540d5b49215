"""Does a draining worker's memory stay flat? (issue 22, item 4)

    python -m bench.memory [--jobs 1000000] [--db postgresql] [--chunk 100000]

Seeds ``--jobs`` due no-op jobs (``enqueue_many``, in chunks), then runs
``work(concurrency=4, interval=1.0)`` on them in one process, and prints the
process's RSS (``/proc/self/status`` VmRSS) after the first 10,000 jobs and after
the last, with the difference. The issue asks for at most 20 MB between them at
1,000,000 jobs on PostgreSQL. ``make bench-memory`` runs that; the figures go in
the README.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from bench.common import bench_app, database_url, make_queue, print_table
from flask_queue import Queue
from flask_queue.worker import work

FIRST = 10_000


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_due(queue: Queue) -> None:
    """As ``bench.common.seed_due``, once for every chunk."""
    store = queue.store
    past = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=1)
    with store.engine.begin() as conn:
        conn.execute(sa.update(store.table).values(run_at=past, occurrence_at=None))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--db", default="postgresql", choices=["postgresql", "mysql", "sqlite"])
    parser.add_argument("--chunk", type=int, default=100_000)
    args = parser.parse_args()
    if args.jobs <= FIRST:
        raise SystemExit(f"--jobs must be more than {FIRST:,}")
    with tempfile.TemporaryDirectory() as tmp:
        queue = make_queue()
        with bench_app(database_url(args.db, tmp), queue) as app, app.app_context():
            seeded = 0
            started = time.perf_counter()
            while seeded < args.jobs:  # an hour out, then all made due at once
                n = min(args.chunk, args.jobs - seeded)
                queue.enqueue_many("noop", [None] * n, delay="1h")
                seeded += n
            make_due(queue)
            seed_seconds = time.perf_counter() - started
            before = rss_mb()

            def drain(n: int) -> float:
                t = time.perf_counter()
                ran = work(queue, concurrency=4, interval=1.0, max_jobs=n, report=lambda _: None)
                assert ran == n, f"ran {ran} of {n}"
                return time.perf_counter() - t

            first_seconds = drain(FIRST)
            first = rss_mb()
            rest_seconds = drain(args.jobs - FIRST)
            last = rss_mb()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print_table(
        f"worker RSS while draining {args.jobs:,} due no-op jobs on {args.db}"
        f" (seeded in {seed_seconds:,.0f} s); {stamp}",
        ["point", "jobs run", "RSS", "vs after 10,000", "drain rate"],
        [
            ["before the drain", "0", f"{before:,.1f} MB", "-", "-"],
            [
                "after 10,000",
                f"{FIRST:,}",
                f"{first:,.1f} MB",
                "+0.0 MB",
                f"{FIRST / first_seconds:,.0f} jobs/s",
            ],
            [
                "after the last",
                f"{args.jobs:,}",
                f"{last:,.1f} MB",
                f"{last - first:+,.1f} MB",
                f"{(args.jobs - FIRST) / rest_seconds:,.0f} jobs/s",
            ],
        ],
    )


if __name__ == "__main__":
    main()
