"""The signed invoke endpoint and the bearer-protected produce endpoint."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_queue import Queue
from flask_queue.signing import produce_token, sign_invoke
from flask_queue.store import Claimed
from tests.conftest import Clock, Recorder, all_databases, row_snapshot


def _claimed(app: Flask, queue: Queue, clock: Clock, payload: Any = "p") -> Claimed:
    queue.enqueue("echo", payload, delay="1s")
    clock.advance(1)
    (job,) = app.extensions["queue"].store.claim(1, timedelta(minutes=5))
    return job


def _sign(app: Flask, job_id: str, attempt: int, keys: list[str] | None = None) -> bytes:
    return sign_invoke(keys or app.extensions["queue"].config.secret_keys, job_id, attempt)


@all_databases
def test_valid_invoke_runs_the_job(
    app: Flask, client: Any, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    job = _claimed(app, queue, clock)
    response = client.post("/_queue/invoke", data=_sign(app, job.id, job.attempt))
    assert response.status_code == 200
    assert response.json == {"id": job.id, "attempt": job.attempt, "outcome": "completed"}
    assert recorder.calls == [("echo", "p")]
    # The same request again (a replay) runs nothing.
    again = client.post("/_queue/invoke", data=_sign(app, job.id, job.attempt))
    assert again.status_code == 404
    assert recorder.calls == [("echo", "p")]


def _tamper(token: bytes) -> bytes:
    text = token.decode()
    return (text[:-3] + ("A" if text[-3] != "A" else "B") + text[-2:]).encode()


@all_databases
@pytest.mark.parametrize(
    ("make_body", "status"),
    [
        (lambda app, job: b"", 401),
        (lambda app, job: b"   ", 401),
        (lambda app, job: b"not-a-token", 403),
        (lambda app, job: _tamper(_sign(app, job.id, job.attempt)), 403),
        (lambda app, job: _sign(app, job.id, job.attempt, keys=["another-secret"]), 403),
        (lambda app, job: "é".encode(), 400),
        (lambda app, job: _sign(app, "no-such-job", 1), 404),
        (lambda app, job: _sign(app, job.id, job.attempt - 1), 409),
        (lambda app, job: _sign(app, job.id, job.attempt + 1), 409),
    ],
    ids=[
        "empty",
        "blank",
        "unsigned",
        "tampered",
        "wrong-key",
        "not-ascii",
        "unknown",
        "stale",
        "future",
    ],
)
def test_refused_invoke_runs_nothing_and_changes_nothing(
    app: Flask,
    client: Any,
    queue: Queue,
    clock: Clock,
    recorder: Recorder,
    make_body: Any,
    status: int,
) -> None:
    job = _claimed(app, queue, clock)
    before = row_snapshot(app)
    response = client.post("/_queue/invoke", data=make_body(app, job))
    assert response.status_code == status
    assert response.is_json and response.json["error"]
    assert recorder.calls == []
    assert row_snapshot(app) == before


@all_databases
def test_malformed_signed_body_is_400(app: Flask, client: Any, queue: Queue, clock: Clock) -> None:
    from itsdangerous import URLSafeTimedSerializer

    from flask_queue.signing import INVOKE_SALT

    job = _claimed(app, queue, clock)
    before = row_snapshot(app)
    keys = app.extensions["queue"].config.secret_keys
    body = URLSafeTimedSerializer(keys, salt=INVOKE_SALT).dumps({"job": job.id}).encode()
    response = client.post("/_queue/invoke", data=body)
    assert response.status_code == 400
    assert row_snapshot(app) == before


@all_databases
def test_expired_signature_is_refused(
    app: Flask, client: Any, queue: Queue, clock: Clock, recorder: Recorder, monkeypatch: Any
) -> None:
    job = _claimed(app, queue, clock)
    real = time.time
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: real() - 301)
    old = _sign(app, job.id, job.attempt)
    monkeypatch.setattr("itsdangerous.timed.time.time", real)
    before = row_snapshot(app)
    response = client.post("/_queue/invoke", data=old)
    assert response.status_code == 403
    assert "expired" in response.json["error"].lower()
    assert recorder.calls == [] and row_snapshot(app) == before


def test_rotated_key_still_verifies(make_app: Any, queue: Queue, clock: Clock) -> None:
    app = make_app(queue, QUEUE_SECRET="new-key", QUEUE_SECRET_FALLBACKS=["old-key"])
    with app.app_context():
        job = _claimed(app, queue, clock)
        response = app.test_client().post(
            "/_queue/invoke", data=_sign(app, job.id, job.attempt, keys=["old-key"])
        )
        assert response.status_code == 200


def test_invoke_signature_does_not_verify_as_other_app_data(app: Flask) -> None:
    # The invoke salt keeps a Flask session cookie signature from being accepted.
    from itsdangerous import URLSafeTimedSerializer

    cookie_like = URLSafeTimedSerializer(app.config["SECRET_KEY"], salt="cookie-session").dumps(
        {"id": "x", "attempt": 1}
    )
    response = app.test_client().post("/_queue/invoke", data=cookie_like)
    assert response.status_code == 403


@all_databases
def test_produce_needs_bearer(
    app: Flask, client: Any, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    queue.enqueue("echo", "due", delay="1s")
    clock.advance(1)
    assert client.get("/_queue/produce").status_code == 401
    assert (
        client.get("/_queue/produce", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    assert client.get("/_queue/produce", headers={"Authorization": "Basic x"}).status_code == 401
    assert recorder.calls == []
    token = queue.produce_token()
    assert token == produce_token("test-secret-key")
    assert token != "test-secret-key"
    response = client.get("/_queue/produce", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json["claimed"] == 1
    assert recorder.calls == [("echo", "due")]
    posted = client.post("/_queue/produce", headers={"Authorization": f"Bearer {token}"})
    assert posted.status_code == 200 and posted.json["claimed"] == 0


def test_configured_produce_token(make_app: Any, queue: Queue) -> None:
    app = make_app(queue, QUEUE_PRODUCE_TOKEN="cron-secret")
    client = app.test_client()
    ok = client.get("/_queue/produce", headers={"Authorization": "Bearer cron-secret"})
    assert ok.status_code == 200
    with app.app_context():
        assert queue.produce_token() == "cron-secret"
