"""Run-path benchmark: enqueue, claim, throughput, enqueue->start latency.

    python -m bench.run_path [--db sqlite,postgresql] [--quick]

Every figure is printed beside a baseline measured in the same run, so the ratios
hold on a noisy machine: raw SQLAlchemy Core INSERT+COMMIT for enqueue, a bare
Flask round trip on the same WSGI server for the http executor.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from bench.common import (
    bench_app,
    database_url,
    make_queue,
    median,
    percentile,
    print_table,
    raw_table,
    seed_due,
    timed,
)
from flask_queue.job import new_id

UTC = timezone.utc


def _raw_row(i: int) -> dict[str, Any]:
    now = datetime.now(UTC).replace(tzinfo=None)
    return {
        "id": new_id(),
        "custom_id": None,
        "queue": "noop",
        "payload": json.dumps({"i": i}),
        "run_at": now + timedelta(hours=1),
        "status": "SCHEDULED",
        "reason": None,
        "count": 0,
        "schedule_type": None,
        "schedule": None,
        "count_limit": None,
        "tz": None,
        "attempt": 0,
        "errors": 0,
        "retry": None,
        "lease_until": None,
        "started_at": None,
        "created_at": now,
        "updated_at": now,
    }


def bench_enqueue(url: str, n: int) -> list[list[str]]:
    queue = make_queue()
    with bench_app(url, queue) as app:
        engine = app.extensions["queue"].store.engine
        meta = sa.MetaData()
        raw = raw_table(meta, f"raw_{uuid.uuid4().hex[:8]}")
        meta.create_all(engine)
        try:
            insert = sa.insert(raw)

            # The baseline commits each row the way enqueue does: one autocommit
            # statement on PostgreSQL (BEGIN/INSERT/COMMIT would flatter enqueue),
            # a transaction elsewhere.
            one = (
                engine.execution_options(isolation_level="AUTOCOMMIT").connect
                if engine.dialect.name == "postgresql"
                else engine.begin
            )

            def raw_one_per_commit() -> None:
                for i in range(n):
                    with one() as c:
                        c.execute(insert, _raw_row(i))

            def ours_one_per_commit() -> None:
                for i in range(n):
                    queue.enqueue("noop", {"i": i}, delay="1h")

            def raw_many() -> None:
                with engine.begin() as c:
                    c.execute(insert, [_raw_row(i) for i in range(n)])

            def ours_many() -> None:
                queue.enqueue_many("noop", [{"i": i} for i in range(n)], delay="1h")

            # Alternating rounds, best of 5 per side: neither side gets the warm
            # cache (or a quiet moment of the machine) to itself.
            cases = {
                "raw": raw_one_per_commit,
                "ours": ours_one_per_commit,
                "raw_many": raw_many,
                "ours_many": ours_many,
            }
            results = dict.fromkeys(cases, float("inf"))
            for _ in range(5):
                for name, fn in cases.items():
                    results[name] = min(results[name], timed(fn))
        finally:
            meta.drop_all(engine)
    return [
        [
            "enqueue, one per commit",
            f"{n / results['ours']:,.0f} jobs/s",
            f"{n / results['raw']:,.0f} rows/s (raw INSERT, its own commit)",
            f"{results['raw'] / results['ours']:.2f}x",
        ],
        [
            "enqueue_many",
            f"{n / results['ours_many']:,.0f} jobs/s",
            f"{n / results['raw_many']:,.0f} rows/s (raw executemany)",
            f"{results['raw_many'] / results['ours_many']:.2f}x",
        ],
    ]


def _seed(app: Any, due: int, future: int) -> None:
    """Bulk rows straight through the store's table, in chunks, with priorities
    from -5 to 5."""
    store = app.extensions["queue"].store
    now = datetime.now(UTC)
    chunk = 5_000
    for total, when in (
        (due, now - timedelta(minutes=1)),
        (future, now + timedelta(days=1)),
    ):
        for start in range(0, total, chunk):
            # Priorities in use, spread over both the due and the future jobs:
            # the claim sorts the due range by them.
            rows = [
                store.new_row(
                    queue="noop",
                    payload="null",
                    run_at=when + timedelta(microseconds=i),
                    status="SCHEDULED",
                    priority=i % 11 - 5,
                )
                for i in range(start, min(total, start + chunk))
            ]
            with store.engine.begin() as c:
                c.execute(sa.insert(store.table), rows)
    with store.engine.begin() as c:
        if store.dialect == "postgresql":
            c.execute(sa.text(f"ANALYZE {store.table.name}"))
        elif store.dialect == "sqlite":
            c.execute(sa.text("ANALYZE"))


def bench_claim(url: str, backlogs: list[int], due: int) -> list[list[str]]:
    rows = []
    for backlog in backlogs:
        queue = make_queue()
        with bench_app(url, queue) as app:
            _seed(app, due, backlog)
            store = app.extensions["queue"].store
            start = time.perf_counter()
            claimed = 0
            while claimed < due:
                got = store.claim(1000, timedelta(minutes=5))
                if not got:
                    break
                claimed += len(got)
            seconds = time.perf_counter() - start
            rows.append(
                [
                    f"claim {due:,} due among {backlog:,} future",
                    f"{seconds:.3f} s",
                    f"{claimed:,} claimed (batches of 1,000)",
                    "",
                ]
            )
    if len(rows) == 2:
        a, b = (float(r[1].split()[0]) for r in rows)
        rows[1][3] = f"{b / a:.2f}x of {backlogs[0]:,}"
    return rows


def bench_work(url: str, n: int) -> list[list[str]]:
    from flask_queue.worker import work

    queue = make_queue()
    with bench_app(url, queue, QUEUE_BATCH_SIZE=200) as app:
        seed_due(queue, n)
        start = time.perf_counter()
        total = work(queue, concurrency=4, interval=0.01, max_jobs=n, report=lambda s: None)
        seconds = time.perf_counter() - start
        assert app.extensions["queue"].store.counts() == {}
    return [
        [
            "work mode, no-op jobs",
            f"{total / seconds:,.0f} jobs/s",
            f"{total:,} jobs, 4 threads",
            "",
        ]
    ]


def _latencies(app: Any, ids: list[str]) -> list[float]:
    table = app.extensions["queue"].store.table
    deadline = time.monotonic() + 60
    while True:
        with app.extensions["queue"].store.engine.connect() as c:
            rows = c.execute(
                sa.select(table.c.created_at, table.c.started_at, table.c.status).where(
                    table.c.id.in_(ids)
                )
            ).all()
        if all(r.status == "COMPLETED" for r in rows) or time.monotonic() > deadline:
            return [
                (r.started_at - r.created_at).total_seconds() * 1000 for r in rows if r.started_at
            ]
        time.sleep(0.05)


def bench_latency(url: str, n: int) -> list[list[str]]:
    from tests.servers import Server

    rows = []
    queue = make_queue()
    with bench_app(url, queue, QUEUE_KEEP_COMPLETED="1h") as app:
        ids = []
        for _ in range(n):
            ids.append(queue.enqueue("noop", None).id)
            time.sleep(0.005)  # one at a time, not a burst: latency, not throughput
        lat = _latencies(app, ids)
        rows.append(
            [
                "enqueue->start, thread",
                f"p50 {median(lat):.1f} ms",
                f"p99 {percentile(lat, 99):.1f} ms",
                "",
            ]
        )

    # http: the example app under waitress runs the invoke endpoint; this process
    # enqueues and signs. The same server answers a bare no-op route: baseline.
    # A table of its own: a fixed name would meet one that an older release left
    # behind, without this release's columns.
    table = f"bench_{uuid.uuid4().hex[:8]}"
    server = Server(url, QUEUE_KEEP_COMPLETED="1h", QUEUE_TABLE_NAME=table).start()
    reader = None
    import example_app

    try:
        reader = example_app.create_app(
            SQLALCHEMY_DATABASE_URI=url,
            QUEUE_SCHEDULER=False,
            QUEUE_EXECUTOR="http",
            QUEUE_BASE_URL=server.base,
            SECRET_KEY=server.secret,
            QUEUE_KEEP_COMPLETED="1h",
            QUEUE_TABLE_NAME=table,
        )
        with reader.app_context():
            q = example_app.queue
            executor = reader.extensions["queue"].executor
            ids = []
            for _ in range(n):
                ids.append(q.enqueue("noop", None).id)
                time.sleep(0.005)
            lat = _latencies(reader, ids)
            rows.append(
                [
                    "enqueue->start, http",
                    f"p50 {median(lat):.1f} ms",
                    f"p99 {percentile(lat, 99):.1f} ms",
                    "",
                ]
            )
            # Per-job cost of the http path, synchronously: sign, POST, verify,
            # start, run, finish — against a bare POST round trip to the same server.
            store = reader.extensions["queue"].store
            seed_due(q, n)
            jobs = store.claim(n, timedelta(minutes=5))
            per_job = []
            for job in jobs:
                t0 = time.perf_counter()
                executor.send(job.id, job.attempt)
                per_job.append(time.perf_counter() - t0)
            # The same runs in process (start, handler, finish: the database work
            # every executor pays), to split the http cost into delivery and run.
            from flask_queue.runner import run_job

            state = reader.extensions["queue"]
            seed_due(q, n)
            in_process = []
            for job in store.claim(n, timedelta(minutes=5)):
                t0 = time.perf_counter()
                run_job(state, job.id, job.attempt)
                in_process.append(time.perf_counter() - t0)
            bare = []
            for _ in range(n):
                t0 = time.perf_counter()
                urllib.request.urlopen(
                    urllib.request.Request(server.base + "/healthz", data=b"", method="POST"),
                    timeout=5,
                ).read()
                bare.append(time.perf_counter() - t0)
            http, run, rt = median(per_job), median(in_process), median(bare)
            rows.append(
                [
                    "http per-job cost (sync)",
                    f"{http * 1000:.2f} ms",
                    f"{rt * 1000:.2f} ms bare Flask POST",
                    f"{http / rt:.2f}x",
                ]
            )
            rows.append(
                [
                    "  of which: run in process",
                    f"{run * 1000:.2f} ms",
                    "start + no-op handler + finish",
                    "",
                ]
            )
            rows.append(
                [
                    "  of which: http delivery",
                    f"{(http - run) * 1000:.2f} ms",
                    f"{rt * 1000:.2f} ms bare Flask POST",
                    f"{(http - run) / rt:.2f}x",
                ]
            )
    finally:
        server.stop()
        if reader is not None:
            with reader.app_context():
                example_app.db.drop_all()
                example_app.db.engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--quick", action="store_true", help="small sizes (100k backlog only)")
    args = parser.parse_args()
    n = 500 if args.quick else 2_000
    backlogs = [100_000] if args.quick else [100_000, 1_000_000]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db.split(","):
            url = database_url(kind, tmp)
            rows = bench_enqueue(url, n)
            rows += bench_claim(url, backlogs, 10_000)
            rows += bench_work(url, 5 * n)
            rows += bench_latency(database_url(kind, tmp), 200)
            print_table(f"{kind}", ["measure", "flask_queue", "baseline / detail", "ratio"], rows)


if __name__ == "__main__":
    main()
