"""Cloud Run entry point: ``gunicorn wsgi:app`` (see the Dockerfile).

Cloud Scheduler pings ``/_queue/produce`` with the produce bearer token; the
http executor POSTs each due job, signed, to this service's ``/_queue/invoke``.
Replace ``example_app`` with your own app factory; the settings are what Cloud
Run needs from flask_queue.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from example_app import create_app


def database_url(url: str) -> str:
    """SQLAlchemy wants ``postgresql+psycopg://``; providers hand out ``postgres://``."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def settings(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "SECRET_KEY": env["SECRET_KEY"],  # also signs the invoke requests
        "SQLALCHEMY_DATABASE_URI": database_url(env["DATABASE_URL"]),
        # An idle instance's connections may have been closed meanwhile.
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "QUEUE_EXECUTOR": "http",
        # The service URL (https://NAME-HASH-REGION.a.run.app) or your domain:
        # Cloud Run does not put it in the environment; deploy.sh sets it.
        "QUEUE_BASE_URL": env["QUEUE_BASE_URL"],
        # The same value as the Cloud Scheduler job's Authorization header.
        "QUEUE_PRODUCE_TOKEN": env["QUEUE_PRODUCE_TOKEN"],
        "QUEUE_PRODUCE_BUDGET": "20s",
        "QUEUE_SCHEDULER": False,  # instances scale to zero: nothing to run it in
        "CREATE_TABLES": False,  # example_app only: `flask db upgrade` creates them
    }


app = create_app(**settings(os.environ))
