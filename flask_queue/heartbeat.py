"""Lease heartbeats: while a handler runs, its lease keeps being extended.

A lease only has to outlast one beat, not the longest handler, so ``QUEUE_LEASE``
can be short (a minute) and a run whose process died is re-claimed within about
that, while a handler that legitimately runs for twenty minutes runs once.

One daemon thread per app and process extends the leases of every run that
process has in flight with one statement per beat (not one per job). A run whose
lease was taken over anyway (the process stalled past its lease and another
runner claimed the job) drops out of the next beat and is logged; its finish
already changes nothing, because the attempt no longer owns the row.

The same beat carries each run's control (``control.py``): the progress its
handler reported since the last beat is written with the lease, and a cancel
asked for in any process is read back and handed to the run. Between beats the
thread also wakes at the earliest run timeout, so a timeout is kept to within
a few milliseconds, not to within a beat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from .control import CANCEL, TIMED_OUT, RunControl

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
        #: The controls of runs whose handler runs in this process.
        self._controls: dict[tuple[str, int], RunControl] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, job_id: str, attempt: int) -> None:
        self.add_many([(job_id, attempt)])

    def add_many(self, runs: Iterable[tuple[str, int]]) -> None:
        """``add`` for a claim's runs, under one lock."""
        with self._lock:
            for run in runs:
                self._runs[run] += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="flask_queue-heartbeat", daemon=True
                )
                self._thread.start()

    def attach(self, control: RunControl) -> None:
        """Carry ``control``'s progress and cancel with its run's beats (and
        wake for its timeout)."""
        with self._lock:
            self._controls[(control.job_id, control.attempt)] = control
        if control.deadline is not None:
            self._wake.set()  # the loop's next wait is shorter now

    def discard(self, job_id: str, attempt: int) -> None:
        self.discard_many([(job_id, attempt)])

    def discard_many(self, runs: Iterable[tuple[str, int]]) -> None:
        """``discard`` for a batch of written outcomes, under one lock."""
        with self._lock:
            for key in runs:
                self._runs[key] -= 1
                if self._runs[key] <= 0:
                    del self._runs[key]
                    self._finishing.discard(key)
                    self._controls.pop(key, None)

    def finishing(self, job_id: str, attempt: int) -> None:
        """Say the run's outcome is being recorded (it stays in the beat meanwhile:
        a finish retried through an outage still needs its lease)."""
        with self._lock:
            self._finishing.add((job_id, attempt))

    def running(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._runs)

    def beat(self) -> set[tuple[str, int]]:
        """Extend every in-flight run's lease now (writing their progress); hand
        each cancel to its run; return the runs that lost their lease."""
        runs = self.running()
        if not runs:
            return set()
        with self._lock:
            controls = [self._controls[r] for r in runs if r in self._controls]
        reported = {c.job_id: p for c in controls if (p := c.take_progress()) is not None}
        kept = self.store.extend_leases(runs, self.lease, reported)
        for control in controls:
            if kept.get((control.job_id, control.attempt)):
                control.stop(CANCEL)
        with self._lock:
            lost = {
                r for r in set(runs) - kept.keys() if r in self._runs and r not in self._finishing
            }
            gone = [self._controls[r] for r in lost if r in self._controls]
        for control in gone:
            # Deleted or taken over: whatever it does now is not recorded; say stop.
            control.stop(CANCEL)
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

    def _next_deadline(self) -> float | None:
        with self._lock:
            deadlines = [
                c.deadline
                for c in self._controls.values()
                if c.deadline is not None and not c.outcome_taken
            ]
        return min(deadlines, default=None)

    def expire(self, now: float | None = None) -> list[RunControl]:
        """Stop every run past its timeout (once); return their controls. The
        runner's ``on_timeout`` writes the timed-out attempt's outcome at once:
        a sync handler that never checks would otherwise hold the job forever."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [c for c in self._controls.values() if c.overdue(now) and not c.outcome_taken]
        # The outcome is taken before the stop: a cancelled async task then ends
        # its run without an outcome of its own (the timeout's is written). A
        # run cancelled earlier whose handler never stopped ends at its deadline.
        stopped = [c for c in due if c.take_outcome()]
        for control in stopped:
            control.stop(TIMED_OUT)
            # Written on a thread of its own: a slow write (an outage, a lock
            # wait) must not hold up every other run's beat.
            threading.Thread(
                target=self._record_timeout,
                args=(control,),
                name="flask_queue-timeout",
                daemon=True,
            ).start()
        return stopped

    @staticmethod
    def _record_timeout(control: RunControl) -> None:
        try:
            control.timed_out()
        except Exception:
            log.warning(
                "flask_queue: could not record the timeout of job %s",
                control.job_id,
                exc_info=True,
            )

    def _loop(self) -> None:
        last = time.monotonic()
        while True:
            deadline = self._next_deadline()
            wait = self.interval - (time.monotonic() - last)
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            self._wake.wait(max(wait, 0))
            self._wake.clear()
            with self._lock:
                if not self._runs:
                    self._thread = None
                    return
            self.expire()
            if time.monotonic() - last < self.interval:
                continue  # woken for a timeout (or an attach), not for a beat
            last = time.monotonic()
            try:
                self.beat()
            except Exception:
                log.warning("flask_queue: lease heartbeat failed; retrying", exc_info=True)
