"""Shared helpers for the benchmarks: apps on a chosen database, timing, tables."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import Job, Queue

URLS = {
    "sqlite": None,  # a temp file, filled in by database_url()
    "postgresql": os.environ.get(
        "QUEUE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("QUEUE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


def database_url(kind: str, tmpdir: str) -> str:
    return URLS[kind] or f"sqlite:///{os.path.join(tmpdir, f'bench-{uuid.uuid4().hex[:6]}.db')}"


def make_queue() -> Queue:
    queue = Queue()

    @queue.handler("noop")
    def noop(job: Job[Any]) -> None:
        return None

    return queue


@contextmanager
def bench_app(url: str, queue: Queue, **config: Any) -> Iterator[Flask]:
    app = Flask("bench")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SECRET_KEY="bench-secret",
        QUEUE_EXECUTOR="thread",
        QUEUE_TABLE_NAME=f"bench_{uuid.uuid4().hex[:8]}",
    )
    app.config.update(config)
    db = SQLAlchemy()
    db.init_app(app)
    queue.init_app(app)
    with app.app_context():
        db.create_all()
        try:
            yield app
        finally:
            app.extensions["queue"].executor.shutdown(wait=True)
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def raw_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """The baseline's table: same columns as the job table, no flask_queue code."""
    from flask_queue.models import job_table

    return job_table(metadata, name)


def seed_due(queue: Queue, n: int) -> None:
    """n no-op jobs, due, that nothing has dispatched: the code under test claims
    every one. Enqueued an hour out and then made due by a plain UPDATE — with a
    short delay, an INSERT slower than the delay made them due at enqueue, the
    seeding process dispatched some, and ``work(max_jobs=n)`` waited forever."""
    queue.enqueue_many("noop", [None] * n, delay="1h")
    store = queue.store
    past = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=1)
    with store.engine.begin() as conn:
        conn.execute(sa.update(store.table).values(run_at=past, occurrence_at=None))
    if store.engine.dialect.name == "postgresql":
        # A table seconds old has no statistics until autovacuum gets to it (its
        # naptime is a minute); a table in use has been analyzed. Both sides of a
        # comparison then plan their claims on the same footing.
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"ANALYZE {store.table.name}"))
