"""OpenTelemetry: the trace an enqueue ran in, carried to the job's runs.

``pip install 'flask_queue[otel]'`` (opentelemetry-api). An enqueue stores the
current W3C trace context (``traceparent``/``tracestate``, through the globally
configured propagator) in the job's ``trace_context`` column; every run of the job
is a ``CONSUMER`` span, ``process <queue>``, *linked* to that context rather than
parented by it. A link, because one enqueue may be followed by many runs (retries,
a cron's occurrences, a durable job's replays) hours apart: as children they would
stretch the request's trace over days. The run's parent is whatever span is
current where it runs (the invoke request's, when the app is instrumented), so
the handler's own spans (SQL, HTTP calls) nest under it.

Only the API is used: without an SDK and exporter configured every call here is
OpenTelemetry's no-op, and without the package installed nothing is imported.
``QUEUE_TRACING`` (``"auto"``, True, False) turns it off or makes its absence an
error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._version import __version__

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # optional: the otel extra
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .job import Job

#: What ``QUEUE_TRACING="auto"`` finds: is the API importable?
AVAILABLE = trace is not None

#: The span attributes' system name (OpenTelemetry's messaging conventions).
SYSTEM = "flask_queue"


def recording() -> bool:
    """Whether an SDK (a real tracer provider) is set up: until the app sets
    one, OpenTelemetry's spans are no-ops, and making them cost a no-op run
    more than the rest of its bookkeeping. Asked per call: an app may set its
    provider after ``init_app``."""
    return not isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


def carrier() -> str | None:
    """The current trace context as the job stores it (JSON), or None when no
    span is current (the propagator then writes nothing) or no SDK is set up."""
    if not recording():
        return None
    values: dict[str, str] = {}
    propagate.inject(values)
    return json.dumps(values, separators=(",", ":")) if values else None


def _links(stored: str | None) -> list[Link]:
    if not stored:
        return []
    try:
        values = json.loads(stored)
    except ValueError:
        return []  # a hand-edited row: the run goes on, unlinked
    if not isinstance(values, dict):
        return []
    origin = trace.get_current_span(propagate.extract(values)).get_span_context()
    return [Link(origin)] if origin.is_valid else []


@contextmanager
def run_span(job: Job[Any]) -> Iterator[Any]:
    """The span of one run of ``job``, current while its handler runs; the
    caller reports the outcome with ``finished``."""
    tracer = trace.get_tracer("flask_queue", __version__)
    with tracer.start_as_current_span(
        f"process {job.queue}",
        kind=SpanKind.CONSUMER,
        links=_links(job.trace_context),
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.id,
            "flask_queue.attempt": job.attempt,
        },
        # The outcome says what a failed run was; the runner never lets a
        # handler's exception escape, so nothing is recorded twice.
        record_exception=False,
        set_status_on_exception=True,
    ) as span:
        yield span


def finished(span: Any, outcome: str, error: str | None) -> None:
    """Put a run's outcome (RunResult's words) on its span; a failed, retrying
    or timed-out run is an error span with the run's error line."""
    span.set_attribute("flask_queue.outcome", outcome)
    if outcome in ("failed", "retrying", "timed out"):
        span.set_status(Status(StatusCode.ERROR, error or outcome))


def failed(exc: BaseException) -> None:
    """Record a handler's exception on the run's span (the current one)."""
    trace.get_current_span().record_exception(exc)
