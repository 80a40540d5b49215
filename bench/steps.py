"""Durable steps' cost: what a replay of a 10-step job costs beside a plain job.

    python -m bench.steps [--db sqlite --db postgresql --db mysql] [--jobs 200]

Three runs of N jobs each, with the inline executor (one process, no pool, so
the figures are the run path's own), timed and with the SQL statements they
sent counted:

- a no-op job (the baseline, measured in the same run);
- the first run of a job of 10 steps that then sleeps: 10 step records written;
- its replay after the sleep: the 10 steps return their records (read in one
  SELECT), the sleep is over, the job completes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from bench.common import bench_app, database_url, print_table
from flask_queue import Job, Queue

STEPS = 10


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def make_queue(clock: Clock) -> Queue:
    queue = Queue(clock=clock)

    @queue.handler("noop")
    def noop(job: Job[Any]) -> None:
        return None

    @queue.handler("ten")
    def ten(job: Job[Any]) -> None:
        for i in range(STEPS):
            job.step(f"s{i}", lambda i=i: i)
        job.sleep("pause", "1h")

    return queue


def _phase(app: Any, clock: Clock, counter: list[int], jobs: int) -> tuple[float, float]:
    """Produce until the due jobs ran: (ms per job, statements per job)."""
    queue = app.extensions["queue"].queue
    counter[0] = 0
    started = time.perf_counter()
    while queue.produce().claimed:
        pass
    seconds = time.perf_counter() - started
    return seconds * 1000 / jobs, counter[0] / jobs


def measure(kind: str, jobs: int, tmpdir: str) -> list[list[str]]:
    clock = Clock()
    queue = make_queue(clock)
    url = database_url(kind, tmpdir)
    with bench_app(url, queue, QUEUE_EXECUTOR="inline") as app:
        counter = [0]
        engine = app.extensions["queue"].store.engine

        def count(*_: Any) -> None:
            counter[0] += 1

        sa.event.listen(engine, "before_cursor_execute", count)
        queue.enqueue_many("noop", [None] * jobs, delay="1s")
        queue.enqueue_many("ten", [None] * jobs, delay="2h")
        clock.now += timedelta(seconds=2)
        noop = _phase(app, clock, counter, jobs)
        clock.now += timedelta(hours=2)
        first = _phase(app, clock, counter, jobs)
        clock.now += timedelta(hours=2)
        replay = _phase(app, clock, counter, jobs)
        sa.event.remove(engine, "before_cursor_execute", count)
    rows = []
    for label, (ms, statements) in (
        ("no-op job (baseline)", noop),
        (f"{STEPS} steps, first run (then a sleep)", first),
        (f"{STEPS} steps, replayed after the sleep", replay),
    ):
        rows.append([kind, label, f"{ms:.2f} ms", f"{statements:.1f}", f"{ms / noop[0]:.2f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql", "mysql"])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for kind in args.db or ["sqlite"]:
            rows += measure(kind, args.jobs, tmpdir)
    print_table(
        f"Durable steps: a run of a {STEPS}-step job beside a no-op job ({args.jobs} jobs each,"
        " inline executor)",
        ["database", "run", "per job", "SQL statements per job", "vs no-op"],
        rows,
    )


if __name__ == "__main__":
    main()
