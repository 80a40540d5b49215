"""The conditions and clauses more than one statement shares: the one "due",
expired, unrestricted, unstarted, the finish guard, a batch of runs; the
ranges a claim takes from and how it ranks what it finds; the claim's SET
clause; ``take``.

Each takes the table (and values, or ``bindparam``s for a prebuilt statement)
and builds an expression: no statement runs here but ``take``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .core import CANCELLED, RUNNING, SCHEDULED
from .dialects import Dialect

LEASE_EXPIRED = (
    "The run did not finish within its lease (QUEUE_LEASE): its process died or"
    " was stopped, or the handler ran longer than the lease."
)
LEASE_EXPIRED_LINE = "LeaseExpired: the run's process died or outlived its lease"
#: Characters of ``reason`` a list reads: the end, where a traceback names its exception.
REASON_TAIL = 1000


def is_due(t: sa.Table, now: Any) -> sa.ColumnElement[bool]:
    """A SCHEDULED job whose time has come: the one definition of "due".

    Every claim path uses it (the producer's batch and the dispatch by id),
    so a late dispatch can never take a retry before its backoff or a
    repeating job's next occurrence before its time.
    """
    # A lease on a SCHEDULED row: replaced (override) while it ran, and
    # that run has not ended yet (see Inserts.replace_live).
    free = sa.or_(t.c.lease_until.is_(None), t.c.lease_until <= now)
    return sa.and_(t.c.status == SCHEDULED, t.c.run_at <= now, free)


def is_expired(t: sa.Table, now: Any) -> sa.ColumnElement[bool]:
    """A RUNNING job whose lease ran out: its runner is presumed dead."""
    return sa.and_(t.c.status == RUNNING, t.c.lease_until <= now)


def unrestricted(t: sa.Table, q: sa.Table) -> sa.ColumnElement[bool]:
    """A job of a queue that is neither paused nor limited: any claim may
    take it. The others are claimed only by the limited claim
    (``claim/limited.py``), one claimer at a time."""
    return t.c.queue.not_in(restricted_names(q))


def key_among(column: Any, keys: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``column`` (a job's or a start's key) is one of ``keys``, where None
    stands for the keyless group (``IS NULL``: an IN list never matches it).

    An IN list, not ``Dialect.among``'s array: with arrays of keys the rated
    per-key claim measured 28 ms against 20 ms (``bench.keys``, 200,000 jobs;
    a prepared statement's generic plan, we think: psycopg prepares a text
    it has run five times, and an array's text never changes)."""
    named = [k for k in keys if k is not None]
    which = [column.in_(named)] if named else []
    if len(named) < len(keys):
        which.append(column.is_(None))
    return sa.or_(*which)


def restricted_names(q: sa.Table) -> Any:
    """The names of the paused and limited queues, as a subquery."""
    return sa.select(q.c.name).where(sa.or_(q.c.paused, is_limited(q))).scalar_subquery()


def is_limited(q: sa.Table) -> sa.ColumnElement[bool]:
    """A queue row with a limit or ``fair`` (stored as NULL when false): its
    jobs are claimed only by the limited claim."""
    return sa.or_(q.c.concurrency.is_not(None), q.c.rate_limit.is_not(None), q.c.fair.is_not(None))


def unstarted_run(t: sa.Table, job_id: Any, attempt: Any) -> sa.ColumnElement[bool]:
    """The claimed run ``attempt`` of ``job_id``, not yet started by anyone
    (values, or ``bindparam``s for a prebuilt statement)."""
    return sa.and_(
        t.c.id == job_id,
        t.c.attempt == attempt,
        t.c.status == RUNNING,
        t.c.started_at.is_(None),
    )


def finish_guard(t: sa.Table, unstarted_only: bool) -> sa.ColumnElement[bool]:
    """``finish``'s guard, on the bound ``b_id`` and ``b_attempt``: the run
    still owns the row (and, with ``unstarted_only``, nobody started it)."""
    job_id: Any = sa.bindparam("b_id")
    attempt: Any = sa.bindparam("b_attempt")
    if unstarted_only:
        return unstarted_run(t, job_id, attempt)
    return sa.and_(t.c.id == job_id, t.c.attempt == attempt, t.c.status == RUNNING)


def released_id(t: sa.Table, now: Any) -> Any:
    """The ``live_custom_id`` of a row that ends now: released, unless its
    ``unique_for`` window is still open. Kept, the unique key goes on answering
    enqueues of that id with this job, finished, until the window closes (an
    arbiter that outlives the run: a read of the window before the INSERT let a
    job that finished in between make room for a second)."""
    return sa.case((t.c.unique_until > now, t.c.live_custom_id), else_=sa.null())


def settled(t: sa.Table, status: Any) -> Any:
    """The status a run's outcome writes: ``status``, or CANCELLED when a cancel
    was asked for after the run's last beat (the run never saw it; the job still
    ends as the cancel said, in the outcome's own statement)."""
    return sa.case((t.c.cancelled_at.is_not(None), CANCELLED), else_=status)


def held_id(t: sa.Table, now: Any) -> Any:
    """A retry's ``live_custom_id``: kept, unless ``settled`` makes it CANCELLED."""
    return sa.case((t.c.cancelled_at.is_not(None), released_id(t, now)), else_=t.c.live_custom_id)


def reason_tail(t: sa.Table, dialect: Dialect) -> Any:
    """The last ``REASON_TAIL`` characters of ``reason`` for a row written
    before the ``error`` column was (NULL there), where a traceback names
    its exception; NULL for every other row, whose ``error`` says it."""
    return sa.case((t.c.error.is_(None), dialect.tail(t.c.reason, REASON_TAIL)), else_=None)


# -- what a claim takes, and in which order ----------------------------------------


@dataclass(frozen=True)
class ClaimRequest:
    """One claim's parameters: up to ``limit`` runs, each leased for
    ``lease``; of ``ids`` only (the dispatch of jobs just enqueued) or of any
    due job; ``whole`` rows (to run here) or just enough to deliver them."""

    limit: int
    lease: timedelta
    ids: list[str] | None = None
    whole: bool = False


class Phase(NamedTuple):
    """One range a claim takes from: what matches, the index order it walks,
    and when each of its rows became claimable (to rank it against the other
    range's rows of the same priority)."""

    where: sa.ColumnElement[bool]
    order: list[Any]
    since: Any


class Offer(NamedTuple):
    """A claimable row as a claim ranks it; ``id`` is empty for a free queue's
    row that a limited claim only compares with."""

    priority: int
    since: datetime
    id: str
    limited: bool


def offer_order(offer: Offer) -> tuple[int, datetime, bool]:
    # Highest priority, then the longest claimable; a tie goes to a limited
    # queue, which a steady free backlog must not starve.
    return (-offer.priority, offer.since, not offer.limited)


def due_phases(t: sa.Table, now: Any) -> list[Phase]:
    """What is due, in two ranges: SCHEDULED with ``run_at`` reached, walked
    on (status, priority DESC, run_at) up to the LIMIT, so a due backlog of
    any size costs the same (what it walks past are future jobs of higher
    priorities than the ones it takes); and RUNNING with an expired lease,
    on (status, lease_until) (a range that holds only the dead runs).

    A claim takes the best of both by priority, then by when each row
    became claimable (``since``: its ``run_at``, or its lease's end), so a
    dead run is not starved by a backlog of fresh jobs. (One ``OR`` of
    both ranges would make every database read both; InnoDB would also
    lock every row it read.)"""
    return [
        Phase(is_due(t, now), [t.c.priority.desc(), t.c.run_at], t.c.run_at),
        Phase(is_expired(t, now), [t.c.priority.desc(), t.c.lease_until], t.c.lease_until),
    ]


def phases_for(t: sa.Table, now: Any, ids: Any | None) -> list[Phase]:
    """``due_phases``, or only its due range restricted to ``ids`` (values
    or an expanding ``bindparam``): the dispatch of jobs just enqueued."""
    found = due_phases(t, now)
    if ids is None:
        return found
    first = found[0]
    return [first._replace(where=sa.and_(first.where, t.c.id.in_(ids)))]


def claim_columns(t: sa.Table, whole: bool) -> list[Any]:
    """What a claim returns: whole rows to run here, or just enough to
    deliver (and to put one claim's runs in priority order)."""
    if whole:
        return list(t.c)
    return [t.c.id, t.c.attempt, t.c.queue, t.c.priority, t.c.run_at, t.c.key]


def claim_values(t: sa.Table, now: Any, lease_until: Any) -> list[tuple[Any, Any]]:
    """The SET clause of a claim, in order.

    A RUNNING row whose run had *started* and whose lease expired lost its
    runner mid-run: that counts as a failed attempt (``errors`` + 1, with a
    reason saying so), so a handler that kills its process every time is
    retried by its policy and then FAILED, not re-run forever. A run that
    never started (a lost dispatch) costs nothing. These two come first:
    MySQL evaluates SET assignments left to right, on the updated values.
    """
    died = sa.and_(t.c.status == RUNNING, t.c.started_at.is_not(None))
    return [
        (t.c.errors, sa.case((died, t.c.errors + 1), else_=t.c.errors)),
        (t.c.reason, sa.case((died, sa.literal(LEASE_EXPIRED)), else_=t.c.reason)),
        (t.c.error, sa.case((died, sa.literal(LEASE_EXPIRED_LINE)), else_=t.c.error)),
        (t.c.status, RUNNING),
        (t.c.attempt, t.c.attempt + 1),
        (t.c.lease_until, lease_until),
        (t.c.started_at, None),  # set when a runner begins it (start, mark_started)
        (t.c.updated_at, now),
    ]


def take(
    c: Connection,
    t: sa.Table,
    ids: list[str],
    values: list[tuple[Any, Any]],
    columns: list[Any],
) -> list[Any]:
    """UPDATE by primary key, then SELECT by primary key: claim the rows
    ``ids`` (already locked in ``c``'s transaction) and read them back, for
    MySQL, which has no UPDATE ... RETURNING."""
    c.execute(sa.update(t).where(t.c.id.in_(ids)).ordered_values(*values))
    return list(c.execute(sa.select(*columns).where(t.c.id.in_(ids))))


class Moved(Exception):
    """A row a limited claim took had another queue or key than it was read
    with: the claim's transaction is rolled back and the claim runs again."""


def take_claimable(
    c: Connection,
    t: sa.Table,
    read: dict[str, tuple[str, Any]],
    now: datetime,
    lease_until: datetime,
    columns: list[Any],
    *,
    dialect: Dialect,
) -> list[Any]:
    """UPDATE by primary key, guarded by "due or expired" at ``now``: claim
    the rows of ``read`` (id: the queue and key they were read with), read
    without locks, of which an operator may have deleted, cancelled or
    rescheduled some meanwhile (those are left as they are), or an override
    given another queue or key, whose room was not counted.

    With RETURNING (PostgreSQL, SQLite) the rows come back with their queue
    and key as updated, and one that moved raises ``Moved``: the caller rolls
    the claim back (an override racing a claim is rare; one more round trip
    per claim to lock and compare first cost 10% of a claim). Without it
    (MySQL), the rows are locked by primary key and compared first, then
    updated and read back. (A row-constructor IN in the UPDATE cost 20% of a
    claim on PostgreSQL and doubled it on MariaDB.)"""
    claimable = sa.or_(is_due(t, now), is_expired(t, now))
    values = claim_values(t, now, lease_until)
    if dialect.claims_in_one_statement:
        # ``claim_columns`` hold the queue and the key.
        claim = sa.update(t).where(dialect.among(t.c.id, list(read)), claimable)
        got = list(c.execute(claim.ordered_values(*values).returning(*columns)))
        if any(read[r.id] != (r.queue, r.key) for r in got):
            raise Moved()
        return got
    locked = c.execute(
        sa.select(t.c.id, t.c.queue, t.c.key).where(t.c.id.in_(list(read))).with_for_update()
    )
    ids = [i for i, queue, key in locked if read.get(i) == (queue, key)]
    if not ids:
        return []
    c.execute(sa.update(t).where(t.c.id.in_(ids), claimable).ordered_values(*values))
    mine = sa.and_(t.c.status == RUNNING, t.c.lease_until == lease_until, t.c.updated_at == now)
    return list(c.execute(sa.select(*columns).where(t.c.id.in_(ids), mine)))
