"""The free claim of PostgreSQL and SQLite: one prebuilt UPDATE ... RETURNING
over SKIP LOCKED CTEs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..core import StoreCore
from ..predicates import ClaimRequest, claim_columns, claim_values, phases_for, unrestricted


class ReturningClaim:
    """The free queues' claim in one statement, prebuilt once per kind."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def claim(self, request: ClaimRequest, now: datetime) -> list[Any]:
        """``_claim_statement``, one UPDATE ... RETURNING (in autocommit on
        PostgreSQL) walking (status, priority DESC, run_at) and (status,
        lease_until): claim from the queues that are neither paused nor limited."""
        stmt = self._claim_statement(whole=request.whole, by_id=request.ids is not None)
        params: dict[str, Any] = {
            "now": now,
            "lease_until": now + request.lease,
            "limit": request.limit,
        }
        if request.ids is not None:
            params["ids"] = request.ids
        with self.core.one_statement() as c:
            return list(c.execute(stmt, params))

    def _claim_statement(self, *, whole: bool, by_id: bool) -> Any:
        """``_build_claim``'s statement, built once per kind and reused
        with new bound values (building it was half the cost of an empty claim).

        SQLite has one writer at a time, so the UPDATE is atomic by itself there
        (and takes no row locks). On PostgreSQL it is one statement, so one round
        trip in autocommit: each range is a CTE
        that walks its index and locks what it takes (SKIP LOCKED: rows another
        claimer holds are passed over, not waited for); a CTE that locks rows
        is never inlined, which also fences its LIMIT (inlined, the planner
        may re-evaluate the subquery per row and update more rows). The best
        of both ranges are taken (``predicates.due_phases``); rows locked beyond the
        limit are let go when the statement ends.
        """
        return self.core.prebuilt(("claim", whole, by_id), lambda: self._build_claim(whole, by_id))

    def _build_claim(self, whole: bool, by_id: bool) -> Any:
        """UPDATE ... WHERE id IN (the best of one LIMITed SKIP LOCKED CTE per
        range) ... RETURNING, its values bound at execution: the claim of
        PostgreSQL and SQLite."""
        t = self.core.table
        now = sa.bindparam("now", type_=t.c.run_at.type)
        limit = sa.bindparam("limit", type_=sa.Integer)
        phases = phases_for(t, now, sa.bindparam("ids", expanding=True) if by_id else None)
        ctes = [
            sa.select(t.c.id, t.c.priority, phase.since.label("since"))
            .where(phase.where, unrestricted(t, self.core.queues))
            .order_by(*phase.order)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte(f"claimable_{i}")
            for i, phase in enumerate(phases)
        ]
        if len(ctes) > 1:
            union = sa.union_all(
                *(sa.select(cte.c.id, cte.c.priority, cte.c.since) for cte in ctes)
            ).subquery()
            chosen = (
                sa.select(union.c.id).order_by(union.c.priority.desc(), union.c.since).limit(limit)
            )
        else:
            chosen = sa.select(ctes[0].c.id)
        lease_until = sa.bindparam("lease_until", type_=t.c.lease_until.type)
        return (
            sa.update(t)
            .where(t.c.id.in_(chosen.scalar_subquery()))
            .ordered_values(*claim_values(t, now, lease_until))
            .returning(*claim_columns(t, whole))
        )
