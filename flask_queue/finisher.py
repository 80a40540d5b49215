"""Batched finishes: the outcomes of runs written a batch at a time.

The thread executor and the worker run what they claim in this process. Writing
each run's outcome as it ends costs a database round trip per job, which is
most of a no-op job's cost; here the outcomes of the runs that end within
``FLUSH_DELAY`` (or the first ``size`` of them) are written together, one
statement per kind of outcome (see ``JobStore.finish_many``).

What this trades: a process killed between a handler's return and the write of
its outcome (at most ``FLUSH_DELAY`` later, or longer while the database is
away) leaves its run RUNNING; the lease runs out and the job runs again, as for
any run whose process died mid-handler. At-least-once holds; so does the
attempt guard, which makes a late or repeated write change nothing. Every way
the worker stops (SIGTERM, ``--max-jobs``, the end of ``work``) writes what is
pending first, and so does the thread executor's shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .errors import StorageError
from .store import Progress

if TYPE_CHECKING:
    from .heartbeat import Heartbeat
    from .job import Job
    from .store import Finish, JobStore

log = logging.getLogger("flask_queue")

#: The longest an outcome waits for its batch: bounds how late a run is seen as
#: done, and how much a kill can make run again.
FLUSH_DELAY = 0.05
#: Backoff of a batch the database refused: doubling up to RETRY_CAP while
#: the database stays away, for at most two leases (the heartbeat keeps the
#: runs' leases meanwhile).
RETRY_FIRST = 0.05
RETRY_CAP = 2.0


class Finisher:
    def __init__(self, store: JobStore, heartbeat: Heartbeat, *, size: int) -> None:
        self.store = store
        self.heartbeat = heartbeat
        self.size = size
        self._pending: list[tuple[Job[Any], Finish]] = []
        #: Runs whose handlers began, to mark started (``JobStore.mark_started``),
        #: with when (``time.monotonic``).
        self._starts: list[tuple[str, int, float]] = []
        self._lock = threading.Lock()
        #: Held while a batch is written: ``flush`` waits for the writer's batch too.
        self._writing = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def started(self, job: Job[Any]) -> None:
        """Note that a run's handler begins; marked in the database within two
        ``FLUSH_DELAY`` (a process that dies sooner costs that run no attempt:
        a handler that kills its process faster than that is re-run each lease
        instead of ending FAILED). A start waits one whole delay first: most
        quick runs end by then, and a run whose outcome deletes its row needs
        no mark at all."""
        with self._lock:
            self._starts.append((job.id, job.attempt, time.monotonic()))
            self._ensure_thread()

    def add(self, job: Job[Any], outcome: Finish) -> None:
        """Queue a run's outcome; it is written within ``FLUSH_DELAY``."""
        self.heartbeat.finishing(job.id, job.attempt)
        with self._lock:
            self._pending.append((job, outcome))
            if len(self._pending) >= self.size:
                self._wake.set()
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        # Called with the lock held.
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="flask_queue-finisher", daemon=True
            )
            self._thread.start()

    def _write_starts(self, starts: list[tuple[str, int]], gone: set[tuple[str, int]]) -> bool:
        if not starts:
            return False
        try:
            self.store.mark_started(starts, deleted=gone)
        except Exception:
            # Only the crash accounting is lost: a death of these runs' process
            # would not count as an attempt. Their outcomes still get written.
            log.warning("flask_queue: could not mark %d run(s) started", len(starts), exc_info=True)
        return True

    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._starts)

    def flush(self, patience: float | None = None) -> None:
        """Write every pending outcome now, and wait for a batch being written.

        While the database is away it keeps trying for ``patience`` seconds
        (default: two leases), then writes what it can one by one and logs the
        rest, whose runs will run again after their leases.
        """
        while self._write_some(patience, every_start=True) or self.pending():
            pass

    def _write_some(self, patience: float | None = None, *, every_start: bool = False) -> bool:
        """Write a batch of outcomes and the starts that waited a whole
        ``FLUSH_DELAY`` (all of them with ``every_start``); whether there
        was anything to write."""
        with self._writing:
            with self._lock:
                batch, self._pending = self._pending[: self.size], self._pending[self.size :]
                # A run whose outcome deletes its row in this same write needs
                # no start mark: nothing is left to read it. If the outcome
                # cannot be written, such a run is claimed again at its lease's
                # end as one that never started: run again, as any run whose
                # outcome was lost, but not counted as a failed attempt.
                gone = {
                    (job.id, job.attempt) for job, outcome in batch if outcome.status == "DELETE"
                }
                ended = {(job.id, job.attempt) for job, _ in batch}
                young = time.monotonic() - FLUSH_DELAY
                starts: list[tuple[str, int]] = []
                waiting: list[tuple[str, int, float]] = []
                for job_id, attempt, at in self._starts:
                    if every_start or at <= young or (job_id, attempt) in ended:
                        starts.append((job_id, attempt))
                    else:
                        waiting.append((job_id, attempt, at))
                self._starts = waiting
            wrote = self._write_starts(starts, gone)
            if batch:
                self._write(batch, patience)
            return wrote or bool(batch)

    def _loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_DELAY)
            self._wake.clear()
            wrote = self._write_some()
            with self._lock:
                if not wrote and not self._pending and not self._starts:
                    self._thread = None  # idle for a whole delay: the next add restarts it
                    return

    def _write(self, batch: list[tuple[Job[Any], Finish]], patience: float | None = None) -> None:
        try:
            owned = self._write_through_outages(batch, patience)
            if owned < len(batch):
                log.warning(
                    "flask_queue: %d of %d finished run(s) had lost their lease to another"
                    " runner; their outcomes were not recorded",
                    len(batch) - owned,
                    len(batch),
                )
        except Exception:
            # Not an outage (or one longer than two leases): write them one by
            # one, so one row the database refuses cannot hold back the rest.
            log.exception("flask_queue: could not record %d outcome(s) as a batch", len(batch))
            for job, outcome in batch:
                try:
                    self.store.finish(job, outcome)
                except Exception:
                    log.exception(
                        "flask_queue: could not record the outcome of job %s; its lease will"
                        " run out and it will run again",
                        job.id,
                    )
        finally:
            self.heartbeat.discard_many([(job.id, job.attempt) for job, _ in batch])

    def _write_through_outages(
        self, batch: list[tuple[Job[Any], Finish]], patience: float | None
    ) -> int:
        delay = RETRY_FIRST
        if patience is None:
            patience = 2 * self.heartbeat.lease.total_seconds()
        give_up = time.monotonic() + patience
        progress = Progress()  # a retry writes only what the failed try did not
        while True:
            try:
                return self.store.finish_many(batch, progress)
            except StorageError as exc:
                if not exc.transient or time.monotonic() + delay > give_up:
                    raise
                log.warning(
                    "flask_queue: could not record %d outcome(s) (%s); retrying in %.2fs",
                    len(batch),
                    exc,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)
