"""OpenTelemetry (issue 21, item 5): an enqueue stores the current W3C trace
context in the job; each run is a span linked to it, with the queue, job id,
attempt and outcome, for every executor; checked with the SDK's in-memory
exporter, and across processes for the http invoke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from flask_queue import Job, JobStatus, Queue
from flask_queue.errors import ConfigError
from flask_queue.worker import work
from tests.conftest import AppFactory, all_databases
from tests.servers import free_port, isolated_database

REPO = Path(__file__).resolve().parent.parent


def _provider() -> TracerProvider:
    """The process's SDK provider, set once (OpenTelemetry allows one)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
    return provider


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This test's finished spans. The exporter is shut down after it, so later
    tests' spans are dropped rather than kept in memory."""
    exporter = InMemorySpanExporter()
    _provider().add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
def traced() -> Queue:
    q = Queue()

    @q.handler("ok")
    def ok(job: Job[Any]) -> str:
        # The handler's own spans nest under its run's span.
        with trace.get_tracer("handler").start_as_current_span("charge card"):
            return "done"

    @q.handler("boom", retry=["1h"])
    def boom(job: Job[Any]) -> None:
        raise RuntimeError("card declined")

    return q


def runs(exporter: InMemorySpanExporter, *, wait: int = 1) -> list[ReadableSpan]:
    """The run spans, once ``wait`` of them have finished (thread executors)."""
    deadline = time.monotonic() + 15
    while True:
        found = [s for s in exporter.get_finished_spans() if s.name.startswith("process ")]
        if len(found) >= wait or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def enqueue_in_request(queue: Queue, name: str) -> tuple[Job[Any], Any]:
    """Enqueue inside a span, as an instrumented request would."""
    with trace.get_tracer("test").start_as_current_span("POST /bookings") as request:
        job = queue.enqueue(name, {"booking": 1})
    return job, request.get_span_context()


@all_databases
def test_a_worker_run_is_a_span_linked_to_the_enqueue(
    make_app: AppFactory, traced: Queue, spans: InMemorySpanExporter
) -> None:
    app = make_app(traced, QUEUE_EXECUTOR="worker", QUEUE_KEEP_COMPLETED="1h")
    with app.app_context():
        job, origin = enqueue_in_request(traced, "ok")
        stored = json.loads(traced.get(job.id).trace_context)  # type: ignore[union-attr]
        assert (
            stored["traceparent"]
            == f"00-{origin.trace_id:032x}-{origin.span_id:016x}-{origin.trace_flags:02x}"
        )
        assert work(traced, concurrency=1, interval=0.05, max_jobs=1, report=lambda _: None) == 1
    (run,) = runs(spans)
    assert run.name == "process ok"
    assert run.kind is SpanKind.CONSUMER
    assert run.parent is None  # a trace of its own: no request was current in the worker
    assert [link.context.span_id for link in run.links] == [origin.span_id]
    assert [link.context.trace_id for link in run.links] == [origin.trace_id]
    assert dict(run.attributes or {}) == {
        "messaging.system": "flask_queue",
        "messaging.operation.type": "process",
        "messaging.destination.name": "ok",
        "messaging.message.id": job.id,
        "flask_queue.attempt": 1,
        "flask_queue.outcome": "completed",
    }
    assert run.status.status_code is StatusCode.UNSET
    (inner,) = [s for s in spans.get_finished_spans() if s.name == "charge card"]
    assert inner.parent is not None and inner.parent.span_id == run.context.span_id


def test_a_failed_run_is_an_error_span_with_the_exception(
    make_app: AppFactory, traced: Queue, spans: InMemorySpanExporter
) -> None:
    app = make_app(traced, QUEUE_EXECUTOR="thread")
    with app.app_context():
        job, origin = enqueue_in_request(traced, "boom")
        (run,) = runs(spans)
        deadline = time.monotonic() + 10  # the outcome is written after the span ends
        while traced.get(job.id).status is JobStatus.RUNNING and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.02)
        assert traced.get(job.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]
    assert run.attributes is not None
    assert run.attributes["flask_queue.outcome"] == "retrying"
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "RuntimeError: card declined"
    (event,) = run.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "card declined"
    assert [link.context.span_id for link in run.links] == [origin.span_id]


def test_inline_runs_under_the_request_and_link_to_it(
    make_app: AppFactory, traced: Queue, spans: InMemorySpanExporter
) -> None:
    """Inline runs inside the enqueueing request: its span is the run's parent as
    well as its link."""
    app = make_app(traced, QUEUE_EXECUTOR="inline")
    with app.app_context():
        _, origin = enqueue_in_request(traced, "ok")
    (run,) = runs(spans)
    assert run.parent is not None and run.parent.span_id == origin.span_id
    assert [link.context.span_id for link in run.links] == [origin.span_id]


