"""Runs succeeded and failed per minute, for the dashboard's charts.

Each process counts in memory and adds its counts to the stats table
(``store.schema.stats_table``) in one statement at most once per ``FLUSH_EVERY``:
the run path never writes a row per job for a chart. A process flushes when it
counts a run and the interval is up, when it produces (every cron ping) or idles
(the worker), and at exit. What a process that is killed had not flushed yet
(at most one interval of its runs) is missing from the charts; nothing else is.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import JobStore

log = logging.getLogger("flask_queue")

#: Seconds between a process's writes of its counts.
FLUSH_EVERY = 10.0
#: How long the per-minute rows are kept (the longest chart is a day).
KEEP = timedelta(days=2)
ONE_MINUTE = timedelta(minutes=1)
#: Seconds between a process's deletes of rows older than ``KEEP``.
PRUNE_EVERY = 3600.0


def minute_of(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)


class Tally:
    """This process's run counts not yet written, by (minute, queue)."""

    def __init__(self, store: JobStore, every: float = FLUSH_EVERY) -> None:
        self.store = store
        self.every = every
        self._counts: dict[tuple[datetime, str], list[int]] = {}
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._next = time.monotonic() + every
        self._prune_next = 0.0
        #: The minute of the last run counted: [start, end).
        self._minute: tuple[datetime, datetime] | None = None

    def count(self, queue: str, succeeded: bool, when: datetime) -> None:
        """One run ended (a failure that will be retried counts as failed)."""
        # The minute runs end in is nearly always the last one's: two comparisons,
        # not a ``replace`` per run (a tuple, swapped whole, so threads may share it).
        minute = self._minute
        if minute is None or not minute[0] <= when < minute[1]:
            minute = self._minute = (minute_of(when), minute_of(when) + ONE_MINUTE)
        key = (minute[0], queue)
        with self._lock:
            pair = self._counts.setdefault(key, [0, 0])
            pair[0 if succeeded else 1] += 1
        self.flush_if_due()

    def flush_if_due(self) -> None:
        if time.monotonic() >= self._next:
            self.flush()

    def prune_if_due(self, now: datetime) -> None:
        """Delete the minutes older than ``KEEP``, at most once per ``PRUNE_EVERY``
        in this process (produce calls this; a range of the table's key)."""
        if time.monotonic() < self._prune_next:
            return
        self._prune_next = time.monotonic() + PRUNE_EVERY
        self.store.prune_stats(now - KEEP)

    def flush(self) -> None:
        """Add the counts to the table now. Never raises: a database that is
        away keeps them for the next try (they are only chart data)."""
        if not self._writing.acquire(blocking=False):
            return  # another thread is writing them
        try:
            with self._lock:
                counts, self._counts = self._counts, {}
                self._next = time.monotonic() + self.every
            if not counts:
                return
            rows = [(m, q, s, f) for (m, q), (s, f) in counts.items()]
            try:
                self.store.add_stats(rows)
            except Exception as exc:  # noqa: BLE001 - chart data must not break a run
                log.debug("flask_queue: could not write run counts (%s); kept for later", exc)
                with self._lock:
                    for key, (s, f) in counts.items():
                        pair = self._counts.setdefault(key, [0, 0])
                        pair[0] += s
                        pair[1] += f
        finally:
            self._writing.release()
