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

import bisect
import collections
import threading
import time
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
        self.runs = _RunCollector()
        self.registry.register(self.runs)
        self.registry.register(_TableCollector(state, prom))
        self.registry.register(_DeliveryCollector(state))

    # Called by the runner directly, not through the job_* signals: blinker's
    # send checks every receiver for a coroutine function on every call, which
    # cost a no-op run more than the counting (and the signals then have no
    # receivers unless the app connects its own).
    def run_started(self, queue: str) -> None:
        self.runs.note(queue, STARTED)

    def run_succeeded(self, queue: str, duration: float) -> None:
        self.runs.note(queue, duration)

    def run_failed(self, queue: str) -> None:
        self.runs.note(queue, FAILED_RUN)

    def exposition(self) -> tuple[bytes, str]:
        prom = require_prometheus_client()
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


#: What ``_RunCollector.note`` records besides a success's duration.
STARTED = -1.0
FAILED_RUN = -2.0
#: prometheus_client's default histogram buckets (seconds; +Inf is implied).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: The buckets' ``le`` labels, as prometheus_client writes them.
BOUNDS = (*(repr(b) for b in BUCKETS), "+Inf")
#: Notes kept before the noting thread folds them into the counts.
FOLD_AT = 256


class _RunCollector:
    """The run counters and the duration histogram, per queue.

    A run only appends a note to a deque (atomic; a tenth of a microsecond),
    the notes are folded into plain counts at each scrape, or by the thread
    whose note fills ``FOLD_AT``. prometheus_client's own Counter and
    Histogram took a lock per increment, four per run, and walked the buckets
    in Python: a few percent of a no-op run on a draining worker.
    """

    def __init__(self) -> None:
        self._notes: collections.deque[tuple[str, float]] = collections.deque()
        self._lock = threading.Lock()
        #: queue -> [started, succeeded, failed, duration sum, *bucket counts, +Inf count]
        self._counts: dict[str, list[float]] = {}
        self._created: dict[str, float] = {}

    def note(self, queue: str, what: float) -> None:
        self._notes.append((queue, what))
        if len(self._notes) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        with self._lock:
            notes, counts = self._notes, self._counts
            while notes:
                try:
                    queue, what = notes.popleft()
                except IndexError:  # pragma: no cover - another folder took the last
                    break
                row = counts.get(queue)
                if row is None:
                    row = counts[queue] = [0.0] * (4 + len(BUCKETS) + 1)
                    self._created[queue] = time.time()
                if what == STARTED:
                    row[0] += 1
                elif what == FAILED_RUN:
                    row[2] += 1
                else:
                    row[1] += 1
                    row[3] += what
                    row[4 + bisect.bisect_left(BUCKETS, what)] += 1

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        self.fold()
        with self._lock:
            counts = {queue: list(row) for queue, row in self._counts.items()}
            created = dict(self._created)
        families = [
            CounterMetricFamily(name, doc, labels=["queue"])
            for name, doc in (
                ("flask_queue_runs_started", "Runs started in this process."),
                ("flask_queue_runs_succeeded", "Runs whose handler returned, in this process."),
                ("flask_queue_runs_failed", "Runs whose handler raised, in this process."),
            )
        ]
        duration = HistogramMetricFamily(
            "flask_queue_run_duration_seconds",
            "How long successful handlers ran.",
            labels=["queue"],
        )
        for queue in sorted(counts):
            row = counts[queue]
            for family, value in zip(families, row[:3], strict=True):
                family.add_metric([queue], value, created=created[queue])
            cumulative, buckets = 0.0, []
            for bound, count in zip(BOUNDS, row[4:], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            duration.add_metric([queue], buckets, row[3])
        yield from families
        yield duration


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
