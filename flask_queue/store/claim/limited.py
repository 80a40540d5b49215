"""The claim of paused and limited queues: one claimer at a time, under the
queue rows' locks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..core import LIVE, StoreCore
from ..errors import retry_on_deadlock
from ..predicates import (
    ClaimRequest,
    Offer,
    claim_columns,
    claim_values,
    due_phases,
    offer_order,
    phases_for,
    take,
    unrestricted,
)
from ..ratelog import LIMITS_RECHECK, RateLog


class LimitedClaim:
    """The claim of the queues with a concurrency or rate limit, and whether
    the queue table held any at the last look."""

    def __init__(self, core: StoreCore, rates: RateLog) -> None:
        self.core = core
        self.rates = rates
        #: Whether the queue table held limited queues at the last look, and when
        #: to look again if not (``worth_a_look``).
        self.held = True
        self.recheck = 0.0

    def worth_a_look(self) -> bool:
        """Whether a claim runs this one first: limited queues were there at
        the last look, or that look is ``LIMITS_RECHECK`` old."""
        return self.held or time.monotonic() >= self.recheck

    def look_again(self) -> None:
        """Stored limits changed: the next claim looks at the queue table."""
        self.recheck = 0.0

    def claim(self, request: ClaimRequest, now: datetime) -> list[Any]:
        """UPDATE of the limited queues' rows (their row locks, or SQLite's
        write lock), then ``_claim_locked`` in the same transaction: claim from
        the queues with a concurrency or rate limit, one claimer at a time. The
        RUNNING counts and start logs it reads stay true until it commits,
        whatever the number of processes and hosts.

        Each queue offers its best due jobs up to its room; they are ranked
        with the free queues' best (read, not locked) by priority, then age,
        and only those within the claim's ``limit`` are taken: a limited queue
        neither jumps the priority order nor is starved by a free backlog (a
        tie goes to the limited queue)."""
        q = self.core.queues
        limited = sa.and_(
            sa.not_(q.c.paused),
            sa.or_(q.c.concurrency.is_not(None), q.c.rate_limit.is_not(None)),
        )
        engine = self.core.engine
        if self.core.dialect.claim_isolation is not None:
            engine = engine.execution_options(isolation_level=self.core.dialect.claim_isolation)

        def once() -> list[Any]:
            nonlocal now
            with engine.begin() as c:
                c.execute(sa.update(q).where(limited).values(updated_at=now))
                rows = c.execute(sa.select(q).where(limited).order_by(q.c.name)).all()
                # The time is read under the lock, not before waiting for it.
                now = self.core.now()
                return self._claim_locked(c, rows, request, now)

        return retry_on_deadlock(once)

    def _claim_locked(
        self, c: Connection, rows: Sequence[Any], request: ClaimRequest, now: datetime
    ) -> list[Any]:
        """``_rooms``, ``_offers`` per queue with room, ``_free_offers``, then
        ``take`` (UPDATE and SELECT by primary key) and the rate log's entries:
        the limited claim under the queue rows' locks."""
        self.held = bool(rows)
        rated = [r for r in rows if r.rate_limit is not None]
        self.rates.note_rated(r.name for r in rated)
        if not rows:
            # Look again in a while: a limit declared meanwhile is
            # safe (free claims never take a limited queue's jobs),
            # its jobs just wait that long for their first claim.
            self.recheck = time.monotonic() + LIMITS_RECHECK
            return []
        limit = request.limit
        offers: list[Offer] = []
        for name, room in self._rooms(c, rows, rated, limit, now):
            offers += self._offers(c, name, room, now, request.ids)
        if not offers:
            return []
        if request.ids is None:
            offers += self._free_offers(c, now, limit)
        chosen = [o.id for o in sorted(offers, key=offer_order)[:limit] if o.id]
        if not chosen:
            return []
        t = self.core.table
        values = claim_values(t, now, now + request.lease)
        got = take(c, t, chosen, values, claim_columns(t, request.whole))
        self.rates.log_claims(c, got, {r.name for r in rated})
        return got

    def _rooms(
        self, c: Connection, rows: Sequence[Any], rated: list[Any], limit: int, now: datetime
    ) -> list[tuple[str, int]]:
        """SELECT count(*) GROUP BY queue of the leased live runs on (queue,
        status, run_at), and ``RateLog.window``: how many more runs each
        limited queue (of ``rows``) may be given now, for those with room."""
        t = self.core.table
        running: dict[str, int] = dict(
            c.execute(
                sa.select(t.c.queue, sa.func.count())
                .where(
                    t.c.queue.in_([r.name for r in rows]),
                    # SCHEDULED with a lease: replaced while running,
                    # and that run still goes on (Inserts._replace_live).
                    t.c.status.in_(LIVE),
                    t.c.lease_until > now,
                )
                .group_by(t.c.queue)
            ).all()
        )
        in_window = self.rates.window(c, rated, now) if rated else {}
        rooms = []
        for row in rows:
            room = limit
            if row.concurrency is not None:
                room = min(room, row.concurrency - running.get(row.name, 0))
            if row.rate_limit is not None:
                room = min(room, row.rate_limit - in_window.get(row.name, 0))
            if room > 0:
                rooms.append((row.name, room))
        return rooms

    def _offers(
        self, c: Connection, name: str, room: int, now: datetime, ids: list[str] | None
    ) -> list[Offer]:
        """SELECT ... FOR UPDATE SKIP LOCKED per range, in its index order
        (``predicates.due_phases``) within the queue: up to ``room`` of one
        limited queue's best due jobs, locked inside the limited claim's
        transaction (rows another claimer holds are passed over). Those not
        chosen are let go at its commit."""
        t = self.core.table
        found: list[Offer] = []
        for phase in phases_for(t, now, ids):
            candidates = (
                sa.select(t.c.priority, phase.since, t.c.id)
                .where(phase.where, t.c.queue == name)
                .order_by(*phase.order)
                .limit(room)
                .with_for_update(skip_locked=True)
            )
            found += [Offer(p, since, i, True) for p, since, i in c.execute(candidates)]
        return sorted(found, key=offer_order)[:room]  # the room holds for both ranges

    def _free_offers(self, c: Connection, now: datetime, limit: int) -> list[Offer]:
        """SELECT per range in its index order (``predicates.due_phases``),
        without locks (the free claim that follows takes them): the free
        queues' best due jobs, what a limited queue's jobs rank against."""
        t = self.core.table
        found: list[Offer] = []
        for phase in due_phases(t, now):
            best = (
                sa.select(t.c.priority, phase.since)
                .where(phase.where, unrestricted(t, self.core.queues))
                .order_by(*phase.order)
                .limit(limit)
            )
            found += [Offer(p, since, "", False) for p, since in c.execute(best)]
        return found
