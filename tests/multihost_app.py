"""The app every simulated host serves in tests/test_multihost.py and bench/scale.py.

One work queue (``mh_work``), a declared cron that every host declares
(``mh_tick``, every minute) and a handler for a repeating job that every host
enqueues under one custom id (``mh_every``). With ``MH_RUNS_TABLE`` set, each
handler run writes a ``start`` and a ``done`` row (host, pid, job id, attempt,
occurrence) to that table with plain SQLAlchemy, so the test can tell which
host ran which attempt; the benchmark leaves it unset so that the database only
does the queue's own work.

With ``MH_STATS_DIR`` set, the process counts the SQL statements it sends (by
verb) and keeps them in ``<dir>/<pid>.json``: bench/scale.py's per-job cost seen
from the client side, whatever else the database server is doing.

Configured from ``MH_*`` environment variables (see ``tests.multihost.Host``).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import Any

import sqlalchemy as sa
from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy

from flask_queue import Job, Queue
from tests.multihost import runs_table

db = SQLAlchemy()
queue = Queue()

_engine_lock = threading.Lock()
_engines: dict[int, tuple[sa.Engine, sa.Table]] = {}


def _runs() -> tuple[sa.Engine, sa.Table] | None:
    name = os.environ.get("MH_RUNS_TABLE")
    if not name:
        return None
    pid = os.getpid()  # one engine per process: gunicorn forks its workers
    with _engine_lock:
        if pid not in _engines:
            engine = sa.create_engine(
                os.environ["MH_DB_URL"], pool_size=1, max_overflow=4, pool_pre_ping=True
            )
            _engines[pid] = (engine, runs_table(name, sa.MetaData()))
        return _engines[pid]


def _note(event: str, job: Job[Any]) -> None:
    runs = _runs()
    if runs is None:
        return
    engine, table = runs
    with engine.begin() as conn:
        conn.execute(
            table.insert().values(
                host=os.environ["MH_HOST"],
                pid=os.getpid(),
                job_id=job.id,
                attempt=job.attempt,
                queue=job.queue,
                occurrence=job.occurrence_at.isoformat() if job.occurrence_at else None,
                event=event,
                at=time.time(),
            )
        )


def _run(job: Job[Any]) -> None:
    _note("start", job)
    sleep = float(os.environ.get("MH_SLEEP", "0.05"))
    if sleep:
        time.sleep(random.uniform(0, 2 * sleep))
    _note("done", job)


@queue.handler("mh_work")
def mh_work(job: Job[Any]) -> None:
    _run(job)


@queue.handler("mh_every")
def mh_every(job: Job[None]) -> None:
    _run(job)


@queue.cron("* * * * *", name="mh_tick")
def mh_tick(job: Job[None]) -> None:
    _run(job)


_statements: dict[str, int] = {}


def _count_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
    _statements[verb] = _statements.get(verb, 0) + 1


def _count_commit(conn: Any) -> None:
    _statements["commit()"] = _statements.get("commit()", 0) + 1


def _keep_stats(folder: str) -> None:
    """Count this process's statements and write them to a file twice a second."""
    sa.event.listen(sa.Engine, "before_cursor_execute", _count_statement)
    sa.event.listen(sa.Engine, "commit", _count_commit)
    path = os.path.join(folder, f"{os.getpid()}.json")

    def dump() -> None:
        while True:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(dict(_statements), f)
            os.replace(tmp, path)
            time.sleep(0.5)

    threading.Thread(target=dump, daemon=True, name="mh-stats").start()


def create_app() -> Flask:
    if os.environ.get("MH_STATS_DIR"):
        _keep_stats(os.environ["MH_STATS_DIR"])
    app = Flask("multihost")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ["MH_DB_URL"],
        # Small pools: PostgreSQL allows 100 connections and every host has several
        # processes (and other tests may run at the same time).
        SQLALCHEMY_ENGINE_OPTIONS={
            "pool_pre_ping": os.environ.get("MH_PRE_PING", "1") == "1",
            "pool_size": int(os.environ.get("MH_POOL_SIZE", "3")),
            "max_overflow": int(os.environ.get("MH_MAX_OVERFLOW", "4")),
        },
        SECRET_KEY=os.environ["MH_SECRET"],
        QUEUE_EXECUTOR=os.environ.get("MH_EXECUTOR", "http"),
        QUEUE_BASE_URL=os.environ["MH_BASE_URL"],
        QUEUE_TABLE_NAME=os.environ["MH_TABLE"],
        QUEUE_LEASE=os.environ.get("MH_LEASE", "5s"),
        QUEUE_PRODUCE_BUDGET="3s",
    )
    db.init_app(app)
    queue.init_app(app)

    @app.get("/mh/health")
    def health() -> Any:
        return jsonify(host=os.environ["MH_HOST"])

    @app.post("/mh/enqueue")
    def enqueue() -> Any:
        """Enqueue ``n`` work jobs from this host (``delay`` optional), and, with
        ``every``, the shared repeating job (kept as one row by its custom id)."""
        body = request.get_json()
        ids = [
            queue.enqueue(
                "mh_work", {"from": os.environ["MH_HOST"], "i": i}, delay=body.get("delay")
            ).id
            for i in range(int(body.get("n", 0)))
        ]
        if body.get("every"):
            queue.enqueue("mh_every", None, id="mh-every", every=body["every"])
        return jsonify(ids=ids)

    return app
