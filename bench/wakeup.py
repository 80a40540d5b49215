"""Enqueue -> start latency of an idle ``flask queue work``: NOTIFY vs polling.

    python -m bench.wakeup [--jobs 40] [--interval 1.0] [--db postgresql --db mysql]

An idle worker (``work(concurrency=4, interval=1.0)``, the CLI's defaults) and
an app with ``QUEUE_EXECUTOR="worker"`` that enqueues one due job at a time, at
random moments (so a poll is not in step with them). On PostgreSQL the enqueue
NOTIFYs the worker's LISTEN; the same run with the worker's listener turned off
is the polling baseline, as is MySQL/MariaDB, which has no NOTIFY.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from datetime import datetime, timezone

from bench.common import bench_app, database_url, percentile, print_table
from flask_queue import Job, Queue
from flask_queue.worker import work


def latencies(url: str, jobs: int, interval: float, listen: bool) -> list[float]:
    queue = Queue()
    started: dict[int, float] = {}
    seen = threading.Event()

    @queue.handler("ping")
    def ping(job: Job[int]) -> None:
        started[job.payload] = time.monotonic()
        seen.set()

    with bench_app(url, queue, QUEUE_EXECUTOR="worker", QUEUE_LISTEN=listen) as app:
        stop = threading.Event()

        def serve() -> None:
            with app.app_context():
                work(queue, concurrency=4, interval=interval, stop=stop, report=lambda _: None)

        worker = threading.Thread(target=serve, daemon=True)
        worker.start()
        time.sleep(interval + 0.2)  # idle: listening, or between polls
        enqueued: dict[int, float] = {}
        with app.app_context():
            for n in range(jobs):
                time.sleep(random.uniform(0.05, interval))
                seen.clear()
                enqueued[n] = time.monotonic()
                queue.enqueue("ping", n)
                if not seen.wait(interval * 5 + 5):
                    raise RuntimeError(f"job {n} never started")
        stop.set()
        worker.join(10)
    return [(started[n] - enqueued[n]) * 1000 for n in range(jobs)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--db", action="append", choices=["postgresql", "mysql"])
    args = parser.parse_args()
    rows: list[list[str]] = []
    baseline: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        runs: list[tuple[str, str, bool]] = []
        for kind in args.db or ["postgresql", "mysql"]:
            if kind == "postgresql":
                runs += [(kind, "LISTEN/NOTIFY", True), (kind, "polling (listener off)", False)]
            else:
                runs.append((kind, "polling (no NOTIFY)", False))
        for kind, how, listen in runs:
            values = latencies(database_url(kind, tmp), args.jobs, args.interval, listen)
            p50 = percentile(values, 50)
            baseline = baseline or p50
            rows.append(
                [
                    kind,
                    how,
                    f"{p50:,.1f} ms",
                    f"{percentile(values, 95):,.1f} ms",
                    f"{max(values):,.1f} ms",
                    f"{p50 / baseline:,.0f}x" if baseline else "-",
                ]
            )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print_table(
        f"enqueue -> start, idle worker (concurrency 4, poll every {args.interval:g} s),"
        f" {args.jobs} jobs one at a time; {stamp}",
        ["database", "wake-up", "p50", "p95", "max", "p50 / first row"],
        rows,
    )


if __name__ == "__main__":
    main()
