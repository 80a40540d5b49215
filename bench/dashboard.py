"""Dashboard page timings at scale.

    python -m bench.dashboard [--db postgresql,sqlite] [--rows 1000000] [--requests 40]

Seeds N mixed jobs (bench.seed), then requests every page type through the app
(Flask's test client: server time, no network) and prints p50/p95 per page beside
a bare Flask route measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from bench.common import database_url, percentile, print_table
from bench.seed import QUEUES, seed
from flask_queue import Queue

TABLE = "queue_job_dashboard_bench"


def _app(url: str) -> tuple[Flask, Queue]:
    queue = Queue()
    for name in QUEUES:
        queue.handler(name)(lambda job: None)  # type: ignore[arg-type,return-value]
    app = Flask("dashboard_bench")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SECRET_KEY="bench",
        QUEUE_EXECUTOR="inline",
        QUEUE_TABLE_NAME=TABLE,
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
        ("overview", "/_queue/"),
        ("scheduled, page 1", "/_queue/jobs/scheduled"),
        ("scheduled, deep keyset page", f"/_queue/jobs/scheduled?after={deep}"),
        ("failed, page 1", "/_queue/jobs/failed"),
        ("failed, one queue", "/_queue/jobs/failed?queue=chargeCard"),
        ("completed, page 1", "/_queue/jobs/completed"),
        ("job detail", f"/_queue/job/{failed_id}"),
        ("search by custom id", f"/_queue/search?q=order-{(total // 2) // 10 * 10}"),
    ]


def measure(url: str, rows: int, requests: int, reseed: bool) -> list[list[str]]:
    app, _ = _app(url)
    with app.app_context():
        engine = app.extensions["queue"].store.engine
        have = 0
        if not reseed and sa.inspect(engine).has_table(TABLE):
            with engine.connect() as c:
                have = c.execute(sa.text(f"SELECT count(*) FROM {TABLE}")).scalar_one()
        if have != rows:
            print(f"seeding {rows:,} rows ... ", end="", flush=True)
            print(f"{seed(url, TABLE, rows):.1f} s")
        client = app.test_client()
        out = []
        cases = [("bare Flask route (baseline)", "/bare"), *_pages(app)]
        for name, path in cases:
            for _ in range(3):  # warm caches and connections
                client.get(path)
            times = []
            for _ in range(requests):
                start = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - start) * 1000)
                assert response.status_code in (200, 302), (path, response.status_code)
            out.append([name, f"{percentile(times, 50):.1f} ms", f"{percentile(times, 95):.1f} ms"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="postgresql,sqlite")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--reseed", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db.split(","):
            rows = measure(database_url(kind, tmp), args.rows, args.requests, args.reseed)
            print_table(f"{kind}, {args.rows:,} jobs", ["page", "p50", "p95"], rows)


if __name__ == "__main__":
    main()
