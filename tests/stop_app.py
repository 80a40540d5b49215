"""The app `flask queue work` runs in tests/test_worker_stop.py: one slow handler,
on the database of ``STOP_DB_URL`` and the table of ``STOP_TABLE``."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import Job, Queue

db = SQLAlchemy()
queue = Queue()


@queue.handler("slow", retry=0)
def slow(job: Job[float]) -> str:
    """Sleeps ``job.payload`` seconds on its first attempt only."""
    if job.attempt == 1:
        time.sleep(job.payload)
    return f"attempt {job.attempt}"


def create_app(**overrides: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="stop-test",
        SQLALCHEMY_DATABASE_URI=os.environ["STOP_DB_URL"],
        QUEUE_TABLE_NAME=os.environ["STOP_TABLE"],
        QUEUE_EXECUTOR="worker",
        QUEUE_LEASE="30s",
        QUEUE_KEEP_COMPLETED="1h",
    )
    app.config.update(overrides)
    db.init_app(app)
    queue.init_app(app)
    with app.app_context():
        db.create_all()
    return app
