"""Counts for the CLI, the dashboard and the metrics: exact and capped job
counts, a queue's lag, recent failures, and the stats table of runs per minute."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

import sqlalchemy as sa

from .core import FAILED, LIVE, StoreCore, aware_utc, naive_utc, text_of
from .errors import storage_errors
from .predicates import is_due, reason_tail

#: Keys the dashboard lists as held back, at most.
HELD_KEYS = 20


class HeldKey(NamedTuple):
    """A key at its limit in a limited queue, and what it holds back."""

    queue: str
    key: str
    #: Its runs going on now, and its starts in the rate window.
    running: int
    started: int
    #: Its due jobs that wait on the limit (capped).
    held: int


class Counts:
    """Reads that count, and the stats table's writes."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def counts(self) -> dict[tuple[str, str], int]:
        """SELECT count(*) GROUP BY status, queue, over the whole table (an index
        scan at best): jobs per (status, queue), exact, for the CLI's ``stats``."""
        t = self.core.table
        stmt = sa.select(t.c.status, t.c.queue, sa.func.count()).group_by(t.c.status, t.c.queue)
        with storage_errors("count jobs"), self.core.engine.connect() as c:
            return {(s, q): n for s, q, n in c.execute(stmt)}

    def oldest_due(self, queue: str) -> datetime | None:
        """SELECT min(run_at), one probe of (queue, status, run_at): the
        ``run_at`` of the queue's oldest due, unclaimed job."""
        t = self.core.table
        stmt = sa.select(sa.func.min(t.c.run_at)).where(
            t.c.queue == queue, is_due(t, self.core.now())
        )
        with storage_errors("read the queue lag"), self.core.engine.connect() as c:
            value = c.execute(stmt).scalar()
        return naive_utc(value) if value is not None else None

    def count_capped(
        self,
        cap: int,
        *,
        status: str | None = None,
        queue: str | None = None,
        due: bool = False,
    ) -> int:
        """``counts_capped`` of one key: count matching jobs, stopping at
        ``cap`` + 1 (shown as "cap+").

        A capped count reads at most cap + 1 index entries, so the dashboard's
        counts cost the same with a thousand jobs or ten million (Oban Web and
        mission_control cap theirs the same way).
        """
        (count,) = self.counts_capped(cap, [(status, queue)], due=due)
        return count

    def counts_capped(
        self, cap: int, keys: Sequence[tuple[str | None, str | None]], *, due: bool = False
    ) -> list[int]:
        """One UNION ALL of capped counts (LIMIT cap + 1 each), on (status,
        run_at) or (queue, status, run_at): ``count_capped`` of each (status,
        queue) in ``keys`` (None: any), one round trip for the overview's whole
        grid instead of one per cell."""
        if not keys:
            return []
        t = self.core.table
        now = self.core.now()
        parts = []
        for i, (status, queue) in enumerate(keys):
            inner = sa.select(sa.literal(1).label("one")).select_from(t)
            if status is not None:
                inner = inner.where(t.c.status == status)
            if queue is not None:
                inner = inner.where(t.c.queue == queue)
            if due:  # due and unclaimed: what a pause or a limit holds back
                inner = inner.where(is_due(t, now))
            sub = inner.limit(cap + 1).subquery(f"capped_{i}")
            parts.append(
                sa.select(sa.literal(i).label("k"), sa.func.count().label("n")).select_from(sub)
            )
        stmt = parts[0] if len(parts) == 1 else sa.union_all(*parts)
        with storage_errors("count jobs"), self.core.engine.connect() as c:
            found = {int(k): int(n) for k, n in c.execute(stmt)}
        return [found[i] for i in range(len(keys))]

    def held_keys(self, cap: int, most: int = HELD_KEYS) -> list[HeldKey]:
        """SELECT of the limited queues, count(*) GROUP BY queue, key of their
        leased live runs and of their rate windows' starts, then one UNION ALL
        of capped due counts: up to ``most`` keys at their limit (running at the
        concurrency, or a full rate window) with the due jobs each holds back,
        most held first. Keyless jobs are left out: the queue's "held back"
        count already covers them."""
        t, q, s = self.core.table, self.core.queues, self.core.starts
        now = self.core.now()
        with storage_errors("count held keys"), self.core.engine.connect() as c:
            limited = c.execute(
                sa.select(q).where(
                    sa.or_(q.c.concurrency.is_not(None), q.c.rate_limit.is_not(None))
                )
            ).all()
            if not limited:
                return []
            names = [r.name for r in limited]
            running: dict[tuple[str, Any], int] = {
                (name, key): int(n)
                for name, key, n in c.execute(
                    sa.select(t.c.queue, t.c.key, sa.func.count())
                    .where(
                        t.c.queue.in_(names),
                        t.c.key.is_not(None),
                        t.c.status.in_(LIVE),
                        t.c.lease_until > now,
                    )
                    .group_by(t.c.queue, t.c.key)
                )
            }
            started: dict[tuple[str, Any], int] = {}
            for row in limited:
                if row.rate_limit is None:
                    continue
                since = now - timedelta(milliseconds=row.rate_window_ms or 0)
                counted = c.execute(
                    sa.select(s.c.key, sa.func.count())
                    .where(
                        s.c.queue == row.name,
                        s.c.key.is_not(None),
                        sa.or_(s.c.started_at.is_(None), s.c.started_at > since),
                    )
                    .group_by(s.c.key)
                )
                started.update({(row.name, key): int(n) for key, n in counted})
            rows = {r.name: r for r in limited}
            full = []
            for name, key in {*running, *started}:
                row = rows[name]
                busy, recent = running.get((name, key), 0), started.get((name, key), 0)
                if (row.concurrency is not None and busy >= row.concurrency) or (
                    row.rate_limit is not None and recent >= row.rate_limit
                ):
                    full.append((name, key, busy, recent))
            full = sorted(full, key=lambda f: (-f[2], -f[3], f[0]))[: most * 4]
            if not full:
                return []
            parts = []
            for i, (name, key, _, _) in enumerate(full):
                inner = (
                    sa.select(sa.literal(1).label("one"))
                    .where(t.c.queue == name, t.c.key == key, is_due(t, now))
                    .limit(cap + 1)
                    .subquery(f"held_{i}")
                )
                parts.append(
                    sa.select(sa.literal(i).label("k"), sa.func.count().label("n")).select_from(
                        inner
                    )
                )
            stmt = parts[0] if len(parts) == 1 else sa.union_all(*parts)
            held = {int(k): int(n) for k, n in c.execute(stmt)}
        found = [
            HeldKey(name, text_of(key), busy, recent, held.get(i, 0))
            for i, (name, key, busy, recent) in enumerate(full)
            if held.get(i, 0)
        ]
        return sorted(found, key=lambda h: (-h.held, h.queue, h.key))[:most]

    def recent_failures(self, limit: int, queue: str | None = None) -> list[tuple[str, str | None]]:
        """SELECT the newest FAILED on (status, run_at) or (queue, status, run_at),
        read backwards: (queue, error line) of the latest ``limit`` FAILED jobs:
        the exception's line, not a thousand whole tracebacks (the end of the
        traceback for rows older than the ``error`` column)."""
        t = self.core.table
        error = sa.func.coalesce(t.c.error, reason_tail(t, self.core.dialect))
        stmt = sa.select(t.c.queue, error).where(t.c.status == FAILED)
        if queue is not None:
            stmt = stmt.where(t.c.queue == queue)
        stmt = stmt.order_by(t.c.run_at.desc()).limit(limit)
        with storage_errors("read failures"), self.core.engine.connect() as c:
            return [(q, r) for q, r in c.execute(stmt)]

    def add_stats(self, rows: Sequence[tuple[datetime, str, int, int]]) -> None:
        """One INSERT ... ON CONFLICT (ON DUPLICATE KEY) UPDATE on the stats
        table's key (minute, queue): add (minute, queue, succeeded, failed)
        counts; the row of a minute that another process already wrote is
        added to, not replaced (``Dialect.adding_upsert``)."""
        st = self.core.stats
        values = [
            {"minute": naive_utc(m), "queue": q, "succeeded": ok, "failed": bad}
            for m, q, ok, bad in rows
        ]
        stmt = self.core.dialect.adding_upsert(
            st, values, [st.c.minute, st.c.queue], ["succeeded", "failed"]
        )
        with storage_errors("count runs"), self.core.one_statement() as c:
            c.execute(stmt)

    def run_stats(
        self, since: datetime, *, by_hour: bool = False
    ) -> list[tuple[datetime, int, int]]:
        """SELECT ... GROUP BY minute (or hour) over a range of the stats table's
        key (minute, queue): (start, succeeded, failed) of every minute (or
        hour) from ``since`` with runs, summed over queues, oldest first,
        whatever the job table holds. Hours are summed by the database: a day
        is 24 rows to read, not 1,440."""
        st = self.core.stats
        bucket: Any = st.c.minute
        if by_hour:
            bucket = self.core.dialect.hour(st.c.minute)
        bucket = bucket.label("bucket")
        stmt = (
            sa.select(bucket, sa.func.sum(st.c.succeeded), sa.func.sum(st.c.failed))
            .where(st.c.minute >= naive_utc(since))
            .group_by(bucket)
            .order_by(bucket)
        )
        with storage_errors("read run counts"), self.core.engine.connect() as c:
            rows = c.execute(stmt).all()
        # An hour MySQL or SQLite formatted comes back as text.
        starts = [datetime.fromisoformat(s) if isinstance(s, str) else s for s, _, _ in rows]
        return [
            (cast(datetime, aware_utc(start)), int(ok), int(bad))
            for start, (_, ok, bad) in zip(starts, rows, strict=True)
        ]

    def prune_stats(self, before: datetime) -> int:
        """DELETE a range of the stats table's key (minute < ``before``)."""
        st = self.core.stats
        with storage_errors("prune run counts"), self.core.one_statement() as c:
            return c.execute(sa.delete(st).where(st.c.minute < naive_utc(before))).rowcount
