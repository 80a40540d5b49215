"""The ``http`` executor: quick hand-off, and a failed dispatch never loses a job."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask

from flask_queue import JobStatus, Queue
from flask_queue.signing import verify_invoke
from tests.conftest import Clock, all_databases, row_snapshot
from tests.servers import free_port


class _Endpoint(BaseHTTPRequestHandler):
    """A bare HTTP endpoint that answers with a fixed status after a delay."""

    status = 500
    bodies: list[bytes] = []
    release: threading.Event | None = None  # when set, answer only after it fires
    answered = 0
    location: str | None = None
    answer = b""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        if type(self).release is not None:
            type(self).release.wait(30)  # type: ignore[union-attr]
        self.send_response(type(self).status)
        if type(self).location:
            self.send_header("Location", type(self).location)  # type: ignore[arg-type]
        self.send_header("Content-Length", str(len(type(self).answer)))
        self.end_headers()
        self.wfile.write(type(self).answer)
        type(self).answered += 1

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Any:
    handler = type(
        "Handler",
        (_Endpoint,),
        {"bodies": [], "status": 500, "release": None, "location": None, "answer": b""},
    )
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
@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_5xx_or_throttling_releases_and_request_is_signed(
    make_app: Any, queue: Queue, endpoint: Any, status: int
) -> None:
    handler, url = endpoint
    handler.status = status
    app = _http_app(make_app, queue, url)
    with app.app_context():
        job = queue.enqueue("echo", "x")
        app.extensions["queue"].executor.flush(5)
        released = queue.get(job.id)
        assert released is not None
        # Released, not refused: no attempt used, due again at once.
        assert (released.status, released.errors) == (JobStatus.SCHEDULED, 0)
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
            # The dispatch claims "x" on the send pool; let it, or produce may
            # claim "x" first (a race the test is not about).
            deadline = time.monotonic() + 5
            while not handler.bodies and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(handler.bodies) == 1
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


@all_databases
@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 302])
def test_definite_refusal_costs_an_attempt_then_fails_naming_status_and_url(
    make_app: Any, queue: Queue, clock: Clock, endpoint: Any, status: int
) -> None:
    handler, url = endpoint
    handler.status = status
    if status == 302:
        handler.location = url + "/elsewhere"
    app = _http_app(make_app, queue, url, QUEUE_RETRY=["10s"])
    with app.app_context():
        executor = app.extensions["queue"].executor
        job = queue.enqueue("echo", "x")
        executor.flush(5)
        retrying = queue.get(job.id)
        assert retrying is not None
        # One refusal: an attempt is used and the retry policy applies.
        assert (retrying.status, retrying.errors) == (JobStatus.SCHEDULED, 1)
        assert retrying.run_at == clock() + timedelta(seconds=10)
        clock.advance(10)
        assert queue.produce().claimed == 1
        executor.flush(5)
        failed = queue.get(job.id)
        assert failed is not None and failed.status is JobStatus.FAILED
        assert f"HTTP {status}" in (failed.reason or "") and url in (failed.reason or "")
        # Never followed: each attempt reached the endpoint once, nothing else.
        assert len(handler.bodies) == 2


@all_databases
def test_2xx_from_something_else_is_a_refusal(
    make_app: Any, queue: Queue, clock: Clock, endpoint: Any
) -> None:
    handler, url = endpoint
    handler.status, handler.answer = 200, b"<html>catch-all page</html>"
    app = _http_app(make_app, queue, url, QUEUE_RETRY=[])
    with app.app_context():
        job = queue.enqueue("echo", "x")
        app.extensions["queue"].executor.flush(5)
        failed = queue.get(job.id)
        assert failed is not None and failed.status is JobStatus.FAILED
        assert "not flask_queue's invoke endpoint" in (failed.reason or "")


@all_databases
def test_refusal_of_a_started_attempt_changes_nothing(
    make_app: Any, queue: Queue, clock: Clock, caplog: Any
) -> None:
    from flask_queue.runner import refuse_delivery

    app = _http_app(make_app, queue, "http://127.0.0.1:9/_queue/invoke")
    with app.app_context():
        state = app.extensions["queue"]
        job = queue.enqueue("echo", "x", delay="1s")
        clock.advance(1)
        (claimed,) = state.store.claim(1, state.config.lease)
        state.store.start(claimed.id, claimed.attempt, state.config.lease)
        before = row_snapshot(app)
        # Our endpoint's own 409 (started elsewhere) must not cost an attempt,
        # nor log one as failed.
        with caplog.at_level(logging.WARNING, logger="flask_queue"):
            assert refuse_delivery(state, job.id, claimed.attempt, "HTTP 409") == "ignored"
        assert row_snapshot(app) == before
        assert "failed" not in caplog.text


@all_databases
def test_produce_claims_only_what_it_can_hand_off_and_keeps_going(
    make_app: Any, queue: Queue, clock: Clock, endpoint: Any
) -> None:
    handler, url = endpoint
    handler.status, handler.release = 200, threading.Event()
    app = _http_app(make_app, queue, url, QUEUE_DISPATCH_TIMEOUT="0.2s", QUEUE_BATCH_SIZE=1000)
    try:
        with app.app_context():
            queue.enqueue_many("echo", list(range(40)), delay="1s")
            clock.advance(1)
            executor = app.extensions["queue"].executor
            seen: list[int] = []
            original = app.extensions["queue"].store.claim

            def claim(limit: int, lease: Any, **kwargs: Any) -> Any:
                seen.append(limit)
                return original(limit, lease, **kwargs)

            app.extensions["queue"].store.claim = claim
            result = queue.produce()
            # Never more in one claim than the send pool can take (2 per sender)...
            assert max(seen) <= 2 * executor.workers
            # ...and it kept claiming as sends completed, within its budget.
            assert result.claimed == 40 and not result.more
    finally:
        handler.release.set()


@all_databases
def test_a_connect_timeout_releases_the_job(
    make_app: Any, queue: Queue, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so
    # the dispatch's connect times out. Nothing was sent: the claim is released
    # without costing an attempt, as for a refused connection.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue (its length is backlog + 1)
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        app = _http_app(
            make_app,
            queue,
            f"http://127.0.0.1:{port}/_queue/invoke",
            QUEUE_DISPATCH_TIMEOUT="0.5s",
        )
        with app.app_context():
            job = queue.enqueue("echo", "x")
            app.extensions["queue"].executor.flush(10)
            stored = queue.get(job.id)
            assert stored is not None
            assert (stored.status, stored.errors, stored.attempt) == (JobStatus.SCHEDULED, 0, 1)
        assert "timed out" in caplog.text and "released for retry" in caplog.text
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
