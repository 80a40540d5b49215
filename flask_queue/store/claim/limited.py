"""The claim of paused and limited queues: one claimer at a time, under the
queue rows' locks."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..core import LIVE, RUNNING, SCHEDULED, StoreCore
from ..errors import retry_on_deadlock
from ..predicates import (
    ClaimRequest,
    Moved,
    Offer,
    Phase,
    claim_columns,
    due_phases,
    is_limited,
    key_among,
    offer_order,
    phases_for,
    restricted_names,
    take_claimable,
)
from ..ratelog import LIMITS_RECHECK, RateLog

#: Pages one range's read may take per limited queue and claim: each one but
#: the last yields at least one job, so this bounds the claim's cost when many
#: keys are full, not what it finds when few are.
MAX_PAGES = 16
#: The rows one page reads at most.
MAX_PAGE_ROWS = 10_000
#: Claims run again, at most, when a row moved to another queue or key
#: between the read and the take (``take_claimable``); then this claim takes
#: nothing and the next one reads again.
MOVED_RETRIES = 3
#: The free queues' offers are looked for among this many times a claim's
#: limit of the first due rows (``_free_offers``).
FREE_WINDOW = 4


class KeyRooms:
    """One limited queue's room per key at a claim: how many more runs each key
    (None: the jobs without one, a group of their own) may be given now, from
    its runs and window starts as read with its first candidate (``learn``),
    and the keys with none left (``full``, grown as the claim gives jobs out)."""

    def __init__(self, row: Any, limit: int) -> None:
        self.name: str = row.name
        self.fair = bool(row.fair)
        self.limit = limit
        self.concurrency: int | None = row.concurrency
        self.rate: int | None = row.rate_limit
        self.running: dict[Any, int] = {}
        self.in_window: dict[Any, int] = {}
        self.full: set[Any] = set()
        #: Whether any of the queue's live jobs has a key (None: not known yet).
        self.keyed: bool | None = None

    def learn(self, key: Any, running: int, started: int) -> None:
        """What a candidate's row said of its key, the first time it is met."""
        if key in self.running:
            return
        self.running[key] = running
        self.in_window[key] = started
        if self.room(key) <= 0:
            self.full.add(key)

    def room(self, key: Any) -> int:
        """How many runs of ``key`` this claim may give out at most."""
        room = self.limit
        if self.concurrency is not None:
            room = min(room, self.concurrency - self.running.get(key, 0))
        if self.rate is not None:
            room = min(room, self.rate - self.in_window.get(key, 0))
        return room


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
        limited = sa.and_(sa.not_(q.c.paused), is_limited(q))
        engine = self.core.engine
        if self.core.dialect.claim_isolation is not None:
            engine = engine.execution_options(isolation_level=self.core.dialect.claim_isolation)

        returning = self.core.dialect.claims_in_one_statement

        def once() -> list[Any]:
            nonlocal now
            with engine.begin() as c:
                lock = sa.update(q).where(limited).values(updated_at=now)
                if returning:  # the rows locked and read in one round trip
                    rows = sorted(c.execute(lock.returning(*q.c)), key=lambda r: r.name)
                else:
                    c.execute(lock)
                    rows = list(c.execute(sa.select(q).where(limited).order_by(q.c.name)))
                # The time is read under the lock, not before waiting for it.
                now = self.core.now()
                return self._claim_locked(c, rows, request, now)

        for _ in range(MOVED_RETRIES):
            try:
                return retry_on_deadlock(once)
            except Moved:
                continue  # rolled back: read again what the override changed
        return []

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
        read: dict[str, tuple[str, Any]] = {}  # each offer's queue and key
        for rooms in self._rooms(c, rows, rated, limit, now):
            offers += self._offers(c, rooms, limit, now, request.ids, read)
        if not offers:
            return []
        if request.ids is None:
            offers += self._free_offers(c, now, limit)
        chosen = [o.id for o in sorted(offers, key=offer_order)[:limit] if o.id]
        if not chosen:
            return []
        t = self.core.table
        columns = claim_columns(t, request.whole)
        got = take_claimable(
            c,
            t,
            {i: read[i] for i in chosen},
            now,
            now + request.lease,
            columns,
            dialect=self.core.dialect,
        )
        self.rates.log_claims(c, got, {r.name for r in rated})
        return got

    def _rooms(
        self, c: Connection, rows: Sequence[Any], rated: list[Any], limit: int, now: datetime
    ) -> list[KeyRooms]:
        """``RateLog.prune``, then a ``KeyRooms`` per limited queue (of ``rows``):
        each key's runs and starts are read with its candidates, so a claim
        reads the keys it meets, not every key that runs."""
        if rated:
            self.rates.prune(c, rated, now)
        return [KeyRooms(row, limit) for row in rows]

    def _learn(self, c: Connection, rooms: KeyRooms, keys: set[Any], now: datetime) -> None:
        """One UNION ALL (the runs going on, on (queue, status, key); SCHEDULED
        rows whose replaced run still goes on, on (status, lease_until)) and,
        for a rate, ``RateLog.used``: what ``keys`` of ``rooms``' queue use of
        their limits, read the first time a page meets them."""
        t = self.core.table
        fresh = [k for k in keys if k not in rooms.running]
        if not fresh:
            return
        same = key_among(t.c.key, fresh)
        running = sa.select(t.c.key).where(
            t.c.queue == rooms.name, t.c.status == RUNNING, same, t.c.lease_until > now
        )
        # Without the keys: a key list lets the planner walk each key's
        # SCHEDULED backlog on (queue, status, key) instead of the few leases.
        replaced = sa.select(t.c.key).where(
            t.c.status == SCHEDULED, t.c.lease_until > now, t.c.queue == rooms.name
        )
        wanted = set(fresh)
        busy = Counter(k for (k,) in c.execute(sa.union_all(running, replaced)) if k in wanted)
        started = self.rates.used(c, rooms.name, fresh) if rooms.rate is not None else {}
        for key in fresh:
            rooms.learn(key, busy.get(key, 0), started.get(key, 0))

    def _offers(
        self,
        c: Connection,
        rooms: KeyRooms,
        need: int,
        now: datetime,
        ids: list[str] | None,
        read: dict[str, tuple[str, Any]],
    ) -> list[Offer]:
        """``_phase_offers`` per range, in its index order (``predicates.due_phases``)
        within the queue: up to ``need`` of one limited queue's best due jobs
        that its keys have room for, read under the queue rows' locks."""
        t = self.core.table
        taken: dict[Any, int] = {}
        found: list[Offer] = []
        for phase in phases_for(t, now, ids):
            found += self._phase_offers(c, phase, rooms, need, taken, now, read)
        return sorted(found, key=offer_order)[:need]  # the need holds for both ranges

    def _phase_offers(
        self,
        c: Connection,
        phase: Phase,
        rooms: KeyRooms,
        need: int,
        taken: dict[Any, int],
        now: datetime,
        read: dict[str, tuple[str, Any]],
    ) -> list[Offer]:
        """SELECT in pages, without locks (the queue rows' locks keep every
        other claimer of this queue out, and ``take_claimable`` re-checks each
        row): one range's jobs that the queue's keys have room for, accepted
        per key here. (FOR UPDATE locked every row a page read, turned down or
        not: a write per row, most of a page's cost.)

        Each page passes over, in SQL, the keys the pages before it met with
        no room left (and, for a ``fair`` queue, those given a job in this
        round): only keys met, not every full key, since a ``NOT IN`` list is
        compared with each row read (2,000 full keys cost 5 ms a page on
        PostgreSQL). A page either gives out a job or meets new full keys, and
        asks only for what is still needed, so a key with a long backlog costs
        the pages that pass it once, not a read of its backlog per job. A fair
        queue takes one job per key per round, then starts another round while
        the room lasts: one key's backlog gets one turn, like every other key
        with a job due."""
        t = self.core.table
        found: list[Offer] = []
        # The jobs this claim gave out so far, with their keys: a later page
        # would read them again.
        mine: list[tuple[str, Any]] = []
        met: set[Any] = set()  # full keys the pages met
        turn: set[Any] = set()  # keys given a job in this round (fair)
        # Fair: rows a round passed over because their key had its turn,
        # in claim order; later rounds take from them before reading more.
        later: list[Any] = []
        # Round-robin needs keys: a fair queue of keyless jobs is one group.
        fair = rooms.fair and self._keyed(c, rooms)

        def give(priority: Any, since: Any, job_id: str, key: Any) -> bool:
            """Accept one row if its key has room (and its turn); whether it did."""
            if key in rooms.full:
                met.add(key)
                return False
            if key in turn:
                return False
            found.append(Offer(priority, since, job_id, True))
            mine.append((job_id, key))
            read[job_id] = (rooms.name, key)
            taken[key] = taken.get(key, 0) + 1
            if taken[key] >= rooms.room(key):
                rooms.full.add(key)
                met.add(key)
            if fair:
                turn.add(key)
            return True

        def next_rounds() -> None:
            """Fair: rounds over the rows passed over, one per key each."""
            nonlocal later, turn
            while later and len(found) < need:
                turn = set()
                left = [r for r in later if len(found) >= need or not give(*r)]
                if len(left) == len(later):
                    break  # every key left is full
                later = left
            turn = set()

        for page_no in range(MAX_PAGES):
            ask = need - len(found)
            if ask <= 0:
                break
            shut = met | turn
            if None in met and not self._keyed(c, rooms):
                break  # the keyless group is full, and no job has a key
            where = [phase.where, t.c.queue == rooms.name]
            passed = [k for k in shut if k is not None]
            if None in shut:
                where.append(t.c.key.is_not(None))
            if passed:
                where.append(sa.or_(t.c.key.is_(None), t.c.key.not_in(passed)))
            again = [job_id for job_id, key in mine if key not in shut]
            again += [r[2] for r in later if r[3] not in shut]
            if again:
                where.append(t.c.id.not_in(again))
            # Pages double: a plain read of more rows is cheaper than another
            # round trip, and MAX_PAGES pages pass any number of full keys a
            # claim can meet (2 x 2^16 x what is needed).
            size = ask * 2 ** (page_no + 1) if rooms.keyed is not False else ask
            size = min(size, MAX_PAGE_ROWS)
            page = c.execute(
                sa.select(t.c.priority, phase.since, t.c.id, t.c.key)
                .where(*where)
                .order_by(*phase.order)
                .limit(size)
            ).all()
            self._learn(c, rooms, {row.key for row in page}, now)
            if any(row.key is not None for row in page):
                rooms.keyed = True
            for row in page:
                if len(found) >= need:
                    break
                if not give(*row) and fair and row.key in turn:
                    later.append(tuple(row))
            if len(page) < size:
                # What the range held for the keys still open is read. A fair
                # queue goes on in rounds over what it passed over, then reads
                # on (the keys that had their turn were left out of the pages).
                if not fair:
                    break
                had = len(found)
                next_rounds()
                if later or len(found) >= need or (len(found) == had and not turn):
                    break
        return found

    def _keyed(self, c: Connection, rooms: KeyRooms) -> bool:
        """SELECT ... LIMIT 1 on (queue, status, key), once per claim: whether
        any live job of the queue has a key. Without one, a page past the full
        keyless group would read the whole backlog to find nothing."""
        if rooms.keyed is None:
            t = self.core.table
            found = c.execute(
                sa.select(t.c.id)
                .where(t.c.queue == rooms.name, t.c.status.in_(LIVE), t.c.key.is_not(None))
                .limit(1)
            ).first()
            rooms.keyed = found is not None
        return rooms.keyed

    def _free_offers(self, c: Connection, now: datetime, limit: int) -> list[Offer]:
        """SELECT per range in its index order (``predicates.due_phases``),
        without locks (the free claim that follows takes them): the free
        queues' best due jobs among the first ``FREE_WINDOW`` x ``limit`` of
        the range, what a limited queue's jobs rank against.

        Only that window is read: when the due range is mostly the limited
        queues' own (a backlog held back by its keys' limits), filtering the
        whole range for free queues read all of it, 100,000 rows and 18 ms a
        claim on PostgreSQL. A free job behind the window ranks behind that
        many older or higher jobs anyway; it is taken by the free claim with
        whatever room the limited claim leaves."""
        t = self.core.table
        parts = []
        for i, phase in enumerate(due_phases(t, now)):
            window = (
                sa.select(t.c.priority, phase.since.label("since"), t.c.queue)
                .where(phase.where)
                .order_by(*phase.order)
                .limit(limit * FREE_WINDOW)
                .subquery(f"window_{i}")
            )
            best = (
                sa.select(window.c.priority, window.c.since)
                .where(window.c.queue.not_in(restricted_names(self.core.queues)))
                .order_by(window.c.priority.desc(), window.c.since)
                .limit(limit)
                .subquery(f"best_{i}")
            )
            parts.append(sa.select(best.c.priority, best.c.since))
        # Both ranges in one round trip.
        return [Offer(p, since, "", False) for p, since in c.execute(sa.union_all(*parts))]
