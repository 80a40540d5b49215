"""The rate limits' start log (``<table>_starts``): claims of rate-limited
queues write an entry, starts stamp it, and each limited claim counts the
window from it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .core import RUNNING, StoreCore, chunks
from .errors import storage_errors
from .predicates import key_among

#: Seconds between looks at the queue table while it holds no limited queue.
LIMITS_RECHECK = 1.0


class RateLog:
    """The start log, and whether any queue has a rate limit (looked at once a
    ``LIMITS_RECHECK`` at most)."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core
        #: The rate-limited queues at the last look, and when to look again
        #: (see ``stamps_starts``).
        self._rated: frozenset[str] = frozenset()
        self._rated_recheck = 0.0

    def note_rated(self, names: Iterable[str]) -> None:
        """What the limited claim found in the queue table: the queues with a
        rate limit (good for ``LIMITS_RECHECK``)."""
        self._rated = frozenset(names)
        self._rated_recheck = time.monotonic() + LIMITS_RECHECK

    def stamps_starts(self, queue: str | None = None) -> bool:
        """SELECT of the rate-limited queues' names from the queue table, at
        most once per ``LIMITS_RECHECK`` (a limited claim also updates them):
        whether a start of ``queue`` (of any queue, without one) goes in the
        rate log. Runs of other queues have no entry to stamp: the invoke
        path's start writes nothing more for them."""
        if time.monotonic() >= self._rated_recheck:
            q = self.core.queues
            with storage_errors("read queue limits"), self.core.engine.connect() as c:
                names = c.execute(sa.select(q.c.name).where(q.c.rate_limit.is_not(None)))
                self.note_rated(names.scalars())
        return queue in self._rated if queue is not None else bool(self._rated)

    def stamp(self, runs: Sequence[tuple[str, int]], now: datetime) -> None:
        """UPDATE of the start log by its primary key (job_id, attempt) per
        FINISH_CHUNK runs: stamp the start time on these runs' entries (runs
        of queues without a rate limit have none: nothing changes).

        Until stamped, an entry counts in every window (claimed, not started),
        so a run that waited in a pool's queue before it started holds its
        place from its real start on, not from its claim: the next start comes
        a whole window after it. Stamped after the run's start (a little late
        at most: the limit errs towards fewer starts)."""
        s = self.core.starts
        for chunk in chunks(sorted(runs)):
            stmt = (
                sa.update(s)
                .where(
                    self.core.dialect.runs_among(s.c.job_id, s.c.attempt, chunk),
                    s.c.started_at.is_(None),
                )
                .values(started_at=now)
            )
            self.core.repeatable("record rate-limited starts", stmt)

    def prune(self, c: Connection, rated: list[Any], now: datetime) -> None:
        """UPDATE (dead unstamped claims), then a DELETE per queue (what left its
        window), on the start log's (queue, started_at), in the limited claim's
        transaction: what is left counts against each rate-limited queue's
        window at ``now`` (``used``), runs started within it, or claimed and not
        started yet (they will start later, so they hold a place in every window
        from now on).

        A claim whose run is no longer going (not RUNNING under that attempt
        with a live lease) but was never stamped is stamped ``now``: its run may
        have started and ended before its start was written (a stamp the
        database refused, a process killed in between), and forgetting it could
        let N more start in that window. (A run given back unstarted,
        ``forget``, removes its claim itself.) Errs towards fewer starts."""
        s, t = self.core.starts, self.core.table
        names = [r.name for r in rated]
        alive = (
            sa.select(t.c.id)
            .where(
                t.c.id == s.c.job_id,
                t.c.attempt == s.c.attempt,
                t.c.status == RUNNING,
                t.c.lease_until > now,
            )
            .exists()
        )
        c.execute(
            sa.update(s)
            .where(s.c.queue.in_(names), s.c.started_at.is_(None), ~alive)
            .values(started_at=now)
        )
        for row in rated:
            since = now - timedelta(milliseconds=row.rate_window_ms or 0)
            c.execute(sa.delete(s).where(s.c.queue == row.name, s.c.started_at <= since))

    def used(self, c: Connection, queue: str, keys: list[Any]) -> dict[Any, int]:
        """SELECT count(*) GROUP BY key on the start log's (queue, key), after
        ``prune``: the entries that count against each of ``keys``' windows
        (None: the keyless group's) in ``queue``."""
        s = self.core.starts
        counted = (
            sa.select(s.c.key, sa.func.count())
            .where(s.c.queue == queue, key_among(s.c.key, keys))
            .group_by(s.c.key)
        )
        return {k: int(n) for k, n in c.execute(counted)}

    def log_claims(self, c: Connection, claimed: list[Any], rated: set[str]) -> None:
        """An executemany INSERT into the start log, in the limited claim's
        transaction: an unstamped entry for each claimed run of a queue in
        ``rated`` (it counts in every window until its start is stamped)."""
        entries = [
            {"job_id": r.id, "attempt": r.attempt, "queue": r.queue, "key": r.key}
            for r in claimed
            if r.queue in rated
        ]
        if entries:
            c.execute(sa.insert(self.core.starts).values(started_at=None), entries)

    def forget(self, job_id: str, attempt: int) -> None:
        """DELETE from the start log by its primary key, if unstamped: a run
        given back before it started holds no place in a window."""
        s = self.core.starts
        with storage_errors("release a job"), self.core.one_statement() as c:
            c.execute(
                sa.delete(s).where(
                    s.c.job_id == job_id, s.c.attempt == attempt, s.c.started_at.is_(None)
                )
            )
