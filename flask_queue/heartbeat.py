"""Lease heartbeats: while a handler runs, its lease keeps being extended.

A lease only has to outlast one beat, not the longest handler, so ``QUEUE_LEASE``
can be short (a minute) and a run whose process died is re-claimed within about
that, while a handler that legitimately runs for twenty minutes runs once.

One daemon thread per app and process extends the leases of every run that
process has in flight with one statement per beat (not one per job). A run whose
lease was taken over anyway (the process stalled past its lease and another
runner claimed the job) drops out of the next beat and is logged; its finish
already changes nothing, because the attempt no longer owns the row.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import JobStore

log = logging.getLogger("flask_queue")

#: Beats per lease: a lease survives two missed beats (a slow statement, a GC pause).
BEATS_PER_LEASE = 3


class Heartbeat:
    def __init__(self, store: JobStore, lease: timedelta) -> None:
        self.store = store
        self.lease = lease
        self.interval = max(lease.total_seconds() / BEATS_PER_LEASE, 0.01)
        self._runs: Counter[tuple[str, int]] = Counter()
        #: Runs whose finish is being written: a beat that finds one no longer
        #: RUNNING raced its finish, which is no lost lease.
        self._finishing: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, job_id: str, attempt: int) -> None:
        with self._lock:
            self._runs[(job_id, attempt)] += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="flask_queue-heartbeat", daemon=True
                )
                self._thread.start()

    def discard(self, job_id: str, attempt: int) -> None:
        with self._lock:
            key = (job_id, attempt)
            self._runs[key] -= 1
            if self._runs[key] <= 0:
                del self._runs[key]
                self._finishing.discard(key)

    def finishing(self, job_id: str, attempt: int) -> None:
        """Say the run's outcome is being recorded (it stays in the beat meanwhile:
        a finish retried through an outage still needs its lease)."""
        with self._lock:
            self._finishing.add((job_id, attempt))

    def running(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._runs)

    def beat(self) -> set[tuple[str, int]]:
        """Extend every in-flight run's lease now; return the runs that lost theirs."""
        runs = self.running()
        if not runs:
            return set()
        kept = self.store.extend_leases(runs, self.lease)
        with self._lock:
            lost = {r for r in set(runs) - kept if r in self._runs and r not in self._finishing}
        for job_id, attempt in sorted(lost):
            log.warning(
                "flask_queue: job %s lost its lease during attempt %d (another runner took"
                " it over); this run's outcome will not be recorded",
                job_id,
                attempt,
            )
            with self._lock:
                self._runs.pop((job_id, attempt), None)
        return lost

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            with self._lock:
                if not self._runs:
                    self._thread = None
                    return
            try:
                self.beat()
            except Exception:
                log.warning("flask_queue: lease heartbeat failed; retrying", exc_info=True)