def test_without_a_current_span_nothing_is_stored_and_the_run_is_unlinked(
    make_app: AppFactory, traced: Queue, spans: InMemorySpanExporter
) -> None:
    app = make_app(traced, QUEUE_EXECUTOR="worker")
    with app.app_context():
        job = traced.enqueue("ok", None)
        assert traced.get(job.id).trace_context is None  # type: ignore[union-attr]
        work(traced, concurrency=1, interval=0.05, max_jobs=1, report=lambda _: None)
    (run,) = runs(spans)
    assert run.links == ()


def test_tracing_off_stores_nothing_and_makes_no_span(
    make_app: AppFactory, traced: Queue, spans: InMemorySpanExporter
) -> None:
    app = make_app(traced, QUEUE_EXECUTOR="worker", QUEUE_TRACING=False, QUEUE_KEEP_COMPLETED="1h")
    with app.app_context():
        job, _ = enqueue_in_request(traced, "ok")
        assert traced.get(job.id).trace_context is None  # type: ignore[union-attr]
        work(traced, concurrency=1, interval=0.05, max_jobs=1, report=lambda _: None)
        assert traced.get(job.id).status is JobStatus.COMPLETED  # type: ignore[union-attr]
    # The app's own spans are its own; flask_queue added none.
    assert [s.name for s in spans.get_finished_spans()] == ["POST /bookings", "charge card"]


@pytest.mark.parametrize(
    "stored",
    ["{not json", '{"traceparent": 5}', '{"baggage": 7}', "[1]", '{"tracestate": 1}'],
)
def test_a_corrupt_stored_context_runs_the_job_unlinked(
    make_app: AppFactory, traced: Queue, spans: InMemorySpanExporter, stored: str
) -> None:
    """Review defect: a context that is JSON but not of strings raised in the
    span's set-up, before the handler: the job stayed RUNNING, lease after lease."""
    app = make_app(traced, QUEUE_EXECUTOR="worker")
    with app.app_context():
        enqueue_in_request(traced, "ok")
        store = app.extensions["queue"].store
        with store.engine.begin() as c:
            c.execute(store.table.update().values(trace_context=stored))
        work(traced, concurrency=1, interval=0.05, max_jobs=1, report=lambda _: None)
    (run,) = runs(spans)
    assert run.links == ()
    assert run.attributes is not None and run.attributes["flask_queue.outcome"] == "completed"


@pytest.mark.parametrize("value", ["yes", 2, None])
def test_a_bad_tracing_setting_is_named(make_app: AppFactory, traced: Queue, value: Any) -> None:
    with pytest.raises(ConfigError, match=r"QUEUE_TRACING must be 'auto', True or False, got"):
        make_app(traced, QUEUE_TRACING=value)


