"""The app the chaos test serves under gunicorn: handlers that record every
start and finish of a run (and of each durable step) to an append-only log, so
the test can tell a duplicate that a kill explains from one it does not.

Configured from ``CHAOS_*`` environment variables (see tests/test_chaos.py).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import Job, Queue

db = SQLAlchemy()
queue = Queue()


def _note(event: str, job: Job[Any]) -> None:
    line = f"{event} {os.getpid()} {job.id} {job.attempt}\n".encode()
    # One write(2) on an O_APPEND file: lines from both workers never interleave.
    fd = os.open(os.environ["CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@queue.handler("chaos")
def chaos(job: Job[int]) -> None:
    _note("start", job)
    time.sleep(random.uniform(0, 2 * float(os.environ.get("CHAOS_SLEEP", "0.05"))))
    _note("done", job)


def _stepped(job: Job[Any], name: str) -> str:
    _note(f"step-start:{name}", job)
    time.sleep(random.uniform(0, float(os.environ.get("CHAOS_SLEEP", "0.05"))))
    _note(f"step-done:{name}", job)
    return name


@queue.handler("chaosSteps")
def chaos_steps(job: Job[int]) -> None:
    """Two steps, a sleep (the run ends: the next produce's invoke replays),
    one more step: each run is an invoke that a kill may cut anywhere."""
    _note("start", job)
    for name in ("a", "b"):
        job.step(name, _stepped, job, name)
    job.sleep("pause", os.environ.get("CHAOS_STEP_SLEEP", "0.3s"))
    job.step("c", _stepped, job, "c")
    _note("done", job)


def create_app() -> Flask:
    app = Flask("chaos")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ["CHAOS_DB_URL"],
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
        SECRET_KEY=os.environ["CHAOS_SECRET"],
        QUEUE_EXECUTOR="http",
        QUEUE_BASE_URL=os.environ["CHAOS_BASE_URL"],
        QUEUE_TABLE_NAME=os.environ["CHAOS_TABLE"],
        QUEUE_LEASE=os.environ.get("CHAOS_LEASE", "2s"),
        QUEUE_PRODUCE_BUDGET="3s",
    )
    db.init_app(app)
    queue.init_app(app)
    return app
