"""Writes from enqueue: plain INSERTs, and the INSERT of a job with a custom id
that the unique ``live_custom_id`` key arbitrates (or ``override`` rewrites)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StorageError
from ..job import Job
from .core import INSERT_CHUNK, LIVE, RUNNING, Row, StoreCore, naive_utc, text_of
from .errors import is_deadlock, storage_errors
from .notify import channel_of

#: Rounds of insert/read (or update/insert) while concurrent enqueues of one custom
#: id keep finishing or replacing the live job between our statements.
UNIQUE_ROUNDS = 20
#: Columns ``_replace_live`` keeps from the row it replaces, or sets itself.
_KEPT_BY_OVERRIDE = frozenset(
    {
        "id",
        "custom_id",
        "live_custom_id",
        "attempt",
        "created_at",
        "lease_until",
        "errors",
        "started_at",
    }
)


class Inserts:
    """The enqueue path's writes."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core
        self.channel = channel_of(core.table)

    def insert(
        self, rows: Sequence[Row], *, conn: Connection | None = None, notify: bool = False
    ) -> None:
        """INSERT (an executemany per INSERT_CHUNK rows, one round trip each),
        in one transaction: the caller's ``conn``, or our own.

        ``notify`` (one row, no ``conn``) also wakes idle workers (see
        ``Notifier.notify``): on PostgreSQL in the same statement (``WITH ins
        AS (INSERT …) SELECT pg_notify(…)``), so the NOTIFY goes out with the
        row's commit; elsewhere workers poll, and it changes nothing.
        """
        if not rows:
            return
        if notify and conn is None and len(rows) == 1 and self.core.dialect.notifies:
            row = self.core.sealed(rows[0])
            t = self.core.table
            ins = sa.insert(t).values(row).returning(t.c.id).cte("ins")
            notifying = sa.select(sa.func.pg_notify(self.channel, "")).where(
                sa.exists(sa.select(ins.c.id))
            )
            with storage_errors("insert jobs"), self.core.one_statement() as c:
                c.execute(notifying)
            return
        if notify and self.core.dialect.notifies:
            raise ValueError("notify=True takes one row on its own connection")
        single = len(rows) <= INSERT_CHUNK
        with storage_errors("insert jobs"), self.core.begin(conn, single=single) as c:
            self.core.insert(c, rows)

    def insert_unique(
        self,
        row: Row,
        *,
        override: bool,
        conn: Connection | None = None,
        debounce: bool = False,
    ) -> tuple[Job[Any], bool]:
        """INSERT arbitrated by the unique live_custom_id (with ``override``,
        ``_replace_live`` first; a ``_read_live`` when the key refused it): insert
        a row with a custom id; return (job, created).

        A live job (SCHEDULED or RUNNING) holding that custom id is kept and
        returned, unless ``override``, which rewrites it in place (same job id;
        a run in progress can no longer finish it: see ``_replace_live``).
        COMPLETED and FAILED jobs released the id when they finished.

        The unique key on ``live_custom_id`` is the arbiter: any number of
        concurrent callers end with exactly one live row, and each either wrote
        it or gets it back.

        ``debounce`` (with ``override``): the rewrite keeps the live job's cap
        (``latest_run_at``) and moves its run to the row's, but not past the
        cap. A job enqueued with ``unique_for`` keeps holding its id when it
        finishes, until its window closes (``predicates.released_id``): the
        unique key then answers every enqueue of the id with that job, and the
        first enqueue after the window releases it (``_release_expired``).
        """
        cid = row["custom_id"]
        for _ in range(UNIQUE_ROUNDS):
            with storage_errors("enqueue a job"):
                if override:
                    replaced = self._replace_live(row, conn, debounce=debounce)
                    if replaced is not None:
                        return replaced, True
                try:
                    with self.core.begin(conn, nested=self.core.dialect.savepoint) as c:
                        c.execute(sa.insert(self.core.table).values(**self.core.sealed(row)))
                    return self.core.to_job(row), True
                except sa.exc.IntegrityError:
                    pass  # a live job holds the id: read (or replace) it next round
                except sa.exc.DBAPIError as exc:
                    # Duplicate-key inserts racing on one InnoDB index entry can
                    # deadlock; our own transaction is safe to run again.
                    if conn is not None or not is_deadlock(exc):
                        raise
                    time.sleep(random.uniform(0.001, 0.01))
                    continue
                existing = self._read_live(cid, conn)
                if existing is not None and existing.status not in LIVE:
                    # A finished job holding its id for its unique_for window.
                    if existing.unique_until is not None and existing.unique_until > naive_utc(
                        self.core.now()
                    ):
                        return self.core.to_job(existing), False
                    self._release_expired(cid, conn)
                elif existing is not None and not override:
                    return self.core.to_job(existing), False
        raise StorageError(
            f"Could not enqueue job with id {text_of(cid)!r}: it kept changing underneath."
        )

    def _release_expired(self, key: Any, conn: Connection | None) -> None:
        """UPDATE on the unique live_custom_id: a finished job whose unique_for
        window has closed gives up the id it kept."""
        t = self.core.table
        stmt = (
            sa.update(t)
            .where(
                t.c.live_custom_id == key,
                t.c.status.not_in(LIVE),
                sa.or_(t.c.unique_until.is_(None), t.c.unique_until <= self.core.now()),
            )
            .values(live_custom_id=None)
        )
        with self.core.begin(conn, single=True) as c:
            c.execute(stmt)

    def _replace_live(
        self, row: Row, conn: Connection | None, *, debounce: bool = False
    ) -> Job[Any] | None:
        """UPDATE on the unique live_custom_id (... RETURNING, or a SELECT on it
        after): rewrite the live job holding ``row``'s custom id in place; None
        if none.

        The attempt number is kept and the status set to SCHEDULED, so a run of
        the old content that is still going owns the row no longer: its finish
        matches nothing, and the next claim starts a new attempt.

        A job never runs twice at once, and a queue's concurrency limit counts
        that old run: a RUNNING row keeps its lease, which the old run's
        heartbeat goes on extending (``Runs.extend_leases``), and a SCHEDULED
        row with a lease is not due (``predicates.is_due``) until the old run
        has ended (its finish clears the lease, see ``Runs._let_go``) or died
        (the lease ran out).
        """
        t = self.core.table
        kept = _KEPT_BY_OVERRIDE | {"key"} | ({"latest_run_at", "run_at"} if debounce else set())
        leased = t.c.lease_until > naive_utc(self.core.now())
        values = [
            # The lease is kept (not in the SET): a RUNNING row's belongs to its
            # run, and a SCHEDULED row's to the run of content an earlier
            # override replaced, still going (its heartbeat extends it). Clearing
            # that one let a second override (a debounce) start the new content
            # beside the old run. Other live rows have none.
            *((t.c[k], v) for k, v in self.core.sealed(row).items() if k not in kept),
            # So is the key of a row whose run goes on: that run counts against
            # its key's limit through this row (a new key freed the old one
            # while its run went on); the new content runs under it.
            (t.c.key, sa.case((leased, t.c.key), else_=_typed(t.c.key, row["key"]))),
            (t.c.errors, 0),
            (t.c.started_at, None),
        ]
        if debounce:
            # In the statement, so concurrent debounces each see the cap the
            # first enqueue set, whichever of them wins the row. A RUNNING row
            # holds the content that is running: the new content starts a new
            # window (its own cap). First in the SET: MySQL reads a column
            # assigned earlier in the same UPDATE at its new value (status).
            pushed = row["run_at"]
            cap = row["latest_run_at"]
            when = t.c.run_at.type
            running = t.c.status == RUNNING
            first: list[tuple[Any, Any]] = [
                (
                    t.c.run_at,
                    sa.case(
                        (running, sa.literal(pushed, type_=when)),
                        (
                            sa.and_(t.c.latest_run_at.is_not(None), t.c.latest_run_at < pushed),
                            t.c.latest_run_at,
                        ),
                        else_=sa.literal(pushed, type_=when),
                    ),
                ),
                (
                    t.c.latest_run_at,
                    sa.case((running, sa.literal(cap, type_=when)), else_=t.c.latest_run_at),
                ),
            ]
            values = first + values
        # Only a live job is rewritten; a finished one keeping its id for its
        # unique_for window is answered as it is (insert_unique).
        live = sa.and_(t.c.live_custom_id == row["custom_id"], t.c.status.in_(LIVE))
        stmt = sa.update(t).where(live).ordered_values(*values)
        returning = self.core.dialect.returning
        with self.core.begin(conn, single=returning) as c:
            if returning:
                found = c.execute(stmt.returning(*t.c)).first()
                return self.core.to_job(found) if found is not None else None
            if c.execute(stmt).rowcount == 0:
                return None
            found = c.execute(sa.select(t).where(live)).first()
        return self.core.to_job(found) if found is not None else None

    def _read_live(self, key: Any, conn: Connection | None) -> Any:
        """SELECT on the unique live_custom_id (FOR SHARE inside the caller's
        transaction, ``Dialect.locking_read``): the live row holding ``key`` (a
        custom id as ``StoreCore.key`` made it)."""
        t = self.core.table
        stmt = sa.select(t).where(t.c.live_custom_id == key)
        if conn is None:
            with self.core.engine.connect() as c:
                return c.execute(stmt).first()
        if self.core.dialect.locking_read:
            # Inside the caller's transaction a plain read sees its snapshot
            # (InnoDB's REPEATABLE READ), which predates the row whose key just
            # refused our insert; a locking read sees the latest committed row.
            stmt = stmt.with_for_update(read=True)
        return conn.execute(stmt).first()


def _typed(column: Any, value: Any) -> Any:
    """``value`` as a bound literal of ``column``'s type (NULL for None)."""
    return sa.null() if value is None else sa.literal(value, type_=column.type)
