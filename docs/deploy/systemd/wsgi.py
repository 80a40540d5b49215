"""Entry point on a plain VM: ``gunicorn wsgi:app`` (flask-app-web.service) and
``flask --app wsgi queue work`` (flask-app-worker.service), from /srv/flask-app.

QUEUE_EXECUTOR comes from /etc/flask-app/env: ``worker`` (the default: the web
only stores jobs, the worker unit runs them) or ``thread`` (the web's processes
run them, and flask-app-produce.timer pings ``/_queue/produce`` with
QUEUE_PRODUCE_TOKEN). Replace ``example_app`` with your own app factory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from example_app import create_app


def settings(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "SECRET_KEY": env["SECRET_KEY"],
        "SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"],
        "QUEUE_EXECUTOR": env.get("QUEUE_EXECUTOR", "worker"),
        # None: derived from SECRET_KEY (`flask --app wsgi queue token` prints it).
        "QUEUE_PRODUCE_TOKEN": env.get("QUEUE_PRODUCE_TOKEN") or None,
        "QUEUE_SCHEDULER": False,
        "CREATE_TABLES": False,  # example_app only: `flask db upgrade` creates them
    }


app = create_app(**settings(os.environ))
