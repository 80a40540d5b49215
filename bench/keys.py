"""The cost of limits per key: claims of 100 over a due backlog of 1,000,000 jobs
spread over 10,000 keys, with per-key limits, next to the same claims with no
limit, on the same table in the same run.

    python -m bench.keys [--db postgresql --db mysql --db sqlite] [--jobs 1000000]
                         [--keys 10000] [--claims 20] [--rounds 3] [--head 100000]

Each round runs every configuration in turn (unlimited first), so a noisy
machine slows them alike: ``--claims`` claims of 100 (``claim_started``, the
worker's claim) that nobody finishes, so every claim finds more keys at their
limit (after 20 exclusive claims, 2,000 keys run). The claimed rows are then put
back and the next configuration runs on the same backlog.

The last table adds ``--head`` jobs of one key ahead of every other due job
(one tenant's burst): the per-key claim must pass that key's backlog once it is
at its limit. Prints the median claim per configuration and its ratio to the
unlimited claim of the same round set.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from bench.common import bench_app, database_url, median, print_table
from flask_queue import Job, Queue

LEASE = timedelta(minutes=5)
#: (label, concurrency, rate as (count, window) or None)
CONFIGS: list[tuple[str, int | None, tuple[int, timedelta] | None]] = [
    ("unlimited", None, None),
    ("exclusive per key", 1, None),
    ("3 at once + 100/s per key", 3, (100, timedelta(seconds=1))),
]


def keyed_queue() -> Queue:
    queue = Queue()

    @queue.handler("sync", key=lambda payload: f"tenant-{payload}")
    def sync(job: Job[Any]) -> None:
        return None

    return queue


def seed(queue: Queue, jobs: int, keys: int, *, head: int = 0) -> None:
    """``jobs`` due jobs over ``keys`` keys (random), enqueued as users do
    (enqueue_many, the handler's key function), then made due by one UPDATE;
    with ``head``, that many jobs of one key ahead of them all."""
    rng = random.Random(7)
    for start in range(0, jobs, 20_000):
        n = min(20_000, jobs - start)
        queue.enqueue_many("sync", [rng.randrange(keys) for _ in range(n)], delay="1h")
    store = queue.store
    t = store.table
    past = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=1)
    with store.engine.begin() as c:
        c.execute(sa.update(t).values(run_at=past))
    for start in range(0, head, 20_000):
        queue.enqueue_many("sync", [0] * min(20_000, head - start), delay="1h", key="tenant-burst")
    if head:
        with store.engine.begin() as c:
            c.execute(
                sa.update(t)
                .where(t.c.key == store.key("tenant-burst"))
                .values(run_at=past - timedelta(minutes=1))
            )
    if store.dialect == "postgresql":  # as autovacuum would have by then
        with store.engine.begin() as c:
            c.execute(sa.text(f"ANALYZE {t.name}"))
            c.execute(sa.text(f"ANALYZE {store.starts.name}"))


def set_limits(queue: Queue, concurrency: int | None, rate: Any) -> None:
    store = queue.store
    store.sync_limits({"sync": (concurrency, rate, False)}, prune=True)
    store.claims.limited.look_again()


def claims_ms(queue: Queue, claims: int) -> list[float]:
    """``claims`` claims of 100, each timed; then every claimed row put back."""
    store = queue.store
    times = []
    for _ in range(claims):
        started = time.perf_counter()
        got = store.claim_started(100, LEASE)
        times.append((time.perf_counter() - started) * 1000)
        assert got, "the backlog ran dry: raise --jobs"
    t, s = store.table, store.starts
    with store.engine.begin() as c:
        c.execute(
            sa.update(t)
            .where(t.c.status == "RUNNING")
            .values(status="SCHEDULED", lease_until=None, started_at=None)
        )
        c.execute(sa.delete(s))
    return times


def measure(url: str, args: argparse.Namespace, head: int) -> dict[str, float]:
    queue = keyed_queue()
    found: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
    with bench_app(url, queue) as app, app.app_context():
        seed(queue, args.jobs, args.keys, head=head)
        for _ in range(args.rounds):
            for label, concurrency, rate in CONFIGS:
                set_limits(queue, concurrency, rate)
                found[label] += claims_ms(queue, args.claims)
    return {label: median(times) for label, times in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", action="append", choices=["postgresql", "mysql", "sqlite"])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--head", type=int, default=100_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db or ["postgresql", "mysql", "sqlite"]:
            for head in [0, args.head] if args.head else [0]:
                got = measure(database_url(kind, tmp), args, head)
                base = got["unlimited"]
                backlog = f"{args.jobs:,} / {args.keys:,} keys"
                if head:
                    backlog += f" + {head:,} of one key first"
                for label, ms in got.items():
                    rows.append([kind, backlog, label, f"{ms:,.1f} ms", f"{ms / base:.2f}x"])
    print_table(
        f"claims of 100 (claim_started), median of {args.claims} x {args.rounds} rounds;"
        " none finished, so keys fill up claim by claim",
        ["database", "due backlog", "limits", "claim", "vs unlimited"],
        rows,
    )


if __name__ == "__main__":
    main()
