"""``flask queue work`` with its CLI defaults, draining a backlog of no-op jobs.

    python -m bench.drain [--jobs 2000] [--db postgresql|mysql|sqlite] [--keys 1000]

Prints jobs/s for ``work(concurrency=4, interval=1.0)`` — what the CLI runs when
given no options — on a backlog that is all due before the worker starts.

With ``--keys N``, each database also drains a queue limited per key
(``concurrency=2`` per key, the key a function of the payload, N keys), in
alternating rounds with the unlimited drain (``--rounds``), and prints the ratio.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from typing import Any

from bench.common import bench_app, database_url, make_queue, median, print_table, seed_due
from flask_queue import Job, Queue
from flask_queue.worker import work


def keyed_queue(keys: int) -> Queue:
    """The no-op handler, limited to 2 runs at once per key (of ``keys``)."""
    queue = Queue()
    rng = random.Random(3)
    names = [f"tenant-{n}" for n in range(keys)]

    @queue.handler("noop", concurrency=2, key=lambda payload: rng.choice(names))
    def noop(job: Job[Any]) -> None:
        return None

    return queue


def drain(url: str, jobs: int, keys: int | None = None) -> float:
    queue = make_queue() if keys is None else keyed_queue(keys)
    with bench_app(url, queue) as app, app.app_context():
        seed_due(queue, jobs)  # all due, none started by the seeding process
        if keys is not None:  # stored before the drain, as a produce would
            queue.store.sync_limits(queue.declared_limits())
        started = time.monotonic()
        ran = work(queue, concurrency=4, interval=1.0, max_jobs=jobs, report=lambda _: None)
        assert ran == jobs
        return jobs / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--db", action="append", choices=["postgresql", "mysql", "sqlite"])
    parser.add_argument("--keys", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db or ["postgresql", "sqlite"]:
            if args.keys is None:
                rate = drain(database_url(kind, tmp), args.jobs)
                rows.append([kind, f"{args.jobs:,}", f"{rate:,.0f} jobs/s"])
                continue
            free: list[float] = []
            keyed: list[float] = []
            for _ in range(args.rounds):  # alternating: the machine's noise hits both
                free.append(drain(database_url(kind, tmp), args.jobs))
                keyed.append(drain(database_url(kind, tmp), args.jobs, args.keys))
            base, limited = median(free), median(keyed)
            rows.append([kind, f"{args.jobs:,}", "unlimited", f"{base:,.0f} jobs/s", "1.00x"])
            rows.append(
                [
                    kind,
                    f"{args.jobs:,}",
                    f"2 at once per key, {args.keys:,} keys",
                    f"{limited:,.0f} jobs/s",
                    f"{limited / base:.2f}x",
                ]
            )
    if args.keys is None:
        print_table(
            "flask queue work, CLI defaults (concurrency 4, 1 s idle poll)",
            ["database", "jobs", "drain"],
            rows,
        )
        return
    print_table(
        f"flask queue work, CLI defaults; median of {args.rounds} alternating rounds",
        ["database", "jobs", "limits", "drain", "vs unlimited"],
        rows,
    )


if __name__ == "__main__":
    main()
