"""The claim: limited queues first (one claimer at a time), then the free ones
(by the variant of the store's database)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa

from ...job import Job
from ..core import StoreCore
from ..errors import driver_words, is_dbapi_error, is_outage, storage_errors
from ..predicates import ClaimRequest, claim_values, is_due, unrestricted
from ..ratelog import RateLog
from .limited import LimitedClaim
from .mysql import LockingClaim
from .returning import ReturningClaim

log = logging.getLogger("flask_queue")


def _run_order(row: Any) -> tuple[int, datetime]:
    return (-row.priority, row.run_at)


class Claimed(NamedTuple):
    """A claimed run: all an executor needs to deliver it."""

    id: str
    attempt: int
    queue: str


class FreeClaim(Protocol):
    """The free queues' claim: what differs per database (``returning.py``,
    ``mysql.py``)."""

    def claim(self, request: ClaimRequest, now: datetime) -> list[Any]: ...


class Claims:
    """Every claim of due jobs: the limited queues' first (``LimitedClaim``),
    then the free queues' (``free``), ranked as one."""

    def __init__(self, core: StoreCore, rates: RateLog) -> None:
        self.core = core
        self.limited = LimitedClaim(core, rates)
        #: Called before the first claim: the extension stores the declared limits.
        self.before_claim: Callable[[], None] | None = None
        #: Until when the limited claim's errors are not logged again.
        self._limited_error_quiet = 0.0

    @cached_property
    def free(self) -> FreeClaim:
        """The free queues' claim of this store's database, chosen at the first
        claim (``Dialect.claims_in_one_statement``; the engine is read lazily)."""
        if self.core.dialect.claims_in_one_statement:
            return ReturningClaim(self.core)
        return LockingClaim(self.core)

    def claim(
        self, limit: int, lease: timedelta, *, ids: Sequence[str] | None = None
    ) -> list[Claimed]:
        """``_claim``: UPDATE ... RETURNING (PostgreSQL, SQLite) or lock, UPDATE
        and SELECT by primary key (MySQL), walking (status, priority DESC,
        run_at) and (status, lease_until): atomically take up to ``limit`` due
        jobs; each is claimed by one caller.

        Due means SCHEDULED with ``run_at`` reached, or RUNNING with an expired
        lease (its runner died). A claimed job is RUNNING with ``attempt`` + 1 and a
        new lease; ``started_at`` is cleared until a runner actually starts it
        (the invoke endpoint, whose requests can be replayed: one start wins).
        Only (id, attempt, queue) come back, highest priority first: the runner
        reads the full row when it starts the run, so the claim never ships
        payloads it does not need. ``ids`` limits the claim to those jobs, if
        they are due: the dispatch of jobs just enqueued as due, as one
        statement for the batch.
        """
        rows = self._claim(ClaimRequest(limit, lease, None if ids is None else list(ids)))
        return [Claimed(r.id, r.attempt, r.queue) for r in rows]

    def claim_started(
        self, limit: int, lease: timedelta, *, ids: Sequence[str] | None = None
    ) -> list[Job[Any]]:
        """``_claim`` returning whole rows: ``claim`` for a runner in this
        process, full jobs come back, ready to run, highest priority first.

        The thread executor and the worker run what they claim themselves; no
        request can be replayed on the way, so no statement per job starts the
        run: the runner reports each start to its ``Finisher``, which marks them
        in batches (``Runs.mark_started``). Until then a run is claimed, not started:
        a process that dies with claimed runs still queued costs them no
        attempt. A row this release cannot read is failed here, with the
        reason (see ``StoreCore.readable``).
        """
        jobs: list[Job[Any]] = []
        request = ClaimRequest(limit, lease, None if ids is None else list(ids), whole=True)
        for row in self._claim(request):
            job = self.core.readable(row)
            if job is not None:
                jobs.append(job)
        return jobs

    def _claim(self, request: ClaimRequest) -> list[Any]:
        """The limited queues' claim (``_claim_limited_apart``) while any queue
        is limited, then the free queues' (``free``) for the rest of ``limit``."""
        if self.before_claim is not None:
            self.before_claim()  # stores the declared limits; unset once it succeeded
        now = self.core.now()
        with storage_errors("claim jobs"):
            claimed: list[Any] = []
            if self.limited.worth_a_look():
                claimed = self._claim_limited_apart(request, now)
            if len(claimed) < request.limit:
                rest = replace(request, limit=request.limit - len(claimed))
                claimed += self.free.claim(rest, now)
        # Executors deliver a claim's runs in this order: priority first.
        return sorted(claimed, key=_run_order)

    def _claim_limited_apart(self, request: ClaimRequest, now: datetime) -> list[Any]:
        """``LimitedClaim.claim``, kept from stopping the free queues' claim.

        The limited queues' claim reads their own rows and start log: if the
        database refuses that (a table an upgrade has not migrated yet, a row
        edited by hand), the free queues are still claimed, and the error is
        logged (once a minute), instead of failing every claim of every queue.
        An outage is raised: it stops the free claim too.
        """
        try:
            return self.limited.claim(request, now)
        except Exception as exc:
            if is_outage(exc) or not (
                isinstance(exc, sa.exc.SQLAlchemyError) or is_dbapi_error(exc)
            ):
                raise
            if time.monotonic() >= self._limited_error_quiet:
                self._limited_error_quiet = time.monotonic() + 60.0
                log.error(
                    "flask_queue: could not claim the limited queues' jobs (%s: %s); claiming"
                    " the other queues anyway. Has the upgrade's migration run?",
                    *driver_words(exc),
                )
            return []

    def claim_one(self, job_id: str, lease: timedelta) -> Claimed | None:
        """UPDATE by primary key guarded by "due" (... RETURNING, or a SELECT by
        primary key after it; a limited queue's job through the limited claim):
        claim one just-enqueued job by id, if it is still due (a producer may
        have claimed or even run it first: then this returns None and changes
        nothing)."""
        t = self.core.table
        if self.before_claim is not None:
            self.before_claim()
        now = self.core.now()
        if self.limited.held:
            # A limited queue's job is claimed under its limits, or not now.
            with storage_errors("claim a job"):
                limited = self._claim_limited_apart(ClaimRequest(1, lease, [job_id]), now)
            if limited:
                return Claimed(limited[0].id, limited[0].attempt, limited[0].queue)
        stmt = (
            sa.update(t)
            .where(t.c.id == job_id, is_due(t, now), unrestricted(t, self.core.queues))
            .ordered_values(*claim_values(t, now, now + lease))
        )
        claimed_cols = [t.c.id, t.c.attempt, t.c.queue]
        with storage_errors("claim a job"):
            if self.core.dialect.returning:
                with self.core.one_statement() as c:
                    row = c.execute(stmt.returning(*claimed_cols)).first()
                return Claimed(*row) if row is not None else None
            with self.core.engine.begin() as c:
                if c.execute(stmt).rowcount != 1:
                    return None
                return Claimed(*c.execute(sa.select(*claimed_cols).where(t.c.id == job_id)).one())
