"""The job store: the only module that writes SQL.

The extension, runner, producer, CLI and dashboard call these methods; none of them
builds a statement. Driver errors are wrapped here, once, into
:class:`~flask_queue.errors.StorageError`.

Times are stored as naive UTC (portable across SQLite, PostgreSQL and MySQL) and
handed out as aware UTC datetimes.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..crypto import PayloadCipher
from ..errors import InvalidStatusError, JobNotFoundError, StorageError
from ..job import Job, ScheduleType
from .core import (
    _UNSET,
    COMPLETED,
    FAILED,
    FINISH_CHUNK,
    INSERT_CHUNK,
    LIVE,
    RUNNING,
    SCHEDULED,
    UTC,
    Row,
    StoreCore,
    aware_utc,
    chunks,
    naive_utc,
    text_of,
)
from .errors import (
    DEADLOCK_RETRIES,
    driver_words,
    is_dbapi_error,
    is_deadlock,
    is_outage,
    retry_on_deadlock,
    storage_errors,
)
from .errors import is_outage as _is_outage
from .predicates import (
    LEASE_EXPIRED,
    LEASE_EXPIRED_LINE,
    REASON_TAIL,
    Offer,
    Phase,
    claim_columns,
    claim_values,
    due_phases,
    finish_guard,
    is_due,
    offer_order,
    phases_for,
    reason_tail,
    take,
    these_runs,
    unrestricted,
    unstarted_run,
)

#: Rounds of insert/read (or update/insert) while concurrent enqueues of one custom
#: id keep finishing or replacing the live job between our statements.
UNIQUE_ROUNDS = 20
log = logging.getLogger("flask_queue")

CRON_ID_PREFIX = "flask_queue.cron:"
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


def _storable(text: str | None) -> str | None:
    """A reason the database will take: no NUL (PostgreSQL refuses it in text),
    lone surrogates from a handler's exception message written as escapes."""
    if text is None:
        return None
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


#: Characters the ``error`` column holds (``schema``: String(255)).
ERROR_WIDTH = 255


def _storable_line(text: str | None) -> str | None:
    """An error line the ``error`` column will take: escaped first, then cut
    to its width (escaping makes a NUL four characters: a line cut before it
    could be four times too long, and then the whole outcome was refused)."""
    stored = _storable(text)
    return stored[:ERROR_WIDTH] if stored is not None else None


#: Rounds of candidates a MySQL claim tries when other claimers locked the first ones.
CANDIDATE_ROUNDS = 5
#: Seconds between looks at the queue table while it holds no limited queue.
LIMITS_RECHECK = 1.0


def _history_json(history: list[dict[str, Any]] | None) -> str | None:
    return json.dumps(history, separators=(",", ":")) if history else None


def _finish_params(job: Job[Any], outcome: Finish) -> dict[str, Any]:
    """One row's bound values for ``finish_many``'s per-row UPDATE: what the
    outcome sets, else what the row holds (the claim returned it whole)."""
    return {
        "b_id": job.id,
        "b_attempt": job.attempt,
        "b_errors": outcome.errors,
        "b_reason": _storable(outcome.reason),
        "b_error": _storable_line(outcome.row_error),
        "b_history": _history_json(outcome.history if outcome.history is not None else job.history),
        "b_run_at": naive_utc(outcome.run_at or job.run_at),
        "b_occurrence_at": naive_utc(outcome.occurrence_at)
        if outcome.occurrence_at is not None
        else (naive_utc(job.occurrence_at) if job.occurrence_at is not None else None),
        "b_count": job.count if outcome.count is None else outcome.count,
    }


def _run_order(row: Any) -> tuple[int, datetime]:
    return (-row.priority, row.run_at)


class Claimed(NamedTuple):
    """A claimed run: all an executor needs to deliver it."""

    id: str
    attempt: int
    queue: str


@dataclass(frozen=True)
class Finish:
    """What the runner decided after a run; the store applies it atomically."""

    status: str  # COMPLETED, SCHEDULED (retry or next occurrence), FAILED, or "DELETE"
    run_at: datetime | None = None
    occurrence_at: datetime | None = None  # a repeating job's next slot
    reason: str | None = None
    count: int | None = None
    errors: int = 0
    failed_copy_reason: str | None = None  # a failed run of a repeating job, kept apart
    #: The run's error in one line: the row's when it keeps ``reason``, the
    #: failed copy's when there is one.
    error: str | None = None
    #: The job's attempt history with this run added (None: left as it is).
    history: list[dict[str, Any]] | None = None

    @property
    def row_error(self) -> str | None:
        return self.error if self.reason is not None else None


@dataclass
class Progress:
    """What a ``finish_many`` call wrote before it failed: the ids it wrote and
    how many of them still owned their row."""

    written: set[str] = field(default_factory=set)
    owned: int = 0


