"""Deliveries that failed: what the ``http`` executor could not hand to the
invoke endpoint (unreachable, refused, a 5xx), so that a wrong
``QUEUE_BASE_URL`` does not look like success.

Kept per app and per process, in memory: produce's answer counts its own
(``ProduceResult.failed_deliveries``), the dashboard shows a banner while they
go on, and ``/metrics`` counts them (``flask_queue_delivery_failures_total``,
which Prometheus sums over the processes it scrapes). A dashboard served by
another process than the one that sent sees that process's own deliveries
only: sharing them would cost a write per failed send.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

#: How long after the last failed delivery the dashboard still says so.
RECENT = timedelta(minutes=5)


class Failed(NamedTuple):
    """What an executor's ``deliver`` returns for a run it could not deliver."""

    error: str


@dataclass(frozen=True)
class Failing:
    """Deliveries failing right now: how many since ``since``, and the last one."""

    count: int
    since: datetime
    last_at: datetime
    error: str


class DeliveryLog:
    """This process's delivery outcomes for one app; thread-safe."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        #: Every failed delivery since the process started (the metrics counter).
        self.failures = 0
        self._streak = 0
        self._since: datetime | None = None
        self._last: tuple[datetime, str] | None = None

    def failed(self, error: str) -> Failed:
        now = self._clock()
        with self._lock:
            self.failures += 1
            if not self._streak:
                self._since = now
            self._streak += 1
            self._last = (now, error)
        return Failed(error)

    def delivered(self) -> None:
        # One delivery that arrives ends the streak: the URL works again.
        with self._lock:
            self._streak = 0
            self._since = None
            self._last = None

    def failing(self, within: timedelta = RECENT) -> Failing | None:
        """The current streak of failures, if its last one is recent."""
        with self._lock:
            last, since, count = self._last, self._since, self._streak
        if last is None or since is None or self._clock() - last[0] > within:
            return None
        return Failing(count=count, since=since, last_at=last[0], error=last[1])
