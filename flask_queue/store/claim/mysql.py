"""The free claim of MySQL and MariaDB (InnoDB): pick unlocked, lock by primary
key, UPDATE, read back."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..core import StoreCore
from ..errors import retry_on_deadlock
from ..predicates import (
    ClaimRequest,
    Offer,
    Phase,
    claim_columns,
    claim_values,
    offer_order,
    phases_for,
    take,
    unrestricted,
)

#: Rounds of candidates a MySQL claim tries when other claimers locked the first ones.
CANDIDATE_ROUNDS = 5


class LockingClaim:
    """The free queues' claim without UPDATE ... RETURNING."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def claim(self, request: ClaimRequest, now: datetime) -> list[Any]:
        """``_lock_candidates`` per range, then ``take`` (UPDATE and SELECT by
        primary key), in one READ COMMITTED transaction: claim from the queues
        that are neither paused nor limited.

        No UPDATE ... RETURNING: lock the ids, update them as one set, read them
        back, all in one transaction; retry the whole of it on an InnoDB deadlock.
        READ COMMITTED: under InnoDB's default REPEATABLE READ a locking read
        also locks the gaps it scans, and every claimer's UPDATE inserts index
        entries into the RUNNING range the others scan: deadlocks by the dozen
        with eight producers. The claim needs only the row locks.
        """
        t = self.core.table
        free = unrestricted(t, self.core.queues)
        phases = [
            phase._replace(where=sa.and_(phase.where, free))
            for phase in phases_for(t, now, request.ids)
        ]
        values = claim_values(t, now, now + request.lease)
        columns = claim_columns(t, request.whole)
        limit = request.limit
        engine = self.core.engine.execution_options(isolation_level="READ COMMITTED")

        def once() -> list[Any]:
            with engine.begin() as c:
                offers = self._lock_candidates(c, phases, limit)
                chosen = [o.id for o in offers[:limit]]
                return take(c, t, chosen, values, columns) if chosen else []

        return retry_on_deadlock(once)

    def _lock_candidates(self, c: Connection, phases: list[Phase], room: int) -> list[Offer]:
        """One SELECT of candidates from every range in its index order, without
        locks (a UNION ALL of each range's best), then SELECT ... FOR UPDATE
        SKIP LOCKED of just the best of them by primary key: lock up to
        ``room`` rows, best first (``offer_order``).

        InnoDB locks every row a locking read looks at, and a read sorted by
        priority looks at the whole due range: so candidates are picked without
        locks, then just those are locked (SKIP LOCKED; the WHERE is checked
        again, so a row taken meanwhile is not). Both ranges in one pick: a
        dead run competes by priority, and the (usually empty) expired range
        costs no round trip of its own. Candidates that other claimers locked
        first are passed over for the next ones, a few rounds at most: a claim
        must not come back empty while due jobs are free.
        """
        t = self.core.table
        either = sa.or_(*(phase.where for phase in phases))
        locked: list[Offer] = []
        seen: list[str] = []
        for _ in range(CANDIDATE_ROUNDS):
            need = room - len(locked)
            if need <= 0:
                break
            picks = []
            for phase in phases:
                pick = sa.select(t.c.priority, phase.since.label("since"), t.c.id).where(
                    phase.where
                )
                if seen:
                    pick = pick.where(t.c.id.not_in(seen))
                picks.append(pick.order_by(*phase.order).limit(2 * need).subquery())
            parts = [sa.select(p.c.priority, p.c.since, p.c.id) for p in picks]
            stmt = parts[0] if len(parts) == 1 else sa.union_all(*parts)
            found = [Offer(p, since, i, True) for p, since, i in c.execute(stmt)]
            picked = sorted(found, key=offer_order)[: 2 * need]
            if not picked:
                break
            seen += [o.id for o in picked]
            # By primary key, unsorted: a locking read through a secondary index
            # (with a filesort) locks every entry it scans, here every scheduled
            # row. This one locks at most the candidates; those beyond ``need``
            # are let go at commit.
            free = set(
                c.execute(
                    sa.select(t.c.id)
                    .with_hint(t, "FORCE INDEX (PRIMARY)", "mysql")
                    .with_hint(t, "FORCE INDEX (PRIMARY)", "mariadb")
                    .where(either, t.c.id.in_([o.id for o in picked]))
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            locked += [o for o in picked if o.id in free][:need]
            if len(found) < 2 * need:
                break  # no more candidates than these
        return sorted(locked, key=offer_order)
