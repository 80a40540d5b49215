"""Entry point for Procfile platforms (Heroku, Render, Railway, Fly.io) and
Docker Compose: ``gunicorn wsgi:app`` serves the web, ``flask --app wsgi queue
work`` runs the jobs.

The web only stores jobs (``QUEUE_EXECUTOR="worker"``); the worker claims and
runs them, declared crons included, so nothing needs to ping ``/_queue/produce``.
Replace ``example_app`` with your own app factory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from example_app import create_app


def database_url(url: str) -> str:
    """SQLAlchemy wants ``postgresql+psycopg://``; Heroku and others hand out
    ``postgres://`` (which SQLAlchemy 2 refuses)."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def settings(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "SECRET_KEY": env["SECRET_KEY"],
        "SQLALCHEMY_DATABASE_URI": database_url(env["DATABASE_URL"]),
        # Enqueue stores the job and (PostgreSQL) NOTIFYs the idle workers.
        "QUEUE_EXECUTOR": "worker",
        "QUEUE_SCHEDULER": False,
        "CREATE_TABLES": False,  # example_app only: `flask db upgrade` creates them
    }


app = create_app(**settings(os.environ))
