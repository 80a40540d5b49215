"""Vercel entry point: the Python runtime serves the WSGI ``app`` of this file.

``vercel.json`` rewrites every path here, so ``/_queue/produce`` (the cron ping)
and ``/_queue/invoke`` (the http executor's deliveries) reach the same app.
Replace ``example_app`` with your own app factory; the settings are what Vercel
needs from flask_queue.
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


def engine_options(url: str) -> dict[str, Any]:
    # A frozen instance's connections may have been closed by the pooler meanwhile.
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql+psycopg://"):
        # A pooled URL is PgBouncer-style transaction pooling: no server-side
        # prepared statements (psycopg prepares a query run 5 times otherwise).
        options["connect_args"] = {"prepare_threshold": None}
    return options


def settings(env: Mapping[str, str]) -> dict[str, Any]:
    url = database_url(env["DATABASE_URL"])
    return {
        "SECRET_KEY": env["SECRET_KEY"],  # also signs the invoke requests
        "SQLALCHEMY_DATABASE_URI": url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(url),
        # A due job is POSTed, signed, to this deployment's /_queue/invoke and
        # runs in a function invocation of its own.
        "QUEUE_EXECUTOR": "http",
        # Your production domain. Vercel sets VERCEL_PROJECT_PRODUCTION_URL
        # (a host name, no scheme); crons run on production deployments only.
        "QUEUE_BASE_URL": env.get("QUEUE_BASE_URL")
        or "https://" + env["VERCEL_PROJECT_PRODUCTION_URL"],
        # Vercel Cron sends "Authorization: Bearer $CRON_SECRET".
        "QUEUE_PRODUCE_TOKEN": env["CRON_SECRET"],
        # A produce call returns within this; keep it under maxDuration.
        "QUEUE_PRODUCE_BUDGET": "20s",
        "QUEUE_SCHEDULER": False,  # no long-lived process to run APScheduler in
        "CREATE_TABLES": False,  # example_app only: `flask db upgrade` creates them
    }


app = create_app(**settings(os.environ))
