"""OpenTelemetry: the trace an enqueue ran in, carried to the job's runs.

``pip install 'flask_queue[otel]'`` (opentelemetry-api). An enqueue stores the
current W3C trace context (``traceparent``/``tracestate``, by the W3C propagator
itself, not the global one: see ``_otel``) in the job's ``trace_context`` column;
every run of the job is a ``CONSUMER`` span, ``process <queue>``, *linked* to that
context rather than parented by it. A link, because one enqueue may be followed by
many runs (retries, a repeating job's occurrences, a durable job's replays) hours
apart: as children they would
stretch the request's trace over days. The run's parent is whatever span is
current where it runs (the invoke request's, when the app is instrumented), so
the handler's own spans (SQL, HTTP calls) nest under it.

Only the API is used, imported at the first traced enqueue or run: with tracing
off, or without the package, nothing of it is loaded; without an SDK configured
no span is made and nothing is stored.
``QUEUE_TRACING`` (``"auto"``, True, False) turns it off or makes its absence an
error.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .job import Job

log = logging.getLogger("flask_queue")

#: What ``QUEUE_TRACING="auto"`` finds: is the API installed? Found without
#: importing it: with tracing off nothing of OpenTelemetry is loaded.
AVAILABLE = importlib.util.find_spec("opentelemetry") is not None and (
    importlib.util.find_spec("opentelemetry.trace") is not None
)

#: The span attributes' system name (OpenTelemetry's messaging conventions).
SYSTEM = "flask_queue"

#: Most characters of ``tracestate`` stored (W3C: at most 512 of list members).
TRACESTATE_MAX = 512


@cache
def _otel() -> tuple[Any, Any]:
    """OpenTelemetry's trace API, imported on first use.

    The W3C trace-context propagator is used directly, never the global one
    (``opentelemetry.propagate``, ``OTEL_PROPAGATORS``): the job stores the
    trace context and nothing else. The global default also carries W3C
    ``baggage``, which a client sets in a request header: it would be copied,
    unencrypted and unbounded, into every job row, and no run reads it."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # Loads now the provider that OTEL_PYTHON_TRACER_PROVIDER names, if any:
    # ``recording`` then reads the API's global instead of asking it (below).
    trace.get_tracer_provider()
    return trace, TraceContextTextMapPropagator()


#: ``recording``'s sign that the API no longer keeps its provider where it did.
_UNKNOWN = object()


def recording() -> bool:
    """Whether an SDK (a real tracer provider) is set up: until the app sets
    one, OpenTelemetry's spans are no-ops, and making them cost a no-op run
    more than the rest of its bookkeeping. Asked per call: an app may set its
    provider after ``init_app``."""
    trace, _ = _otel()
    # ``get_tracer_provider()`` looks in os.environ on every call until a provider
    # is set: a tenth of a no-op run's bookkeeping with the API installed and no
    # SDK set up. ``set_tracer_provider`` sets this global (once per process), and
    # ``_otel`` loaded an environment-named provider already, so it is read as is.
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is _UNKNOWN:  # a release of the API that keeps it elsewhere
        provider = trace.get_tracer_provider()
    return provider is not None and not isinstance(
        provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


def carrier() -> str | None:
    """The current W3C trace context as the job stores it (JSON of
    ``traceparent`` and, when at most ``TRACESTATE_MAX`` characters,
    ``tracestate``), or None when no span is current or no SDK is set up."""
    if not recording():
        return None
    values: dict[str, str] = {}
    _otel()[1].inject(values)
    if len(values.get("tracestate", "")) > TRACESTATE_MAX:
        del values["tracestate"]  # the link needs only the traceparent
    return json.dumps(values, separators=(",", ":")) if values else None


def _links(stored: str | None) -> list[Any]:
    """The link to the stored context; none for a row whose context cannot be
    read (edited by hand, or written by something else): the run goes on."""
    if not stored:
        return []
    trace, w3c = _otel()
    try:
        values = json.loads(stored)
        if not isinstance(values, dict):
            return []
        values = {k: v for k, v in values.items() if isinstance(v, str)}
        origin = trace.get_current_span(w3c.extract(values)).get_span_context()
    except Exception:  # noqa: BLE001 - tracing never fails a run
        return []
    return [trace.Link(origin)] if origin.is_valid else []


@contextmanager
def run_span(job: Job[Any]) -> Iterator[Any]:
    """The span of one run of ``job``, current while its handler runs; the
    caller reports the outcome with ``finished``."""
    trace, _ = _otel()
    tracer = trace.get_tracer("flask_queue", __version__)
    with tracer.start_as_current_span(
        f"process {job.queue}",
        kind=trace.SpanKind.CONSUMER,
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
        trace, _ = _otel()
        span.set_status(trace.Status(trace.StatusCode.ERROR, error or outcome))


def failed(exc: BaseException) -> None:
    """Record a handler's exception on the run's span (the current one)."""
    _otel()[0].get_current_span().record_exception(exc)
