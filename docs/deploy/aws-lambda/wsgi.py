"""AWS Lambda entry point (``Handler: wsgi.handler`` in template.yaml).

Two kinds of event reach ``handler``:

- API Gateway (HTTP API) requests: the app, through apig-wsgi. The http
  executor's deliveries to ``/_queue/invoke`` come this way, one invocation each.
- The EventBridge schedule's ``{"flask_queue": "produce"}``: ``queue.produce()``
  runs in the invocation, no HTTP and no bearer token involved (only the rule's
  permission lets EventBridge invoke the function).

Replace ``example_app`` with your own app factory; the settings are what Lambda
needs from flask_queue.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from apig_wsgi import make_lambda_handler

from example_app import create_app

#: The schedule's input (template.yaml, Events.Produce.Properties.Input).
PRODUCE_EVENT = {"flask_queue": "produce"}


def database_url(url: str) -> str:
    """SQLAlchemy wants ``postgresql+psycopg://``; providers hand out ``postgres://``."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def engine_options(url: str) -> dict[str, Any]:
    # A frozen execution environment's connections may be closed meanwhile.
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql+psycopg://"):
        # Behind RDS Proxy or PgBouncer in transaction mode: no server-side
        # prepared statements (psycopg prepares a query run 5 times otherwise).
        options["connect_args"] = {"prepare_threshold": None}
    return options


def settings(env: Mapping[str, str]) -> dict[str, Any]:
    url = database_url(env["DATABASE_URL"])
    return {
        "SECRET_KEY": env["SECRET_KEY"],  # also signs the invoke requests
        "SQLALCHEMY_DATABASE_URI": url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(url),
        "QUEUE_EXECUTOR": "http",
        # The API's URL (the ApiUrl output) or your custom domain.
        "QUEUE_BASE_URL": env["QUEUE_BASE_URL"],
        # A scheduled produce returns within this: keep it well under Timeout.
        "QUEUE_PRODUCE_BUDGET": "20s",
        "QUEUE_SCHEDULER": False,  # an execution environment is frozen between events
        "CREATE_TABLES": False,  # example_app only: `flask db upgrade` creates them
    }


app = create_app(**settings(os.environ))
_http = make_lambda_handler(app)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event == PRODUCE_EVENT:
        with app.app_context():
            result: dict[str, Any] = app.extensions["queue"].queue.produce().as_dict()
            return result
    return _http(event, context)
