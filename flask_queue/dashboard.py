"""The dashboard at ``/_queue/``: closed by default, server-rendered, no JS needed."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from flask import Blueprint, abort, current_app, render_template, request

from .job import JobStatus
from .signing import tokens_equal

if TYPE_CHECKING:
    from .extension import QueueState

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def allowed(state: QueueState) -> bool:
    """Open in debug mode; otherwise only through the app's guard."""
    callback = state.queue.dashboard_auth_callback
    auth = state.config.dashboard_auth
    if callback is not None:
        return bool(callback())
    if callable(auth):
        return bool(auth())
    if isinstance(auth, str):
        return _basic_auth_ok(auth)
    return bool(current_app.debug)


def _basic_auth_ok(expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    return tokens_equal(given, expected)


def register_dashboard(bp: Blueprint, state: QueueState) -> None:
    guarded = {"queue.index"}

    @bp.before_request
    def guard() -> Any:
        if request.endpoint not in guarded:
            return None
        if allowed(state):
            return None
        if isinstance(state.config.dashboard_auth, str):
            return (
                "Authentication required.",
                401,
                {"WWW-Authenticate": 'Basic realm="flask_queue"'},
            )
        abort(403 if request.authorization or state.queue.dashboard_auth_callback else 401)

    @bp.after_request
    def headers(response: Any) -> Any:
        if request.endpoint in guarded:
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "same-origin"
        return response

    @bp.get("/")
    def index() -> Any:
        counts = state.store.counts()
        queues = sorted({q for _, q in counts} | set(state.queue.handlers))
        totals = {
            s.value: sum(n for (st, _), n in counts.items() if st == s.value) for s in JobStatus
        }
        return render_template(
            "flask_queue/index.html",
            counts=counts,
            queues=queues,
            totals=totals,
            statuses=[s.value for s in JobStatus],
        )
