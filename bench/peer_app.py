"""The Flask app of ``bench.peers``: what ``flask --app bench.peer_app queue work`` and
gunicorn (``bench.peer_app:create_app()``) run.

Settings come from ``PEER_*`` environment variables (set by ``bench.peers``) and from
``create_app(**overrides)``. It creates no tables: the benchmark process does, once.

Routes besides flask_queue's own: ``POST /floor/<id>`` — the HTTP floor, two
primary-key UPDATEs on a table shaped like the job table (what starting and finishing
a run costs in SQL, with no queue code) — and ``GET /peer-health``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from bench.peer_probe import ran
from flask_queue import Job, Queue

db = SQLAlchemy()
queue = Queue()


@queue.handler("noop")
def noop(job: Job[Any]) -> None:
    payload = job.payload
    ran(payload.get("t") if isinstance(payload, dict) else None)


def create_app(**overrides: Any) -> Flask:
    app = Flask("peer_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ.get(
            "PEER_DB_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench_peers"
        ),
        SECRET_KEY=os.environ.get("PEER_SECRET", "peers-bench-secret"),
        QUEUE_TABLE_NAME=os.environ.get("PEER_TABLE", "peer_job"),
        QUEUE_EXECUTOR=os.environ.get("PEER_EXECUTOR", "thread"),
        QUEUE_BASE_URL=os.environ.get("PEER_BASE_URL") or None,
        PEER_FLOOR_TABLE=os.environ.get("PEER_FLOOR_TABLE", "peer_floor"),
    )
    app.config.update(overrides)
    db.init_app(app)
    queue.init_app(app)

    floor = app.config["PEER_FLOOR_TABLE"]
    if not floor.isidentifier():
        raise ValueError(f"PEER_FLOOR_TABLE must be an identifier, got {floor!r}")
    start = sa.text(
        f"UPDATE {floor} SET status = 'RUNNING', attempt = attempt + 1,"
        " started_at = :now, lease_until = :lease, updated_at = :now WHERE id = :id"
    )
    finish = sa.text(
        f"UPDATE {floor} SET status = 'COMPLETED', lease_until = NULL, updated_at = :now"
        " WHERE id = :id"
    )

    @app.post("/floor/<job_id>")
    def floor_run(job_id: str) -> Any:
        """The floor of a delivery over HTTP: the request plus a start and a finish,
        each its own transaction, as flask_queue's invoke endpoint does them."""
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with db.engine.begin() as c:
            c.execute(start, {"id": job_id, "now": now, "lease": now + timedelta(minutes=1)})
        with db.engine.begin() as c:
            c.execute(finish, {"id": job_id, "now": now})
        return {"id": job_id}

    @app.get("/peer-health")
    def health() -> Any:
        return "ok"

    return app
