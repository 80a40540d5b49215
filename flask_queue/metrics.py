"""Prometheus metrics at ``GET <prefix>/metrics`` (optional: ``flask_queue[metrics]``).

Two kinds, in one registry per app:

- read from the database at each scrape, the same numbers in every process:
  ``flask_queue_jobs{queue,status}`` (each count stops, like the dashboard's, so a
  scrape never reads more than 10,001 index entries per cell) and
  ``flask_queue_oldest_due_seconds{queue}``, how long the oldest due job of
  each queue has waited (queue lag, one index probe per queue);
- counted by this process as its runs start and end: ``flask_queue_runs_started_total``,
  ``..._succeeded_total``, ``..._failed_total`` and the histogram
  ``flask_queue_run_duration_seconds``, per queue. Prometheus sums them over the
  processes it scrapes (each worker serves its own only if it serves HTTP; the
  web processes' counters cover the ``http`` and ``thread`` executors);
- ``flask_queue_delivery_failures_total``: runs this process's ``http`` executor
  could not deliver (invoke endpoint unreachable, refusing, or answering 5xx): a
  wrong ``QUEUE_BASE_URL`` shows here while every run stays undone.

The endpoint takes the produce bearer token (``flask queue token``): scrapers are
machines, like the cron that pings ``/produce``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .job import JobStatus

if TYPE_CHECKING:
    from .state import QueueState

#: Counts stop here, as the dashboard's queue cells do.
CELL_CAP = 10_000


def require_prometheus_client() -> Any:
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "GET /metrics needs prometheus_client: pip install 'flask_queue[metrics]'."
        ) from None
    return prometheus_client


class Metrics:
    """The registry of one app, and the counts the runner reports to it."""

    def __init__(self, state: QueueState) -> None:
        prom = require_prometheus_client()
        self.state = state
        self.registry = prom.CollectorRegistry()
        labels = ["queue"]
        self.started = prom.Counter(
            "flask_queue_runs_started",
            "Runs started in this process.",
            labels,
            registry=self.registry,
        )
        self.succeeded = prom.Counter(
            "flask_queue_runs_succeeded",
            "Runs whose handler returned, in this process.",
            labels,
            registry=self.registry,
        )
        self.failed = prom.Counter(
            "flask_queue_runs_failed",
            "Runs whose handler raised, in this process.",
            labels,
            registry=self.registry,
        )
        self.duration = prom.Histogram(
            "flask_queue_run_duration_seconds",
            "How long successful handlers ran.",
            labels,
            registry=self.registry,
        )
        self.registry.register(_TableCollector(state, prom))
        self.registry.register(_DeliveryCollector(state))
        #: Each queue's labelled children: ``labels()`` per run was most of
        #: what counting cost a draining worker.
        self._children: dict[str, tuple[Any, Any, Any, Any]] = {}

    # Called by the runner directly, not through the job_* signals: blinker's
    # send checks every receiver for a coroutine function on every call, which
    # cost a no-op run more than the counting (and the signals then have no
    # receivers unless the app connects its own).
    def _of(self, queue: str) -> tuple[Any, Any, Any, Any]:
        children = self._children.get(queue)
        if children is None:
            children = (
                self.started.labels(queue),
                self.succeeded.labels(queue),
                self.duration.labels(queue),
                self.failed.labels(queue),
            )
            self._children[queue] = children
        return children

    def run_started(self, queue: str) -> None:
        self._of(queue)[0].inc()

    def run_succeeded(self, queue: str, duration: float) -> None:
        children = self._of(queue)
        children[1].inc()
        children[2].observe(duration)

    def run_failed(self, queue: str) -> None:
        self._of(queue)[3].inc()

    def exposition(self) -> tuple[bytes, str]:
        prom = require_prometheus_client()
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


class _DeliveryCollector:
    """The delivery failures the app's ``DeliveryLog`` counted, read at scrape
    time: the executors count them whether or not prometheus_client is there."""

    def __init__(self, state: QueueState) -> None:
        self.state = state

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            "flask_queue_delivery_failures",
            "Runs this process could not deliver to the invoke endpoint (unreachable,"
            " refused, or a 5xx).",
            value=self.state.deliveries.failures,
        )


class _TableCollector:
    """Reads the job table at scrape time."""

    def __init__(self, state: QueueState, prom: Any) -> None:
        self.state = state
        self.prom = prom

    def describe(self) -> list[Any]:
        return []  # collected lazily: no database read at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        store = self.state.store
        names = sorted(self.state.queue.handlers)
        jobs = GaugeMetricFamily(
            "flask_queue_jobs",
            f"Jobs per queue and status (counts stop at {CELL_CAP + 1:,}).",
            labels=["queue", "status"],
        )
        lag = GaugeMetricFamily(
            "flask_queue_oldest_due_seconds",
            "How long the oldest due, unclaimed job of the queue has waited (0: none).",
            labels=["queue"],
        )
        now = store.now()
        for name in names:
            for status in JobStatus:
                count = store.count_capped(CELL_CAP, status=status.value, queue=name)
                jobs.add_metric([name, status.value], count)
            oldest = store.oldest_due(name)
            lag.add_metric([name], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        yield jobs
        yield lag