class Listener:
    """A dedicated PostgreSQL connection LISTENing on a job table's channel.

    Works with psycopg 3.2+ (``Connection.notifies(timeout=)``) and psycopg2
    (``select`` on the socket, then ``poll``). ``wait`` returns early when
    notified; a connection that dies raises ``StorageError`` (transient), after
    which the worker closes it and polls until it can listen again.
    """

    def __init__(self, conn: Any, kind: str) -> None:
        self.conn = conn
        self.kind = kind

    @classmethod
    def open(cls, conn: Any, channel: str) -> Listener | None:
        listen = 'LISTEN "' + channel.replace('"', '""') + '"'
        module = type(conn).__module__.split(".")[0]
        # psycopg 3.1's notifies() takes no timeout (its __kwdefaults__ is None).
        takes_timeout = "timeout" in (getattr(conn.notifies, "__kwdefaults__", None) or {})
        if module == "psycopg" and takes_timeout:
            conn.autocommit = True
            conn.execute(listen)
            return cls(conn, "psycopg")
        if module == "psycopg2":
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(listen)
            return cls(conn, "psycopg2")
        return None  # another driver, or psycopg before 3.2: poll

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if a notification came."""
        with storage_errors("wait for new jobs"):
            if self.kind == "psycopg":
                if not any(True for _ in self.conn.notifies(timeout=timeout, stop_after=1)):
                    return False
                # One wake-up for a burst: the rest of what arrived meanwhile
                # would only make the worker poll for jobs it already claimed.
                for _ in self.conn.notifies(timeout=0):
                    pass
                return True
            import select

            if self.conn.notifies:  # arrived with an earlier poll
                self.conn.notifies.clear()
                return True
            if not select.select([self.conn], [], [], timeout)[0]:
                return False
            self.conn.poll()
            notified = bool(self.conn.notifies)
            self.conn.notifies.clear()
            return notified

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            log.debug("flask_queue: closing the listening connection failed", exc_info=True)


class JobStore:
    def __init__(
        self, engine: Callable[[], Engine], table: sa.Table, clock: Callable[[], datetime]
    ) -> None:
        self.core = StoreCore(engine, table, clock)
        self.table = table
        #: Per-queue pause state and limits (``schema.queue_table``).
        self.queues = self.core.queues
        #: Runs finished per minute and queue (``schema.stats_table``).
        self.stats = self.core.stats
        #: The rate limits' start log (``schema.starts_table``).
        self.starts = self.core.starts
        #: Whether the queue table held limited queues at the last look, and when
        #: to look again if not (see ``_claim``).
        self._limited = True
        self._limited_recheck = 0.0
        #: Until when the limited claim's errors are not logged again.
        self._limited_error_quiet = 0.0
        #: Whether the queue table held a rate-limited queue at the last look,
        #: and when to look again (see ``_stamps_starts``).
        self._rated = True
        self._rated_recheck = 0.0
        #: Called before the first claim: the extension stores the declared limits.
        self.before_claim: Callable[[], None] | None = None

    @property
    def engine(self) -> Engine:
        return self.core.engine

    @property
    def dialect(self) -> str:
        return self.core.dialect.name

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.core.clock

    @clock.setter
    def clock(self, clock: Callable[[], datetime]) -> None:
        self.core.clock = clock

    @property
    def cipher(self) -> PayloadCipher | None:
        """Encrypts payloads at rest when QUEUE_ENCRYPTION_KEYS is set (``crypto.py``)."""
        return self.core.cipher

    @cipher.setter
    def cipher(self, cipher: PayloadCipher | None) -> None:
        self.core.cipher = cipher

    def now(self) -> datetime:
        return self.core.now()

    def to_job(self, row: Any, *, payload: Any = _UNSET) -> Job[Any]:
        return self.core.to_job(row, payload=payload)

    def new_row(self, **values: Any) -> Row:
        return self.core.new_row(**values)

    # -- writes from enqueue ----------------------------------------------------

    def insert(
        self, rows: Sequence[Row], *, conn: Connection | None = None, notify: bool = False
    ) -> None:
        """Insert rows in one transaction, one round trip per INSERT_CHUNK rows.

        ``notify`` (one row, no ``conn``) also wakes idle workers (see
        ``notify``): on PostgreSQL in the same statement (``WITH ins AS (INSERT
        …) SELECT pg_notify(…)``), so the NOTIFY goes out with the row's
        commit; elsewhere workers poll, and it changes nothing.
        """
        if not rows:
            return
        if notify and conn is None and len(rows) == 1 and self.core.dialect.notifies:
            row = self.core.sealed(rows[0])
            ins = sa.insert(self.table).values(row).returning(self.table.c.id).cte("ins")
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
        self, row: Row, *, override: bool, conn: Connection | None = None
    ) -> tuple[Job[Any], bool]:
        """Insert a row with a custom id; return (job, created).

        A live job (SCHEDULED or RUNNING) holding that custom id is kept and
        returned, unless ``override``, which rewrites it in place (same job id;
        a run in progress can no longer finish it: see ``_replace_live``).
        COMPLETED and FAILED jobs released the id when they finished.

        The unique key on ``live_custom_id`` is the arbiter: any number of
        concurrent callers end with exactly one live row, and each either wrote
        it or gets it back.
        """
        cid = row["custom_id"]
        for _ in range(UNIQUE_ROUNDS):
            with storage_errors("enqueue a job"):
                if override:
                    replaced = self._replace_live(row, conn)
                    if replaced is not None:
                        return replaced, True
                try:
                    with self.core.begin(conn, nested=self.core.dialect.savepoint) as c:
                        c.execute(sa.insert(self.table).values(**self.core.sealed(row)))
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
                if not override:
                    existing = self._read_live(cid, conn)
                    if existing is not None:
                        return self.core.to_job(existing), False
        raise StorageError(
            f"Could not enqueue job with id {text_of(cid)!r}: it kept changing underneath."
        )

    def _replace_live(self, row: Row, conn: Connection | None) -> Job[Any] | None:
        """Rewrite the live job holding ``row``'s custom id in place; None if none.

        The attempt number is kept and the status set to SCHEDULED, so a run of
        the old content that is still going owns the row no longer: its finish
        matches nothing, and the next claim starts a new attempt.

        A job never runs twice at once, and a queue's concurrency limit counts
        that old run: a RUNNING row keeps its lease, which the old run's
        heartbeat goes on extending (``extend_leases``), and a SCHEDULED row
        with a lease is not due (``_due``) until the old run has ended (its
        finish clears the lease, see ``_let_go``) or died (the lease ran out).
        """
        t = self.table
        values = [
            # The lease is kept (not in the SET): a RUNNING row's belongs to its
            # run, and a SCHEDULED row's to the run of content an earlier
            # override replaced, still going (its heartbeat extends it). Clearing
            # that one let a second override (a debounce) start the new content
            # beside the old run. Other live rows have none.
            *((t.c[k], v) for k, v in self.core.sealed(row).items() if k not in _KEPT_BY_OVERRIDE),
            (t.c.errors, 0),
            (t.c.started_at, None),
        ]
        stmt = sa.update(t).where(t.c.live_custom_id == row["custom_id"]).ordered_values(*values)
        returning = self.core.dialect.returning
        with self.core.begin(conn, single=returning) as c:
            if returning:
                found = c.execute(stmt.returning(*t.c)).first()
                return self.core.to_job(found) if found is not None else None
            if c.execute(stmt).rowcount == 0:
                return None
            found = c.execute(sa.select(t).where(t.c.live_custom_id == row["custom_id"])).first()
        return self.core.to_job(found) if found is not None else None

    def _read_live(self, key: Any, conn: Connection | None) -> Any:
        """The live row holding ``key`` (a custom id as ``_key`` made it)."""
        t = self.table
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

    # -- reads ------------------------------------------------------------------

    def get(self, job_id: str) -> Job[Any] | None:
        t = self.table
        with storage_errors("read a job"), self.core.engine.connect() as c:
            row = c.execute(sa.select(t).where(t.c.id == job_id)).first()
        return self.core.to_job(row) if row else None

    def get_by_custom_id(self, custom_id: str) -> Job[Any] | None:
        """The live job holding ``custom_id``, else the latest finished record of it."""
        with storage_errors("read a job"), self.core.engine.connect() as c:
            row = self._by_custom_id(c, custom_id)
        return self.core.to_job(row) if row else None

    def _by_custom_id(self, c: Connection, custom_id: str) -> Any:
        t = self.table
        key = self.core.key(custom_id)
        return (
            c.execute(sa.select(t).where(t.c.live_custom_id == key)).first()
            or c.execute(
                sa.select(t)
                .where(t.c.custom_id == key)
                .order_by(t.c.created_at.desc(), t.c.id.desc())
                .limit(1)
            ).first()
        )

    def jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after: tuple[datetime, str] | None = None,
        newest_first: bool = False,
        light: bool = False,
    ) -> list[Job[Any]]:
        """A keyset page of jobs ordered by (run_at, id), after the key ``after``.

        No OFFSET: a page costs the same at row 10 and at row 1,000,000, on the
        (status, run_at) and (queue, status, run_at) indexes. ``light`` (lists)
        reads no payload (the jobs have ``payload`` None) and only the end of
        ``reason``, where a traceback's last line (the exception) is: a page
        of fifty costs the same with 50-byte payloads or 1 MB ones.
        """
        t = self.table
        stmt = sa.select(*self._light_columns()) if light else sa.select(t)
        if status is not None:
            stmt = stmt.where(t.c.status == status)
        if queue is not None:
            stmt = stmt.where(t.c.queue == queue)
        if after is not None:
            run_at, last_id = naive_utc(after[0]), after[1]
            # Spelled with a plain range on run_at first so every database can
            # start the index scan at the key instead of filtering from the top.
            if newest_first:
                key = sa.and_(t.c.run_at <= run_at, sa.or_(t.c.run_at < run_at, t.c.id < last_id))
            else:
                key = sa.and_(t.c.run_at >= run_at, sa.or_(t.c.run_at > run_at, t.c.id > last_id))
            stmt = stmt.where(key)
        order = (t.c.run_at.desc(), t.c.id.desc()) if newest_first else (t.c.run_at, t.c.id)
        stmt = stmt.order_by(*order).limit(limit)
        with storage_errors("list jobs"), self.core.engine.connect() as c:
            if light:
                return [self.core.to_job(r, payload=None) for r in c.execute(stmt)]
            return [self.core.to_job(r) for r in c.execute(stmt)]

    def _light_columns(self) -> list[Any]:
        """What a list reads: no payload, no history, no traceback."""
        t = self.table
        skipped = {"payload", "history"}
        return [
            sa.literal(None).label(c.name)
            if c.name in skipped
            else reason_tail(t, self.core.dialect).label("reason")
            if c.name == "reason"
            else c
            for c in t.c
        ]

    def iter_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        page: int = 500,
        light: bool = False,
    ) -> Iterator[Job[Any]]:
        """Every matching job in (run_at, id) order, read a keyset page at a time."""
        after: tuple[datetime, str] | None = None
        while True:
            rows = self.jobs(status=status, queue=queue, limit=page, after=after, light=light)
            yield from rows
            if len(rows) < page:
                return
            after = (rows[-1].run_at, rows[-1].id)

    def find(self, key: str) -> Job[Any] | None:
        """The job whose id or custom id is exactly ``key``."""
        t = self.table
        with storage_errors("find a job"), self.core.engine.connect() as c:
            row = c.execute(sa.select(t).where(t.c.id == key)).first() or self._by_custom_id(c, key)
        return self.core.to_job(row) if row else None

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (status, queue), exact: the CLI's ``stats``."""
        t = self.table
        stmt = sa.select(t.c.status, t.c.queue, sa.func.count()).group_by(t.c.status, t.c.queue)
        with storage_errors("count jobs"), self.core.engine.connect() as c:
            return {(s, q): n for s, q, n in c.execute(stmt)}

    def oldest_due(self, queue: str) -> datetime | None:
        """The ``run_at`` of the queue's oldest due, unclaimed job: one probe of
        (queue, status, run_at)."""
        t = self.table
        stmt = sa.select(sa.func.min(t.c.run_at)).where(
            t.c.queue == queue, is_due(self.table, self.core.now())
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
        """Count matching jobs, stopping at ``cap`` + 1 (shown as "cap+").

        A capped count reads at most cap + 1 index entries, so the dashboard's
        counts cost the same with a thousand jobs or ten million (Oban Web and
        mission_control cap theirs the same way).
        """
        (count,) = self.counts_capped(cap, [(status, queue)], due=due)
        return count

    def counts_capped(
        self, cap: int, keys: Sequence[tuple[str | None, str | None]], *, due: bool = False
    ) -> list[int]:
        """``count_capped`` of each (status, queue) in ``keys`` (None: any), in
        one statement: a UNION ALL of capped counts, one round trip for the
        overview's whole grid instead of one per cell."""
        if not keys:
            return []
        t = self.table
        now = self.core.now()
        parts = []
        for i, (status, queue) in enumerate(keys):
            inner = sa.select(sa.literal(1).label("one")).select_from(t)
            if status is not None:
                inner = inner.where(t.c.status == status)
            if queue is not None:
                inner = inner.where(t.c.queue == queue)
            if due:  # due and unclaimed: what a pause or a limit holds back
                inner = inner.where(is_due(self.table, now))
            sub = inner.limit(cap + 1).subquery(f"capped_{i}")
            parts.append(
                sa.select(sa.literal(i).label("k"), sa.func.count().label("n")).select_from(sub)
            )
        stmt = parts[0] if len(parts) == 1 else sa.union_all(*parts)
        with storage_errors("count jobs"), self.core.engine.connect() as c:
            found = {int(k): int(n) for k, n in c.execute(stmt)}
        return [found[i] for i in range(len(keys))]

    def recent_failures(self, limit: int, queue: str | None = None) -> list[tuple[str, str | None]]:
        """(queue, error line) of the latest ``limit`` FAILED jobs, newest first:
        the exception's line, not a thousand whole tracebacks (the end of the
        traceback for rows older than the ``error`` column)."""
        t = self.table
        error = sa.func.coalesce(t.c.error, reason_tail(t, self.core.dialect))
        stmt = sa.select(t.c.queue, error).where(t.c.status == FAILED)
        if queue is not None:
            stmt = stmt.where(t.c.queue == queue)
        stmt = stmt.order_by(t.c.run_at.desc()).limit(limit)
        with storage_errors("read failures"), self.core.engine.connect() as c:
            return [(q, r) for q, r in c.execute(stmt)]

    # -- admin actions ----------------------------------------------------------

    def delete(self, job_id: str) -> bool:
        """Delete a job; False if there is none. A job whose run holds a live
        lease (RUNNING, or replaced while running) is refused: its row is the
        run's concurrency slot, and the handler goes on running whatever
        happens to the row. A run whose lease expired (dead) may go."""
        t = self.table
        now = self.core.now()
        unleased = sa.or_(t.c.lease_until.is_(None), t.c.lease_until <= now)
        with storage_errors("delete a job"), self.core.one_statement() as c:
            if c.execute(sa.delete(t).where(t.c.id == job_id, unleased)).rowcount > 0:
                return True
            held = c.execute(sa.select(t.c.lease_until).where(t.c.id == job_id)).first()
        if held is None:
            return False
        raise InvalidStatusError(
            f"Cannot delete job {job_id!r}: it is running (its run holds a lease until"
            f" {held[0]:%Y-%m-%d %H:%M:%S} UTC). Delete it once the run has ended."
        )

    def retry(self, job_id: str) -> Job[Any]:
        """A FAILED job goes back to SCHEDULED, due now, with a fresh retry budget.

        It takes its custom id back (a live job holds its id): if a newer live
        job holds it already, the retry is refused, so no id, and no declared
        cron, ever has two live rows.
        """
        return self._reschedule_now(job_id, (FAILED,), "retry")

    def run_now(self, job_id: str) -> Job[Any]:
        """A SCHEDULED or FAILED job becomes due now."""
        return self._reschedule_now(job_id, (SCHEDULED, FAILED), "run now")

    def retry_failed(self, queue: str | None = None) -> int:
        """Every FAILED job (of ``queue``) back to SCHEDULED, due now; return how many.

        Jobs without a custom id go back in one statement; each one with a custom
        id takes it back on its own, and stays FAILED if a live job holds it.
        """
        t = self.table
        now = self.core.now()
        where = [t.c.status == FAILED] + ([t.c.queue == queue] if queue is not None else [])
        values = {"status": SCHEDULED, "run_at": now, "errors": 0, "lease_until": None}
        with storage_errors("retry failed jobs"):
            with self.core.engine.begin() as c:
                count = c.execute(
                    sa.update(t)
                    .where(*where, t.c.custom_id.is_(None))
                    .values(updated_at=now, **values)
                ).rowcount
                named = list(
                    c.execute(sa.select(t.c.id).where(*where, t.c.custom_id.is_not(None))).scalars()
                )
            for job_id in named:
                try:
                    self._reschedule_now(job_id, (FAILED,), "retry")
                    count += 1
                except (InvalidStatusError, JobNotFoundError):
                    pass  # its id is held by a live job, or it changed meanwhile
            return count

    def delete_failed(self, queue: str | None = None) -> int:
        """Delete every FAILED job (of ``queue``)."""
        t = self.table
        stmt = sa.delete(t).where(t.c.status == FAILED)
        if queue is not None:
            stmt = stmt.where(t.c.queue == queue)
        with storage_errors("delete failed jobs"), self.core.engine.begin() as c:
            return c.execute(stmt).rowcount

    def _custom_id_of(self, job_id: str) -> Any:
        t = self.table
        with storage_errors("read a job"), self.core.engine.connect() as c:
            return c.execute(sa.select(t.c.custom_id).where(t.c.id == job_id)).scalar()

    def _reschedule_now(self, job_id: str, allowed: tuple[str, ...], action: str) -> Job[Any]:
        t = self.table
        now = self.core.now()
        stmt = (
            sa.update(t)
            .where(t.c.id == job_id, t.c.status.in_(allowed))
            .values(
                status=SCHEDULED,
                run_at=now,
                errors=0,
                # A SCHEDULED row's lease is a replaced run's, still going (see
                # _replace_live): the new content waits for it even when run now.
                lease_until=sa.case((t.c.status == SCHEDULED, t.c.lease_until), else_=None),
                updated_at=now,
                live_custom_id=t.c.custom_id,  # a live job holds its custom id again
            )
        )
        try:
            with storage_errors(f"{action} a job"), self.core.engine.begin() as c:
                result = c.execute(stmt)
                row = c.execute(sa.select(t).where(t.c.id == job_id)).first()
        except StorageError as exc:
            if not isinstance(exc.__cause__, sa.exc.IntegrityError):
                raise
            holder = self.get_by_custom_id(text_of(self._custom_id_of(job_id)))
            raise InvalidStatusError(
                f"Cannot {action} job {job_id!r}: its custom id is held by live job"
                f" {holder.id if holder else '?'!r}. Delete one of them first."
            ) from None
        if row is None:
            raise JobNotFoundError(f"No job with id {job_id!r}.")
        if result.rowcount == 0:
            raise InvalidStatusError(
                f"Cannot {action} job {job_id!r}: it is {row._mapping['status']},"
                f" and only {'/'.join(allowed)} jobs can be."
            )
        return self.core.to_job(row)

    # -- the run path ----------------------------------------------------------

    def _due_phases(self, now: Any) -> list[Phase]:
        return due_phases(self.table, now)

    def claim(
        self, limit: int, lease: timedelta, *, ids: Sequence[str] | None = None
    ) -> list[Claimed]:
        """Atomically take up to ``limit`` due jobs; each is claimed by one caller.

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
        rows = self._claim(limit, lease, ids, whole=False)
        return [Claimed(r.id, r.attempt, r.queue) for r in rows]

    def claim_started(
        self, limit: int, lease: timedelta, *, ids: Sequence[str] | None = None
    ) -> list[Job[Any]]:
        """``claim`` for a runner in this process: full jobs come back, ready to
        run, highest priority first.

        The thread executor and the worker run what they claim themselves; no
        request can be replayed on the way, so no statement per job starts the
        run: the runner reports each start to its ``Finisher``, which marks them
        in batches (``mark_started``). Until then a run is claimed, not started:
        a process that dies with claimed runs still queued costs them no
        attempt. A row this release cannot read is failed here, with the
        reason (see ``start``).
        """
        jobs: list[Job[Any]] = []
        for row in self._claim(limit, lease, ids, whole=True):
            job = self.core.readable(row)
            if job is not None:
                jobs.append(job)
        return jobs

    def _claim(
        self, limit: int, lease: timedelta, ids: Sequence[str] | None, *, whole: bool
    ) -> list[Any]:
        if self.before_claim is not None:
            self.before_claim()  # stores the declared limits; unset once it succeeded
        now = self.core.now()
        with storage_errors("claim jobs"):
            claimed: list[Any] = []
            if self._limited or time.monotonic() >= self._limited_recheck:
                claimed = self._claim_limited_apart(limit, now, lease, ids, whole=whole)
            if len(claimed) < limit:
                claimed += self._claim_free(limit - len(claimed), now, lease, ids, whole=whole)
        # Executors deliver a claim's runs in this order: priority first.
        return sorted(claimed, key=_run_order)

    def _claim_limited_apart(
        self,
        limit: int,
        now: datetime,
        lease: timedelta,
        ids: Sequence[str] | None,
        *,
        whole: bool,
    ) -> list[Any]:
        """``_claim_limited``, kept from stopping the free queues' claim.

        The limited queues' claim reads their own rows and start log: if the
        database refuses that (a table an upgrade has not migrated yet, a row
        edited by hand), the free queues are still claimed, and the error is
        logged (once a minute), instead of failing every claim of every queue.
        An outage is raised: it stops the free claim too.
        """
        try:
            return self._claim_limited(limit, now, lease, ids, whole=whole)
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

    def _claim_free(
        self,
        limit: int,
        now: datetime,
        lease: timedelta,
        ids: Sequence[str] | None,
        *,
        whole: bool,
    ) -> list[Any]:
        """Claim from the queues that are neither paused nor limited."""
        if self.core.dialect.claims_in_one_statement:
            stmt = self._claim_statement(whole=whole, by_id=ids is not None)
            params: dict[str, Any] = {"now": now, "lease_until": now + lease, "limit": limit}
            if ids is not None:
                params["ids"] = list(ids)
            with self.core.one_statement() as c:
                return list(c.execute(stmt, params))
        phases = [
            phase._replace(where=sa.and_(phase.where, unrestricted(self.table, self.queues)))
            for phase in phases_for(self.table, now, None if ids is None else list(ids))
        ]
        values = claim_values(self.table, now, now + lease)
        return self._claim_mysql(phases, limit, values, claim_columns(self.table, whole))

    def _claim_limited(
        self,
        limit: int,
        now: datetime,
        lease: timedelta,
        ids: Sequence[str] | None,
        *,
        whole: bool,
    ) -> list[Any]:
        """Claim from the queues with a concurrency or rate limit, one claimer at
        a time: the transaction first writes the limited queues' rows, which
        takes their row locks (PostgreSQL, MySQL) or the database's write lock
        (SQLite); the RUNNING counts and start logs it reads then stay true
        until it commits, whatever the number of processes and hosts.

        Each queue offers its best due jobs up to its room; they are ranked
        with the free queues' best (read, not locked) by priority, then age,
        and only those within the claim's ``limit`` are taken: a limited queue
        neither jumps the priority order nor is starved by a free backlog (a
        tie goes to the limited queue)."""
        q, t = self.queues, self.table
        limited = sa.and_(
            sa.not_(q.c.paused),
            sa.or_(q.c.concurrency.is_not(None), q.c.rate_limit.is_not(None)),
        )
        engine = self.core.engine
        if self.core.dialect.claim_isolation is not None:
            engine = engine.execution_options(isolation_level=self.core.dialect.claim_isolation)
        by_id = None if ids is None else list(ids)

        def once() -> list[Any]:
            nonlocal now
            with engine.begin() as c:
                c.execute(sa.update(q).where(limited).values(updated_at=now))
                rows = c.execute(sa.select(q).where(limited).order_by(q.c.name)).all()
                # The time is read under the lock, not before waiting for it.
                now = self.core.now()
                self._limited = bool(rows)
                rated = [r for r in rows if r.rate_limit is not None]
                self._note_rated(bool(rated))
                if not rows:
                    # Look again in a while: a limit declared meanwhile is
                    # safe (free claims never take a limited queue's jobs),
                    # its jobs just wait that long for their first claim.
                    self._limited_recheck = time.monotonic() + LIMITS_RECHECK
                    return []
                running: dict[str, int] = dict(
                    c.execute(
                        sa.select(t.c.queue, sa.func.count())
                        .where(
                            t.c.queue.in_([r.name for r in rows]),
                            # SCHEDULED with a lease: replaced while running,
                            # and that run still goes on (_replace_live).
                            t.c.status.in_(LIVE),
                            t.c.lease_until > now,
                        )
                        .group_by(t.c.queue)
                    ).all()
                )
                in_window = self._rate_window(c, rated, now) if rated else {}
                offers: list[Offer] = []
                for row in rows:
                    room = limit
                    if row.concurrency is not None:
                        room = min(room, row.concurrency - running.get(row.name, 0))
                    if row.rate_limit is not None:
                        room = min(room, row.rate_limit - in_window.get(row.name, 0))
                    if room > 0:
                        offers += self._offers(c, row.name, room, now, by_id)
                if not offers:
                    return []
                if by_id is None:
                    offers += self._free_offers(c, now, limit)
                chosen = [o.id for o in sorted(offers, key=offer_order)[:limit] if o.id]
                if not chosen:
                    return []
                got = take(
                    c,
                    self.table,
                    chosen,
                    claim_values(self.table, now, now + lease),
                    claim_columns(self.table, whole),
                )
                rated_names = {r.name for r in rated}
                log_rows = [
                    {"job_id": g.id, "attempt": g.attempt, "queue": g.queue}
                    for g in got
                    if g.queue in rated_names
                ]
                if log_rows:
                    c.execute(sa.insert(self.starts).values(started_at=None), log_rows)
                return got

        return retry_on_deadlock(once)

    def _rate_window(self, c: Connection, rated: list[Any], now: datetime) -> dict[str, int]:
        """Runs of each rate-limited queue that count against its window at
        ``now``: started within it, or claimed and not started yet (they will
        start later, so they hold a place in every window from now on).

        First deletes the starts that left the window. A claim whose run is
        no longer going (not RUNNING under that attempt with a live lease) but
        was never stamped is stamped ``now``: its run may have started and
        ended before its start was written (a stamp the database refused, a
        process killed in between), and forgetting it could let N more start
        in that window. (A run given back unstarted, ``release``, removes its
        claim itself.) Errs towards fewer starts."""
        s, t = self.starts, self.table
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
        counted = c.execute(
            sa.select(s.c.queue, sa.func.count()).where(s.c.queue.in_(names)).group_by(s.c.queue)
        )
        return {name: int(n) for name, n in counted}

    def _offers(
        self, c: Connection, name: str, room: int, now: datetime, ids: list[str] | None
    ) -> list[Offer]:
        """Up to ``room`` of one limited queue's best due jobs, locked inside
        ``_claim_limited``'s transaction (SKIP LOCKED: rows another claimer
        holds are passed over). Those not chosen are let go at its commit."""
        t = self.table
        found: list[Offer] = []
        for phase in phases_for(self.table, now, ids):
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
        """The free queues' best due jobs, read without locks (the free claim
        that follows takes them): what a limited queue's jobs rank against."""
        t = self.table
        found: list[Offer] = []
        for phase in due_phases(self.table, now):
            best = (
                sa.select(t.c.priority, phase.since)
                .where(phase.where, unrestricted(self.table, self.queues))
                .order_by(*phase.order)
                .limit(limit)
            )
            found += [Offer(p, since, "", False) for p, since in c.execute(best)]
        return found

    def _claim_statement(self, *, whole: bool, by_id: bool) -> Any:
        """The claim of PostgreSQL and SQLite, built once per kind and reused
        with new bound values (building it was half the cost of an empty claim).

        SQLite has one writer at a time, so the UPDATE is atomic by itself there
        (and takes no row locks). On PostgreSQL it is one statement, so one round
        trip in autocommit: each range is a CTE
        that walks its index and locks what it takes (SKIP LOCKED: rows another
        claimer holds are passed over, not waited for); a CTE that locks rows
        is never inlined, which also fences its LIMIT (inlined, the planner
        may re-evaluate the subquery per row and update more rows). The best
        of both ranges are taken (``_due_phases``); rows locked beyond the
        limit are let go when the statement ends.
        """
        return self.core.prebuilt(("claim", whole, by_id), lambda: self._build_claim(whole, by_id))

    def _build_claim(self, whole: bool, by_id: bool) -> Any:
        t = self.table
        now = sa.bindparam("now", type_=t.c.run_at.type)
        limit = sa.bindparam("limit", type_=sa.Integer)
        phases = phases_for(self.table, now, sa.bindparam("ids", expanding=True) if by_id else None)
        ctes = [
            sa.select(t.c.id, t.c.priority, phase.since.label("since"))
            .where(phase.where, unrestricted(self.table, self.queues))
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
            .ordered_values(*claim_values(self.table, now, lease_until))
            .returning(*claim_columns(self.table, whole))
        )

    def claim_one(self, job_id: str, lease: timedelta) -> Claimed | None:
        """Claim one just-enqueued job by id, if it is still due (a producer may
        have claimed or even run it first: then this returns None and changes
        nothing)."""
        t = self.table
        if self.before_claim is not None:
            self.before_claim()
        now = self.core.now()
        if self._limited:
            # A limited queue's job is claimed under its limits, or not now.
            with storage_errors("claim a job"):
                limited = self._claim_limited_apart(1, now, lease, [job_id], whole=False)
            if limited:
                return Claimed(limited[0].id, limited[0].attempt, limited[0].queue)
        stmt = (
            sa.update(t)
            .where(t.c.id == job_id, is_due(self.table, now), unrestricted(self.table, self.queues))
            .ordered_values(*claim_values(self.table, now, now + lease))
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

    def _claim_mysql(
        self,
        phases: list[Phase],
        limit: int,
        values: list[tuple[Any, Any]],
        columns: list[Any],
    ) -> list[Any]:
        # No UPDATE ... RETURNING: lock the ids, update them as one set, read them
        # back, all in one transaction; retry the whole of it on an InnoDB deadlock.
        # READ COMMITTED: under InnoDB's default REPEATABLE READ a locking read
        # also locks the gaps it scans, and every claimer's UPDATE inserts index
        # entries into the RUNNING range the others scan: deadlocks by the dozen
        # with eight producers. The claim needs only the row locks.
        engine = self.core.engine.execution_options(isolation_level="READ COMMITTED")

        def once() -> list[Any]:
            with engine.begin() as c:
                offers: list[Offer] = []
                for phase in phases:
                    offers += self._lock_candidates(c, phase, limit)
                ids = [o.id for o in sorted(offers, key=offer_order)[:limit]]
                return take(c, self.table, ids, values, columns) if ids else []

        return retry_on_deadlock(once)

    def _lock_candidates(self, c: Connection, phase: Phase, room: int) -> list[Offer]:
        """MySQL: lock up to ``room`` rows of ``phase`` in its order.

        InnoDB locks every row a locking read looks at, and a read sorted by
        priority looks at the whole due range: so candidates are picked without
        locks, then just those are locked (SKIP LOCKED; the WHERE is checked
        again, so a row taken meanwhile is not). Candidates that other claimers
        locked first are passed over for the next ones, a few rounds at most:
        a claim must not come back empty while due jobs are free.
        """
        t = self.table
        locked: list[Offer] = []
        seen: list[str] = []
        for _ in range(CANDIDATE_ROUNDS):
            need = room - len(locked)
            if need <= 0:
                break
            pick = (
                sa.select(t.c.priority, phase.since, t.c.id)
                .where(phase.where)
                .order_by(*phase.order)
                .limit(2 * need)
            )
            if seen:
                pick = pick.where(t.c.id.not_in(seen))
            picked = [Offer(p, s, i, True) for p, s, i in c.execute(pick)]
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
                    .where(phase.where, t.c.id.in_([o.id for o in picked]))
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            locked += [o for o in picked if o.id in free][:need]
            if len(picked) < 2 * need:
                break  # no more candidates than these
        return locked

    def start(self, job_id: str, attempt: int, lease: timedelta) -> tuple[Job[Any] | None, str]:
        """Mark a claimed run as started; exactly one caller per attempt wins.

        Returns (job, "ok"), or (None, "missing") for an unknown id, or
        (None, "stale") when the attempt is not the current, unstarted one — a
        replayed or late request — and the row is left as it was.
        """
        t = self.table
        now = self.core.now()
        returning = self.core.dialect.returning

        def build() -> Any:
            stmt = (
                sa.update(t)
                .where(unstarted_run(self.table, sa.bindparam("b_id"), sa.bindparam("b_attempt")))
                .values(
                    started_at=sa.bindparam("b_now"),
                    lease_until=sa.bindparam("b_lease_until"),
                    updated_at=sa.bindparam("b_now"),
                )
            )
            return stmt.returning(*t.c) if returning else stmt

        stmt = self.core.prebuilt(("start", returning), build)
        params = {"b_id": job_id, "b_attempt": attempt, "b_now": now, "b_lease_until": now + lease}
        with (
            storage_errors("start a job"),
            self.core.one_statement() if returning else self.core.engine.begin() as c,
        ):
            row = None
            if returning:
                row = c.execute(stmt, params).first()
            elif c.execute(stmt, params).rowcount == 1:
                row = c.execute(sa.select(t).where(t.c.id == job_id)).one()
            if row is None:
                exists = c.execute(sa.select(t.c.id).where(t.c.id == job_id)).first()
                return None, "stale" if exists else "missing"
        if self._stamps_starts():
            self._stamp([(job_id, attempt)], now)
        job = self.core.readable(row)
        return (job, "ok") if job is not None else (None, "failed")

    def finish(self, job: Job[Any], outcome: Finish, *, unstarted: bool = False) -> bool:
        """Apply a run's outcome if the run still owns the row; False if it does not.

        ``unstarted`` applies it only to a claimed attempt that nobody started:
        a delivery the invoke endpoint refused (a run that did start finishes
        itself; this must not overwrite it).
        """
        t = self.table
        now = self.core.now()
        guard = {"b_id": job.id, "b_attempt": job.attempt}
        single = outcome.failed_copy_reason is None
        with (
            storage_errors("finish a job"),
            self.core.one_statement() if single else self.core.engine.begin() as c,
        ):
            if outcome.status == "DELETE":
                stmt = self.core.prebuilt(
                    ("finish-delete", unstarted),
                    lambda: sa.delete(t).where(finish_guard(self.table, unstarted)),
                )
                if c.execute(stmt, guard).rowcount == 1:
                    return True
                self._let_go(c, [(job.id, job.attempt)])
                return False
            values: dict[str, Any] = {
                "status": outcome.status,
                "errors": outcome.errors,
                "lease_until": None,
                "updated_at": now,
                "reason": _storable(outcome.reason),
                "error": _storable_line(outcome.row_error),
            }
            if outcome.history is not None:
                values["history"] = _history_json(outcome.history)
            if outcome.status == SCHEDULED:
                values["started_at"] = None  # the next run has not started
            else:
                values["live_custom_id"] = None  # a finished job releases its id
            if outcome.run_at is not None:
                values["run_at"] = naive_utc(outcome.run_at)
            if outcome.occurrence_at is not None:
                values["occurrence_at"] = naive_utc(outcome.occurrence_at)
            if outcome.count is not None:
                values["count"] = outcome.count
            # One prebuilt UPDATE per set of columns an outcome writes (a handful).
            columns = tuple(values)
            stmt = self.core.prebuilt(
                ("finish-update", unstarted, columns),
                lambda: (
                    sa.update(t)
                    .where(finish_guard(self.table, unstarted))
                    .values({k: sa.bindparam(f"v_{k}") for k in columns})
                ),
            )
            params = {f"v_{k}": v for k, v in values.items()}
            if c.execute(stmt, {**guard, **params}).rowcount != 1:
                self._let_go(c, [(job.id, job.attempt)])
                return False
            if outcome.failed_copy_reason is not None:
                # The failed run's record is a plain one-off row: retrying it
                # runs that payload once; it starts no second schedule, and it
                # holds no custom id.
                copy = self.core.new_row(
                    queue=job.queue,
                    payload=json.dumps(job.payload),
                    run_at=job.run_at,
                    status=FAILED,
                    reason=_storable(outcome.failed_copy_reason),
                    error=_storable_line(outcome.error),
                    history=_history_json(outcome.history),
                    retry=json.dumps(job.retry) if job.retry is not None else None,
                    attempt=job.attempt,
                    errors=job.errors + 1,
                )
                self.insert([copy], conn=c)
            return True

    def _let_go(self, c: Connection, runs: list[tuple[str, int]]) -> None:
        """Runs that ended without owning their row: if their job was replaced
        while they ran (override), its new content may start now, not a lease
        later (see _replace_live)."""
        t = self.table
        c.execute(
            sa.update(t)
            .where(
                t.c.status == SCHEDULED,
                t.c.lease_until.is_not(None),
                these_runs(self.table.c.id, self.table.c.attempt, runs),
            )
            .values(lease_until=None)
        )

    def mark_started(self, runs: Sequence[tuple[str, int]]) -> None:
        """Record that these claimed runs (id, attempt) began their handlers, in
        one statement per chunk: from then on a death of their process counts
        as a failed attempt (see ``_claim_values``). Only a run still RUNNING
        and unstarted is touched: an outcome written first stays as it is.
        Rows are locked in id order, and a deadlock with another writer of
        them (InnoDB picks a victim) is tried again: it is safe to repeat."""
        t = self.table
        now = self.core.now()
        for chunk in chunks(sorted(runs)):
            stmt = (
                sa.update(t)
                .where(
                    these_runs(self.table.c.id, self.table.c.attempt, chunk),
                    t.c.status == RUNNING,
                    t.c.started_at.is_(None),
                )
                .values(started_at=now)
            )
            self._retrying_deadlocks("mark runs started", stmt)
        if self._stamps_starts():
            self._stamp(runs, now)

    def _retrying_deadlocks(self, action: str, stmt: Any) -> int:
        """Run one statement that is safe to repeat, again after an InnoDB deadlock."""

        def once() -> int:
            with storage_errors(action), self.core.one_statement() as c:
                return int(c.execute(stmt).rowcount)

        return retry_on_deadlock(once, pause=(0.002, 0.01))

    def _note_rated(self, rated: bool) -> None:
        self._rated = rated
        self._rated_recheck = time.monotonic() + LIMITS_RECHECK

    def _stamps_starts(self) -> bool:
        """Whether starts go in the rate log: some queue has a rate limit (read
        at most once per ``LIMITS_RECHECK``; a limited claim also updates it)."""
        if time.monotonic() >= self._rated_recheck:
            q = self.queues
            with storage_errors("read queue limits"), self.core.engine.connect() as c:
                found = c.execute(
                    sa.select(q.c.name).where(q.c.rate_limit.is_not(None)).limit(1)
                ).first()
            self._note_rated(found is not None)
        return self._rated

    def _stamp(self, runs: Sequence[tuple[str, int]], now: datetime) -> None:
        """Stamp the start time on these runs' entries in the rate log (runs of
        queues without a rate limit have none: nothing changes).

        Until stamped, an entry counts in every window (claimed, not started),
        so a run that waited in a pool's queue before it started holds its
        place from its real start on, not from its claim: the next start comes
        a whole window after it. Stamped after the run's start (a little late
        at most: the limit errs towards fewer starts)."""
        s = self.starts
        for chunk in chunks(sorted(runs)):
            stmt = (
                sa.update(s)
                .where(
                    s.c.job_id.in_([job_id for job_id, _ in chunk]),
                    sa.tuple_(s.c.job_id, s.c.attempt).in_(chunk),
                    s.c.started_at.is_(None),
                )
                .values(started_at=now)
            )
            self._retrying_deadlocks("record rate-limited starts", stmt)

    def finish_many(
        self, runs: Sequence[tuple[Job[Any], Finish]], progress: Progress | None = None
    ) -> int:
        """Apply many runs' outcomes, one statement per kind of outcome; return
        how many runs still owned their row.

        Each statement commits on its own: no transaction holds one kind's row
        locks while it waits for another's (a heartbeat locking the same rows in
        another order deadlocked with that). ``progress`` records what committed,
        so a call repeated after an outage writes only the rest and counts the
        runs that owned their row across both calls.

        The runs that ended their job are one DELETE for the whole batch; a kept
        completion, a retry or next occurrence, and a failure are one UPDATE
        per kind executed for each of its rows (each row's own values: its
        history, its error). Every row is guarded by its attempt, as in ``finish``. A
        repeating job's final failure, whose failed run is kept as a row of its
        own, goes through ``finish``.
        """
        t = self.table
        now = self.core.now()
        progress = progress if progress is not None else Progress()
        deleted: list[tuple[str, int]] = []
        by_status: dict[str, list[dict[str, Any]]] = {SCHEDULED: [], FAILED: [], COMPLETED: []}
        apart: list[tuple[Job[Any], Finish]] = []
        # Id order: concurrent writers of the same rows lock them in one order.
        for job, outcome in sorted(runs, key=lambda run: run[0].id):
            if job.id in progress.written:
                continue
            if outcome.status == "DELETE":
                deleted.append((job.id, job.attempt))
            elif outcome.failed_copy_reason is None and outcome.status in by_status:
                by_status[outcome.status].append(_finish_params(job, outcome))
            else:
                apart.append((job, outcome))
        for job, outcome in apart:
            progress.owned += self.finish(job, outcome)
            progress.written.add(job.id)
        if not (deleted or any(by_status.values())):
            return progress.owned
        mine = t.c.status == RUNNING
        statements: list[tuple[Any, Any, list[str]]] = []
        for chunk in chunks(deleted):
            where = these_runs(self.table.c.id, self.table.c.attempt, chunk)
            statements.append((sa.delete(t).where(mine, where), None, [i for i, _ in chunk]))
        by_row = sa.and_(
            mine, t.c.id == sa.bindparam("b_id"), t.c.attempt == sa.bindparam("b_attempt")
        )
        common: dict[str, Any] = {
            "errors": sa.bindparam("b_errors"),
            "reason": sa.bindparam("b_reason"),
            "error": sa.bindparam("b_error"),
            "history": sa.bindparam("b_history"),
            "run_at": sa.bindparam("b_run_at"),
            "occurrence_at": sa.bindparam("b_occurrence_at"),
            "count": sa.bindparam("b_count"),
            "lease_until": None,
            "updated_at": now,
        }
        if by_status[SCHEDULED]:
            # A retry or the next occurrence: not started, still holding its id.
            stmt = sa.update(t).where(by_row).values(status=SCHEDULED, started_at=None, **common)
            statements.append(
                (stmt, by_status[SCHEDULED], [p["b_id"] for p in by_status[SCHEDULED]])
            )
        for ended in (FAILED, COMPLETED):  # a finished job releases its custom id
            if by_status[ended]:
                stmt = (
                    sa.update(t).where(by_row).values(status=ended, live_custom_id=None, **common)
                )
                statements.append((stmt, by_status[ended], [p["b_id"] for p in by_status[ended]]))
        sane = self.core.dialect.sane_multi_rowcount
        for stmt, params, ids in statements:
            with storage_errors("finish jobs"), self.core.one_statement() as c:
                if params is None:
                    owned = c.execute(stmt).rowcount
                else:
                    result = c.execute(stmt, params)
                    owned = result.rowcount if sane else len(params)
            progress.owned += owned
            progress.written.update(ids)
            if owned < len(ids):
                mine_now = set(ids)
                with storage_errors("finish jobs"), self.core.one_statement() as c:
                    self._let_go(c, [(j.id, j.attempt) for j, _ in runs if j.id in mine_now])
        return progress.owned

    def extend_leases(
        self, runs: Sequence[tuple[str, int]], lease: timedelta
    ) -> set[tuple[str, int]]:
        """Extend the leases of these running attempts, in one statement; return
        the (id, attempt) pairs that still owned their row."""
        t = self.table
        now = self.core.now()
        # A run whose job was replaced (override) while it ran keeps the
        # replaced row's lease alive until it ends: see _replace_live.
        replaced = sa.and_(t.c.status == SCHEDULED, t.c.lease_until.is_not(None))
        owned = sa.and_(
            sa.or_(t.c.status == RUNNING, replaced),
            these_runs(self.table.c.id, self.table.c.attempt, runs),
        )
        stmt = sa.update(t).where(owned).values(lease_until=now + lease)
        with storage_errors("extend leases"):
            if self.core.dialect.returning:
                with self.core.one_statement() as c:
                    return {(r[0], r[1]) for r in c.execute(stmt.returning(t.c.id, t.c.attempt))}
            with self.core.engine.begin() as c:
                c.execute(stmt)
                rows = c.execute(sa.select(t.c.id, t.c.attempt).where(owned))
                return {(r[0], r[1]) for r in rows}

    def release(self, job_id: str, attempt: int) -> bool:
        """Give back a claimed job whose dispatch failed, so the next produce retries it."""
        t = self.table
        now = self.core.now()
        with storage_errors("release a job"), self.core.one_statement() as c:
            result = c.execute(
                sa.update(t)
                .where(unstarted_run(self.table, job_id, attempt))
                .values(status=SCHEDULED, lease_until=None, updated_at=now)
            )
            released = result.rowcount == 1
        if released and self._stamps_starts():
            # A run that never started holds no place in a rate limit's window.
            s = self.starts
            with storage_errors("release a job"), self.core.one_statement() as c:
                c.execute(
                    sa.delete(s).where(
                        s.c.job_id == job_id, s.c.attempt == attempt, s.c.started_at.is_(None)
                    )
                )
        return released

    # -- per-queue settings: pause state and limits ---------------------------------

    def queue_settings(self) -> dict[str, dict[str, Any]]:
        """Every stored queue row, by name: paused, concurrency, rate."""
        q = self.queues
        with storage_errors("read queue settings"), self.core.engine.connect() as c:
            rows = c.execute(sa.select(q).order_by(q.c.name)).all()
        return {
            r.name: {
                "paused": bool(r.paused),
                "concurrency": r.concurrency,
                "rate": (r.rate_limit, timedelta(milliseconds=r.rate_window_ms))
                if r.rate_limit is not None and r.rate_window_ms is not None
                else None,
            }
            for r in rows
        }

    def set_paused(self, name: str, paused: bool) -> None:
        """Pause or resume queue ``name``; every claim in every process sees it."""
        self._write_queue(name, {"paused": paused}, action="pause a queue")

    def sync_limits(
        self,
        declared: dict[str, tuple[int | None, tuple[int, timedelta] | None]],
        *,
        prune: bool = False,
    ) -> int:
        """Store the limits the code declares, per queue it has a handler for:
        ``{name: (concurrency, (rate, window) or None)}``. A queue this release
        does not know is left alone (another release may); pause state and the
        rate log are never touched. A limit this release does not declare is
        cleared only with ``prune`` (``flask queue sync-crons``, at deploy).
        Writes only what differs; returns how many."""
        stored = self.queue_settings()
        changed = 0
        for name, (concurrency, rate) in declared.items():
            have = stored.get(name)
            want = {"concurrency": concurrency, "rate": rate}
            if concurrency is None and rate is None and (have is None or not prune):
                # Only the deploy-time sync clears a limit: during a rolling
                # deploy the release that still declares it would write it back
                # at its next produce, and between the two writes the queue
                # would run unlimited.
                continue
            if have is not None and {k: have[k] for k in want} == want:
                continue
            values = {
                "concurrency": concurrency,
                "rate_limit": rate[0] if rate else None,
                "rate_window_ms": int(rate[1].total_seconds() * 1000) if rate else None,
            }
            self._write_queue(name, values, action="store queue limits")
            changed += 1
        if changed:
            self._limited_recheck = 0.0  # look at the new limits at the next claim
        return changed

    def _write_queue(self, name: str, values: dict[str, Any], *, action: str) -> None:
        q = self.queues
        now = self.core.now()
        for attempt in range(2):
            try:
                with storage_errors(action), self.core.engine.begin() as c:
                    found = c.execute(sa.select(q.c.name).where(q.c.name == name)).first()
                    if found is not None:
                        c.execute(
                            sa.update(q).where(q.c.name == name).values(updated_at=now, **values)
                        )
                    else:
                        c.execute(sa.insert(q).values(name=name, updated_at=now, **values))
                return
            except StorageError as exc:
                # Two processes inserted the same queue's row at once: the
                # second time round the row is there and gets an UPDATE.
                if attempt or not isinstance(exc.__cause__, sa.exc.IntegrityError):
                    raise

    # -- waking idle workers (PostgreSQL) -------------------------------------------

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this job table (63 bytes at most, as
        PostgreSQL identifiers are)."""
        return f"flask_queue_{self.table.name}"[:63]

    def notify(self) -> None:
        """Tell idle workers that a job is due now (PostgreSQL; a no-op elsewhere,
        where workers poll). Called after the enqueue committed, so a worker
        woken by it finds the job."""
        if not self.core.dialect.notifies:
            return
        with storage_errors("notify workers"), self.core.one_statement() as c:
            c.execute(sa.select(sa.func.pg_notify(self.channel, "")))

    def listener(self) -> Listener | None:
        """A connection that LISTENs on this table's channel, for a worker to
        wait on between polls; None where the database or driver cannot."""
        if not self.core.dialect.notifies:
            return None
        with storage_errors("listen for new jobs"):
            raw = self.core.engine.raw_connection()
            conn = raw.driver_connection
            # Detached: the listening connection is the worker's for its whole
            # life, not a pool slot that other code could be handed mid-LISTEN.
            raw.detach()
            try:
                listener = Listener.open(conn, self.channel)
            except BaseException:
                raw.close()
                raise
        if listener is None:
            raw.close()
        return listener

    # -- encryption at rest ------------------------------------------------------

    def reseal_payloads(self, batch: int = 500) -> int:
        """Encrypt every payload not yet encrypted with the newest key (rows
        written in plain text before encryption, or with an older key); return
        how many were rewritten. Reads and writes ``batch`` rows at a time in
        primary-key order, each batch its own transaction, so it can run beside
        the app and be stopped and run again. A payload changed meanwhile (an
        ``override``) is left as it is: it was written with the newest key."""
        if self.core.cipher is None:
            raise ValueError("QUEUE_ENCRYPTION_KEYS is not set: there is no key to encrypt with")
        t = self.table
        rewritten = 0
        last = ""
        update = (
            sa.update(t)
            .where(t.c.id == sa.bindparam("b_id"), t.c.payload == sa.bindparam("b_old"))
            .values(payload=sa.bindparam("b_new"))
        )
        while True:
            with storage_errors("read payloads to re-encrypt"), self.core.engine.connect() as c:
                rows = c.execute(
                    sa.select(t.c.id, t.c.payload)
                    .where(t.c.id > last)
                    .order_by(t.c.id)
                    .limit(batch)
                ).all()
            if not rows:
                return rewritten
            last = rows[-1][0]
            changes = []
            for job_id, text in rows:
                new = self.core.cipher.resealed(text)
                if new is not None:
                    changes.append({"b_id": job_id, "b_old": text, "b_new": new})
            if changes:
                with storage_errors("re-encrypt payloads"), self.core.engine.begin() as c:
                    c.execute(update, changes)
                rewritten += len(changes)

    # -- run counts for the charts ---------------------------------------------

    def add_stats(self, rows: Sequence[tuple[datetime, str, int, int]]) -> None:
        """Add (minute, queue, succeeded, failed) counts to the stats table, in
        one upsert: the row of a minute that another process already wrote
        is added to, not replaced."""
        st = self.stats
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
        """(start, succeeded, failed) of every minute (or hour) from ``since``
        with runs, summed over queues, oldest first: a range of the stats
        table's key, whatever the job table holds. Hours are summed by the
        database: a day is 24 rows to read, not 1,440."""
        st = self.stats
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
        st = self.stats
        with storage_errors("prune run counts"), self.core.one_statement() as c:
            return c.execute(sa.delete(st).where(st.c.minute < naive_utc(before))).rowcount

    def purge_completed(self, older_than: datetime) -> int:
        t = self.table
        with storage_errors("purge completed jobs"), self.core.engine.begin() as c:
            result = c.execute(
                # A COMPLETED row's run_at is its finish time: an index range.
                sa.delete(t).where(t.c.status == COMPLETED, t.c.run_at < naive_utc(older_than))
            )
            return result.rowcount

    # -- declared crons -----------------------------------------------------------

    def sync_crons(
        self,
        declared: dict[str, tuple[str, str]],
        row_for: Callable[[str], Row],
        *,
        prune: bool,
    ) -> dict[str, int]:
        """Make the table hold one live row per declared cron.

        ``declared`` maps a cron's name to (expression, timezone); ``row_for(name)``
        builds the row to insert if it is missing (or whose run_at to take if it
        changed). The unique live custom id is the guard: two producers syncing
        at once both try the INSERT and one of them loses on the key, harmlessly.
        ``prune`` also deletes the rows of crons no longer declared: only
        ``flask queue sync-crons`` does that, at deploy, so a producer of an
        older release never deletes a newer release's crons mid-rollout.

        One cron that cannot be synced (a row the database refuses, a schedule
        this release cannot compute) is logged, counted as ``failed`` and
        skipped: the others, and the claim that follows, go on.
        """
        t = self.table
        stats = {"created": 0, "updated": 0, "removed": 0, "failed": 0}
        with storage_errors("read declared crons"), self.core.engine.connect() as c:
            rows = [
                (text_of(r.live_custom_id), r)
                for r in c.execute(
                    sa.select(t.c.id, t.c.live_custom_id, t.c.schedule, t.c.tz, t.c.status).where(
                        t.c.schedule_type == ScheduleType.CRON.value,
                        t.c.live_custom_id.is_not(None),
                    )
                )
            ]
            existing = {
                cid[len(CRON_ID_PREFIX) :]: r for cid, r in rows if cid.startswith(CRON_ID_PREFIX)
            }
        for name, (expr, tz) in declared.items():
            current = existing.get(name)
            try:
                if current is None:
                    try:
                        with self.core.engine.begin() as c:
                            c.execute(sa.insert(t).values(**self.core.sealed(row_for(name))))
                        stats["created"] += 1
                    except sa.exc.IntegrityError:
                        pass  # another producer created it first
                elif (current.schedule, current.tz) != (expr, tz) and current.status != RUNNING:
                    # A RUNNING occurrence is left alone: its finish plans the
                    # next time from the expression it holds, and the next sync
                    # after that moves the row to the new schedule's next time.
                    # (Writing the new expression on the running row lost the
                    # change: its finish planned from the old one, and no later
                    # sync saw a difference.)
                    values: dict[str, Any] = {"schedule": expr, "tz": tz}
                    values["run_at"] = values["occurrence_at"] = row_for(name)["run_at"]
                    with self.core.engine.begin() as c:
                        c.execute(
                            sa.update(t)
                            .where(t.c.id == current.id)
                            .values(updated_at=self.core.now(), **values)
                        )
                    stats["updated"] += 1
            except Exception:
                stats["failed"] += 1
                log.exception("flask_queue: could not sync declared cron %r; skipped", name)
        gone = [r.id for name, r in existing.items() if name not in declared]
        if prune and gone:
            with storage_errors("remove undeclared crons"), self.core.engine.begin() as c:
                stats["removed"] = c.execute(sa.delete(t).where(t.c.id.in_(gone))).rowcount
        return stats


__all__ = [
    "CANDIDATE_ROUNDS",
    "COMPLETED",
    "CRON_ID_PREFIX",
    "DEADLOCK_RETRIES",
    "ERROR_WIDTH",
    "FAILED",
    "FINISH_CHUNK",
    "INSERT_CHUNK",
    "LEASE_EXPIRED",
    "LEASE_EXPIRED_LINE",
    "LIMITS_RECHECK",
    "LIVE",
    "REASON_TAIL",
    "RUNNING",
    "SCHEDULED",
    "UNIQUE_ROUNDS",
    "UTC",
    "Claimed",
    "Finish",
    "JobStore",
    "Listener",
    "Progress",
    "Row",
    "_is_outage",
    "aware_utc",
    "naive_utc",
]
