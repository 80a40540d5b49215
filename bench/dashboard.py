"""Dashboard and metrics timings at scale.

    python -m bench.dashboard [--db postgresql,sqlite] [--rows 1000000] [--small 100000]
                              [--requests 40] [--stats-days 2] [--reseed] [--smoke]

Seeds two job tables of mixed jobs (bench.seed), --small and --rows of them, and
beside each a filled stats table (``<table>_stats``: --stats-days x 1440 minutes x
the five queues, written by ``store.add_stats`` in chunks) so the overview draws
both charts from a full day. Then requests every page type through each app
(Flask's test client: server time, no network) — the overview (counts, failures,
the two charts), the lists, a job, a search and ``GET /_queue/metrics`` with the
bearer token — alternating between the two sizes request by request, so that a
noisy machine weighs on both alike. Prints p50/p95 per page at both sizes and
the p95 ratio, beside a bare Flask route measured in the same run.
``--small 0`` measures the --rows table alone. ``--smoke``: tiny tables, a few
requests (does it still run?).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy

from bench.common import database_url, percentile, print_table
from bench.seed import QUEUES, seed
from flask_queue import Queue

TABLE = "queue_job_dashboard_bench"
#: Stats rows per add_stats statement.
STATS_CHUNK = 1000


def _app(url: str, table: str) -> tuple[Flask, Queue]:
    queue = Queue()
    for name in QUEUES:
        queue.handler(name)(lambda job: None)
    app = Flask("dashboard_bench")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SECRET_KEY="bench",
        QUEUE_EXECUTOR="inline",
        QUEUE_TABLE_NAME=table,
        QUEUE_KEEP_COMPLETED="30 days",
    )
    app.debug = True
    SQLAlchemy(app)
    queue.init_app(app)
    app.add_url_rule("/bare", "bare", lambda: "ok")
    return app, queue


def _pages(app: Flask) -> list[tuple[str, str]]:
    store = app.extensions["queue"].store
    t = store.table
    with store.engine.connect() as c:
        total = c.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
        middle = c.execute(
            sa.select(t.c.run_at, t.c.id)
            .where(t.c.status == "SCHEDULED")
            .order_by(t.c.run_at, t.c.id)
            .offset(total // 3)
            .limit(1)
        ).one()
        failed_id = c.execute(sa.select(t.c.id).where(t.c.status == "FAILED").limit(1)).scalar_one()
    deep = f"{middle.run_at.isoformat()}~{middle.id}"
    return [
        ("overview (counts + 2 charts)", "/_queue/"),
        ("scheduled, page 1", "/_queue/jobs/scheduled"),
        ("scheduled, deep keyset page", f"/_queue/jobs/scheduled?after={deep}"),
        ("failed, page 1", "/_queue/jobs/failed"),
        ("failed, one queue", "/_queue/jobs/failed?queue=chargeCard"),
        ("completed, page 1", "/_queue/jobs/completed"),
        ("job detail", f"/_queue/job/{failed_id}"),
        ("search by custom id", f"/_queue/search?q=order-{(total // 2) // 10 * 10}"),
        ("GET /metrics (bearer token)", "/_queue/metrics"),
    ]


def _seed_jobs(app: Flask, url: str, table: str, rows: int, reseed: bool) -> None:
    engine = app.extensions["queue"].store.engine
    have = 0
    inspector = sa.inspect(engine)
    if not reseed and inspector.has_table(table):
        # A table seeded by an older release lacks the columns added since:
        # seeded again (dropped and created) rather than read and failed on.
        columns = {c["name"] for c in inspector.get_columns(table)}
        current = set(app.extensions["queue"].store.table.columns.keys())
        if current <= columns:
            with engine.connect() as c:
                have = c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    if have != rows:
        print(f"seeding {rows:,} rows into {table} ... ", end="", flush=True)
        print(f"{seed(url, table, rows):.1f} s", flush=True)


def _seed_stats(app: Flask, days: float) -> int:
    """A fresh ``<table>_stats`` (and ``_queues``, which the overview reads) with
    one row per minute and queue for ``days`` up to now; returns the row count."""
    store = app.extensions["queue"].store
    # The tables the pages read beside the seeded job table (the job page its
    # steps, wait and dependencies; the Events page). Not the start log: its
    # index name outgrows PostgreSQL's 63 characters with this long table name.
    core = store.core
    for part in (store.queues, core.steps, core.waits, core.events, core.deps):
        part.create(store.engine, checkfirst=True)
    store.stats.drop(store.engine, checkfirst=True)
    store.stats.create(store.engine)
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    minutes = max(1, round(days * 1440))
    rows: list[tuple[datetime, str, int, int]] = []
    written = 0
    for i in range(minutes):
        minute = end - timedelta(minutes=i)
        for k, name in enumerate(QUEUES):
            rows.append((minute, name, 20 + (i * 7 + k * 13) % 60, (i + k) % 9 // 8))
            if len(rows) == STATS_CHUNK:
                store.add_stats(rows)
                written += len(rows)
                rows = []
    if rows:
        store.add_stats(rows)
        written += len(rows)
    return written


@dataclass
class _Size:
    """One seeded table, its app, and the timings of each page on it."""

    rows: int
    app: Flask
    client: FlaskClient
    token: str
    cases: list[tuple[str, str]]
    times: dict[str, list[float]] = field(default_factory=dict)

    def get(self, name: str, path: str) -> float:
        headers = {"Authorization": f"Bearer {self.token}"} if path.endswith("/metrics") else {}
        start = time.perf_counter()
        response = self.client.get(path, headers=headers)
        took = (time.perf_counter() - start) * 1000
        assert response.status_code in (200, 302), (path, response.status_code)
        if path.endswith("/metrics"):
            assert b"flask_queue_jobs{" in response.data, response.data[:200]
        elif name.startswith("overview"):
            assert b"Last 24 hours" in response.data, "the overview drew no charts"
        return took


def _prepare(url: str, table: str, rows: int, reseed: bool, stats_days: float) -> _Size:
    app, queue = _app(url, table)
    with app.app_context():
        _seed_jobs(app, url, table, rows, reseed)
        print(f"  {_seed_stats(app, stats_days):,} stats rows in {table}_stats", flush=True)
        token = queue.produce_token()
        cases = [("bare Flask route (baseline)", "/bare"), *_pages(app)]
    return _Size(rows, app, app.test_client(), token, cases)


def measure(
    url: str,
    rows: int,
    requests: int,
    reseed: bool,
    small: int = 0,
    stats_days: float = 2.0,
    table: str = TABLE,
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the result table for one database."""
    sizes = [_prepare(url, table, rows, reseed, stats_days)]
    if small:
        sizes.insert(0, _prepare(url, f"{table}_small", small, reseed, stats_days))
    try:
        for i in range(len(sizes[0].cases)):
            for size in sizes:
                name, path = size.cases[i]
                for _ in range(3):  # warm caches and connections
                    size.get(name, path)
                size.times[name] = []
            for n in range(requests):
                # Alternate which size goes first: neither always follows the other.
                for size in sizes if n % 2 == 0 else sizes[::-1]:
                    name, path = size.cases[i]
                    size.times[name].append(size.get(name, path))
    finally:
        for size in sizes:
            with size.app.app_context():
                size.app.extensions["queue"].store.engine.dispose()
    headers = ["page"]
    for size in sizes:
        headers += [f"p50 @{size.rows:,}", f"p95 @{size.rows:,}"]
    if len(sizes) == 2:
        headers.append("p95 ratio")
    out = []
    for name, _ in sizes[-1].cases:
        row = [name]
        p95s = []
        for size in sizes:
            p50 = percentile(size.times[name], 50)
            p95 = percentile(size.times[name], 95)
            p95s.append(p95)
            row += [f"{p50:.1f} ms", f"{p95:.1f} ms"]
        if len(sizes) == 2:
            row.append(f"{p95s[1] / p95s[0]:.2f}x")
        out.append(row)
    return headers, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--db", default="postgresql,sqlite", help="comma-separated: sqlite,postgresql,mysql"
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="jobs in the large table")
    parser.add_argument(
        "--small", type=int, default=100_000, help="jobs in the small table (0: none)"
    )
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    parser.add_argument("--stats-days", type=float, default=2.0, help="days of per-minute stats")
    parser.add_argument("--reseed", action="store_true", help="seed even if the rows are there")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="2,000 vs 200 jobs, an hour of stats, 3 requests per page (own tables)",
    )
    args = parser.parse_args()
    table = TABLE
    if args.smoke:
        args.rows, args.small, args.requests, args.stats_days = 2_000, 200, 3, 1 / 24
        table = f"{TABLE}_smoke"
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db.split(","):
            url = database_url(kind, tmp)
            headers, rows = measure(
                url, args.rows, args.requests, args.reseed, args.small, args.stats_days, table
            )
            sizes = f"{args.small:,} vs {args.rows:,}" if args.small else f"{args.rows:,}"
            title = f"{kind}, {sizes} jobs, {args.requests} requests per page (server time)"
            print_table(title, headers, rows)


if __name__ == "__main__":
    main()