def test_tracing_true_without_opentelemetry_says_what_to_install(
    make_app: AppFactory, traced: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flask_queue.tracing

    monkeypatch.setattr(flask_queue.tracing, "AVAILABLE", False)
    with pytest.raises(
        ConfigError, match=r"it is not installed: pip install 'flask_queue\[otel\]'"
    ):
        make_app(traced, QUEUE_TRACING=True)


@all_databases
def test_the_http_invoke_run_links_to_the_request_that_enqueued(
    db_url: str, tmp_path: Path
) -> None:
    """Enqueue in one request of a real server; the signed invoke request runs
    it; the run's span (exported by that process) links to the first request."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    exported = tmp_path / "spans.jsonl"
    with isolated_database(db_url, tmp_path) as url:
        env = dict(os.environ)
        env.update(
            OTEL_SPANS_FILE=str(exported),
            OTEL_DB_URL=url,
            OTEL_TABLE=f"otel_{uuid.uuid4().hex[:8]}",
            OTEL_BASE_URL=base,
            PYTHONPATH=str(REPO),
        )
        log = (tmp_path / "server.log").open("wb")
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "waitress", "--host=127.0.0.1", f"--port={port}"),
                *("--threads=4", "--call", "tests.otel_app:create_app"),
            ],
            env=env,
            cwd=str(REPO),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            import urllib.request

            def post(path: str) -> dict[str, Any]:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        req = urllib.request.Request(f"{base}{path}", data=b"", method="POST")
                        with urllib.request.urlopen(req, timeout=10) as response:
                            return json.loads(response.read())  # type: ignore[no-any-return]
                    except OSError:
                        if time.monotonic() > deadline or server.poll() is not None:
                            raise
                        time.sleep(0.1)

            enqueued = {name: post(f"/enqueue/{name}") for name in ("ok", "boom")}
            found: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + 20
            while len(found) < 2 and time.monotonic() < deadline:
                if exported.exists():
                    for line in exported.read_text().splitlines():
                        span = json.loads(line)
                        if span["name"].startswith("process "):
                            found[span["name"]] = span
                time.sleep(0.1)
        finally:
            server.terminate()
            server.wait(10)
            log.close()
    assert set(found) == {"process ok", "process boom"}, (tmp_path / "server.log").read_text()
    for name, span in found.items():
        origin = enqueued[name.removeprefix("process ")]
        assert span["kind"] == "SpanKind.CONSUMER"
        assert span["attributes"]["messaging.message.id"] == origin["id"]
        assert span["attributes"]["flask_queue.attempt"] == 1
        (link,) = span["links"]
        assert link["context"]["trace_id"] == f"0x{origin['trace_id']}"
        assert link["context"]["span_id"] == f"0x{origin['span_id']}"
    assert found["process ok"]["attributes"]["flask_queue.outcome"] == "completed"
    assert found["process ok"]["status"]["status_code"] == "UNSET"
    assert found["process boom"]["attributes"]["flask_queue.outcome"] == "failed"
    assert found["process boom"]["status"]["status_code"] == "ERROR"
    assert found["process boom"]["status"]["description"] == "RuntimeError: card declined"


def test_the_thread_executor_under_threads_keeps_each_runs_link(
    make_app: AppFactory, traced: Queue, spans: InMemorySpanExporter
) -> None:
    """Eight requests on eight threads, each enqueueing one job: every run links
    to its own request, never to another's."""
    app = make_app(traced, QUEUE_EXECUTOR="thread", QUEUE_THREADS=4)
    origins: dict[str, int] = {}
    lock = threading.Lock()

    def request() -> None:
        with app.app_context():
            job, origin = enqueue_in_request(traced, "ok")
            with lock:
                origins[job.id] = origin.span_id

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = runs(spans, wait=8)
    assert len(found) == 8
    for run in found:
        assert run.attributes is not None
        job_id = run.attributes["messaging.message.id"]
        assert [link.context.span_id for link in run.links] == [origins[str(job_id)]]


def stored_under_remote_parent(
    app: Any, queue: Queue, trace_state: list[tuple[str, str]], baggage_value: str | None = None
) -> tuple[dict[str, str], Any]:
    """The context stored by an enqueue in a request whose incoming context has
    ``trace_state`` (and a baggage entry): what an instrumented app would pass on."""
    from opentelemetry import baggage, context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    parent = NonRecordingSpan(
        SpanContext(
            0x1234,
            0x5678,
            is_remote=True,
            trace_flags=TraceFlags(1),
            trace_state=TraceState(trace_state),
        )
    )
    ctx = baggage.set_baggage("user.email", baggage_value) if baggage_value else None
    token = context.attach(trace.set_span_in_context(parent, ctx))
    try:
        with app.app_context():
            job, origin = enqueue_in_request(queue, "ok")
            return json.loads(queue.get(job.id).trace_context), origin  # type: ignore[union-attr]
    finally:
        context.detach(token)


@all_databases
def test_only_the_trace_context_is_stored_never_baggage_nor_a_long_tracestate(
    make_app: AppFactory, traced: Queue, spans: InMemorySpanExporter
) -> None:
    """Review defect: the global propagator also stored W3C baggage (a client's
    header, unencrypted, in every row) and any size of tracestate (over MariaDB's
    TEXT the enqueue failed)."""
    app = make_app(traced, QUEUE_EXECUTOR="worker")
    big = [(f"vendor{n}", "x" * 200) for n in range(32)]  # ~6.7 KB
    stored, origin = stored_under_remote_parent(
        app, traced, big, "alice@example.com" + "y" * 70_000
    )
    assert set(stored) == {"traceparent"}
    assert stored["traceparent"].split("-")[2] == f"{origin.span_id:016x}"


def test_a_small_tracestate_is_kept(
    make_app: AppFactory, traced: Queue, spans: InMemorySpanExporter
) -> None:
    app = make_app(traced, QUEUE_EXECUTOR="worker")
    stored, _ = stored_under_remote_parent(app, traced, [("vendor", "abc")])
    assert stored["tracestate"] == "vendor=abc"


def test_tracing_off_imports_nothing_of_opentelemetry_and_ignores_its_env(tmp_path: Path) -> None:
    """Review defect: ``import flask_queue`` imported OpenTelemetry's global
    propagators, so a bad ``OTEL_PROPAGATORS`` broke the import, whatever
    QUEUE_TRACING said; with tracing on, the global propagators are not used."""
    script = f"""
import sys
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_queue import Queue
assert not any(m.startswith("opentelemetry.") for m in sys.modules), "imported at import (the namespace package aside)"
for tracing in (False, "auto"):
    app = Flask("t")
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite:///{tmp_path}/t.db", SECRET_KEY="k",
                      QUEUE_EXECUTOR="inline", QUEUE_TRACING=tracing,
                      QUEUE_TABLE_NAME="off_" + str(tracing).lower())
    db = SQLAlchemy(app)
    q = Queue(app)
    q.handler("ok")(lambda job: None)
    with app.app_context():
        db.create_all()
        q.enqueue("ok", None)
    loaded = any(m.startswith("opentelemetry.") for m in sys.modules)
    assert loaded == (tracing == "auto"), (tracing, loaded)
    assert "opentelemetry.propagate" not in sys.modules
print("ok")
"""
    env = dict(os.environ, OTEL_PROPAGATORS="b3", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
