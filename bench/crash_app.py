"""The app bench/recovery.py kills: one handler that notes each start with a
timestamp and sleeps long on its first attempt, so a kill lands mid-run."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import Job, Queue

db = SQLAlchemy()
queue = Queue()


@queue.handler("slow")
def slow(job: Job[Any]) -> None:
    with open(os.environ["CRASH_LOG"], "a") as log:
        log.write(f"start {job.attempt} {time.time():.3f} {os.getpid()}\n")
    if job.attempt == 1:
        time.sleep(600)  # killed long before this ends


def create_app() -> Flask:
    app = Flask("crash")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ["CRASH_DB_URL"],
        SECRET_KEY=os.environ["CRASH_SECRET"],
        QUEUE_EXECUTOR=os.environ.get("CRASH_EXECUTOR", "thread"),
        QUEUE_BASE_URL=os.environ.get("CRASH_BASE_URL"),
        QUEUE_TABLE_NAME=os.environ["CRASH_TABLE"],
        QUEUE_LEASE=os.environ.get("CRASH_LEASE", "1m"),
    )
    db.init_app(app)
    queue.init_app(app)
    return app
