"""The app tests/test_tracing.py serves under waitress: the ``http`` executor on
its own invoke endpoint, with OpenTelemetry's SDK exporting every finished span
as one JSON line to ``OTEL_SPANS_FILE`` (the SDK's console exporter: an
in-memory exporter cannot be read from another process)."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from flask_queue import Job, Queue

db = SQLAlchemy()
queue = Queue()


@queue.handler("ok")
def ok(job: Job[Any]) -> str:
    return "done"


@queue.handler("boom", retry=0)
def boom(job: Job[Any]) -> None:
    raise RuntimeError("card declined")


def create_app() -> Flask:
    spans = open(os.environ["OTEL_SPANS_FILE"], "a", buffering=1)  # noqa: SIM115 - the process's life
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(out=spans, formatter=lambda s: s.to_json(indent=None) + "\n")
        )
    )
    trace.set_tracer_provider(provider)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="otel-test",
        SQLALCHEMY_DATABASE_URI=os.environ["OTEL_DB_URL"],
        QUEUE_TABLE_NAME=os.environ["OTEL_TABLE"],
        QUEUE_EXECUTOR="http",
        QUEUE_BASE_URL=os.environ["OTEL_BASE_URL"],
        QUEUE_KEEP_COMPLETED="1h",
    )
    db.init_app(app)
    queue.init_app(app)
    with app.app_context():
        db.create_all()

    @app.post("/enqueue/<name>")
    def enqueue(name: str) -> Any:
        # What an instrumented request looks like: a span current while the
        # view enqueues (opentelemetry-instrumentation-flask would start it).
        tracer = trace.get_tracer("otel_app")
        with tracer.start_as_current_span(f"POST {request.path}") as span:
            job = queue.enqueue(name, None)
            context = span.get_span_context()
        return {
            "id": job.id,
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
        }

    return app
