"""Fixtures: ``app``, ``client``, ``runner``, ``queue``, a frozen ``clock``, and
``db_url`` — SQLite by default, PostgreSQL/MariaDB for tests marked
``@all_databases`` when ``QUEUE_TEST_POSTGRES_URL`` / ``QUEUE_TEST_MYSQL_URL``
are set (``.ci/run`` sets both, so CI never skips them).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import Job, Queue

UTC = timezone.utc
POSTGRES_URL = os.environ.get("QUEUE_TEST_POSTGRES_URL")
MYSQL_URL = os.environ.get("QUEUE_TEST_MYSQL_URL")

DATABASES = ["sqlite"]
if POSTGRES_URL:
    DATABASES.append("postgresql")
if MYSQL_URL:
    DATABASES.append("mysql")
SERVER_DATABASES = [d for d in DATABASES if d != "sqlite"]

#: Parametrize a test over every configured database.
all_databases = pytest.mark.parametrize("db_url", DATABASES, indirect=True)
#: Parametrize over the configured server databases (skipped when none is set).
server_databases = pytest.mark.parametrize(
    "db_url",
    SERVER_DATABASES
    or [pytest.param("none", marks=pytest.mark.skip(reason="no server database configured"))],
    indirect=True,
)


class Clock:
    """A frozen clock that tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0, **kwargs: float) -> datetime:
        self.now += timedelta(seconds=seconds, **kwargs)
        return self.now


def check_server(url: str) -> None:
    # A configured URL that cannot connect fails the run: it must never turn
    # into a silent skip.
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _servers_reachable() -> None:
    for url in (POSTGRES_URL, MYSQL_URL):
        if url:
            check_server(url)


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = getattr(request, "param", "sqlite")
    if kind == "postgresql":
        assert POSTGRES_URL
        return POSTGRES_URL
    if kind == "mysql":
        assert MYSQL_URL
        return MYSQL_URL
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))


class Recorder:
    """What the test handlers saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_next = 0

    def payloads(self, queue: str) -> list[Any]:
        return [p for q, p in self.calls if q == queue]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def queue(clock: Clock, recorder: Recorder) -> Queue:
    q = Queue(clock=clock)

    @q.handler("echo")
    def echo(job: Job[Any]) -> None:
        recorder.calls.append(("echo", job.payload))

    @q.handler("boom", retry=["10s", "1m"])
    def boom(job: Job[Any]) -> None:
        recorder.calls.append(("boom", job.payload))
        raise RuntimeError(f"boom {job.payload}")

    @q.handler("flaky", retry=3)
    def flaky(job: Job[Any]) -> None:
        recorder.calls.append(("flaky", job.payload))
        if recorder.fail_next:
            recorder.fail_next -= 1
            raise ValueError("flaky failure")

    return q


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(db_url: str) -> Iterator[AppFactory]:
    """Build an app on ``db_url`` with its own job table name (tests never share rows)."""
    made: list[tuple[Flask, SQLAlchemy]] = []

    def factory(queue: Queue, url: str | None = None, **config: Any) -> Flask:
        app = Flask(f"test_{len(made)}")
        app.config.update(
            SQLALCHEMY_DATABASE_URI=url or db_url,
            SECRET_KEY="test-secret-key",
            QUEUE_EXECUTOR="inline",
            QUEUE_TABLE_NAME=f"qj_{uuid.uuid4().hex[:12]}",
            TESTING=True,
        )
        app.config.update(config)
        db = SQLAlchemy()
        db.init_app(app)
        queue.init_app(app)
        with app.app_context():
            db.create_all()
        made.append((app, db))
        return app

    yield factory
    for app, db in made:
        state = app.extensions["queue"]
        state.executor.shutdown(wait=True)
        if state.scheduler is not None and state.scheduler.running:
            state.scheduler.shutdown(wait=False)
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


@pytest.fixture
def app(make_app: AppFactory, queue: Queue) -> Iterator[Flask]:
    app = make_app(queue)
    with app.app_context():
        yield app


@pytest.fixture
def debug_app(make_app: AppFactory, queue: Queue) -> Iterator[Flask]:
    """An app whose dashboard is open (debug mode, no guard), keeping completed jobs."""
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1 day")
    app.debug = True
    with app.app_context():
        yield app


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


def row_snapshot(app: Flask) -> list[tuple[Any, ...]]:
    """Every row of the job table, for asserting that nothing changed."""
    table = app.extensions["queue"].store.table
    with app.extensions["queue"].store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table).order_by(table.c.id))]
