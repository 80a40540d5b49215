"""The ``http`` executor: quick hand-off, and a failed dispatch never loses a job."""

from __future__ import annotations

import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask

from flask_queue import JobStatus, Queue
from flask_queue.signing import verify_invoke
from tests.conftest import Clock, all_databases
from tests.servers import free_port


class _Endpoint(BaseHTTPRequestHandler):
    """A bare HTTP endpoint that answers with a fixed status after a delay."""

    status = 500
    bodies: list[bytes] = []
    release: threading.Event | None = None  # when set, answer only after it fires
    answered = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        if type(self).release is not None:
            type(self).release.wait(30)  # type: ignore[union-attr]
        self.send_response(type(self).status)
        self.end_headers()
        type(self).answered += 1

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Any:
    handler = type("Handler", (_Endpoint,), {"bodies": [], "status": 500, "release": None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/invoke"
    server.shutdown()
    server.server_close()


def _http_app(make_app: Any, queue: Queue, url: str, **config: Any) -> Flask:
    return make_app(queue, QUEUE_EXECUTOR="http", QUEUE_INVOKE_URL=url, **config)


@all_databases
def test_refused_connection_releases_the_job(make_app: Any, queue: Queue, clock: Clock) -> None:
    app = _http_app(make_app, queue, f"http://127.0.0.1:{free_port()}/_queue/invoke")
    with app.app_context():
        job = queue.enqueue("echo", "x")
        app.extensions["queue"].executor.flush(5)
        stored = queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempt) == (JobStatus.SCHEDULED, 1)
        # The next produce claims it again, as a new attempt.
        assert queue.produce().claimed == 1
        assert queue.get(job.id).attempt == 2  # type: ignore[union-attr]


@all_databases
def test_5xx_releases_and_request_is_signed(make_app: Any, queue: Queue, endpoint: Any) -> None:
    handler, url = endpoint
    app = _http_app(make_app, queue, url)
    with app.app_context():
        job = queue.enqueue("echo", "x")
        app.extensions["queue"].executor.flush(5)
        assert queue.get(job.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]
        (body,) = handler.bodies
        signed = verify_invoke(
            app.extensions["queue"].config.secret_keys, body, max_age=timedelta(minutes=1)
        )
        assert (signed.job_id, signed.attempt) == (job.id, 1)


def test_slow_endpoint_does_not_block_enqueue_or_produce(
    make_app: Any, queue: Queue, clock: Clock, endpoint: Any
) -> None:
    handler, url = endpoint
    handler.status, handler.release = 200, threading.Event()
    app = _http_app(make_app, queue, url, QUEUE_DISPATCH_TIMEOUT="0.3s")
    try:
        with app.app_context():
            job = queue.enqueue("echo", "x")
            queue.enqueue_many("echo", [1, 2, 3], delay="1s")
            clock.advance(1)
            assert queue.produce().claimed == 3
            # Both returned while the endpoint still holds every request open:
            # neither waited for a response (the handler may run for minutes).
            assert handler.answered == 0
            assert len(handler.bodies) == 4
            # A slow answer is not a failure: the jobs stay claimed, their
            # leases guard them.
            assert queue.get(job.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
            assert len(list(queue.jobs(status="RUNNING"))) == 4
    finally:
        handler.release.set()
