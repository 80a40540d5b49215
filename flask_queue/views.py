"""HTTP endpoints: the signed invoke endpoint, the producer ping, the dashboard.

Views stay thin: they parse the request, call the ``Queue``/store, and render.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from . import producer
from .errors import ConfigError
from .signing import (
    BODY_TOO_LARGE,
    MAX_INVOKE_BODY,
    InvokeRefused,
    produce_token_for,
    tokens_equal,
    verify_invoke,
)

if TYPE_CHECKING:
    from .state import QueueState

_HERE = Path(__file__).resolve().parent


def asset_dir(name: str) -> str:
    """``templates``/``static`` inside the installed package, or at the repo root
    when running from a source checkout (the design card keeps them there)."""
    for candidate in (_HERE / name, _HERE.parent / name):
        if candidate.is_dir():
            return str(candidate)
    raise RuntimeError(f"flask_queue is installed without its {name} folder.")


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


def _read_at_most(stream: IO[bytes], limit: int) -> bytes:
    """Up to ``limit`` bytes of ``stream``, however much more it holds.

    One ``read(limit)`` is not enough: a socket-backed stream may return fewer
    bytes than asked before its end, which would cut a valid token short.
    """
    body = bytearray()
    while len(body) < limit:
        chunk = stream.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _bearer_denied(state: QueueState) -> Any:
    """None if the request carries the produce bearer token; else the answer."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    try:
        expected = produce_token_for(state.config)
    except ConfigError as exc:  # no token and no secret: nobody may
        return _error(503, str(exc))
    if scheme.lower() != "bearer" or not tokens_equal(given.strip(), expected):
        response = jsonify(error="Missing or wrong bearer token.")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response, 401
    return None


def make_blueprint(state: QueueState) -> Blueprint:
    """A new blueprint per app, so no app's state leaks into another's."""
    bp = Blueprint(
        "queue",
        __name__,
        template_folder=asset_dir("templates"),
        static_folder=asset_dir("static"),
        static_url_path="/static",
    )

    @bp.post("/invoke")
    def invoke() -> Any:
        from .runner import run_job

        config = state.config
        if not config.secret_keys:
            return _error(503, "QUEUE_SECRET (or SECRET_KEY) is not set; refusing to run jobs.")
        # A body larger than any token is refused unread when its length is
        # announced; a chunked one (no length) is read one byte past the cap at
        # most, which is enough for verify_invoke to refuse it as too large.
        if (request.content_length or 0) > MAX_INVOKE_BODY:
            return _error(413, BODY_TOO_LARGE)
        try:
            body = _read_at_most(request.stream, MAX_INVOKE_BODY + 1)
        except RequestEntityTooLarge:
            # The app's MAX_CONTENT_LENGTH is below our cap and this body is over it.
            return _error(413, "Body larger than the app's MAX_CONTENT_LENGTH.")
        try:
            # The exact bytes received: nothing parses the body before the check.
            signed = verify_invoke(config.secret_keys, body, config.invoke_max_age)
        except InvokeRefused as refused:
            return _error(refused.status, refused.message)
        result = run_job(state, signed.job_id, signed.attempt)
        if result.outcome == "missing":
            return _error(404, f"No job with id {signed.job_id!r}.")
        if result.outcome == "stale":
            return _error(
                409, f"Attempt {signed.attempt} of job {signed.job_id!r} is not the current one."
            )
        return jsonify(id=result.job_id, attempt=result.attempt, outcome=result.outcome)

    @bp.route("/produce", methods=["GET", "POST"])
    def produce() -> Any:
        denied = _bearer_denied(state)
        if denied is not None:
            return denied
        return jsonify(producer.produce(state).as_dict())

    @bp.get("/metrics")
    def metrics() -> Any:
        denied = _bearer_denied(state)
        if denied is not None:
            return denied
        if state.metrics is None:
            return _error(
                501, "GET /metrics needs prometheus_client: pip install 'flask_queue[metrics]'."
            )
        body, content_type = state.metrics.exposition()
        return Response(body, content_type=content_type)

    @bp.before_app_request
    def exempt_from_csrf() -> None:
        # init_app exempts these only from a CSRFProtect that already exists. One
        # initialised later registers its check after this hook, so exempting
        # here, per request, still comes first. Both carry their own credential
        # (a signature, a bearer token) instead of a form token.
        csrf = current_app.extensions.get("csrf")
        if csrf is not None:
            csrf.exempt(invoke)
            csrf.exempt(produce)

    from .dashboard import register_dashboard

    register_dashboard(bp, state)
    return bp
