"""The durable steps' records: read a job's in one SELECT, write one per step
(on our connection, or in the caller's session for a step whose writes must
commit with its record), and prune those whose job or occurrence is gone.
Also the waits in progress (``job.wait_for_event``): registered by the run,
resolved by an emit or by the run that finds its deadline passed, whichever
deletes the wait's row first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from .core import COMPLETED, RUNNING, SCHEDULED, StoreCore, naive_utc
from .errors import storage_errors


@dataclass(frozen=True)
class StepRecord:
    """One completed step (or sleep) of a job's occurrence."""

    name: str
    kind: str  # "step", "sleep" or "wait"
    #: JSON text of the step's result (None: it returned None); a sleep's wake time.
    result: str | None
    attempt: int
    finished_at: datetime
    duration_ms: int | None


def occurrence_of(status: str, count: int) -> int:
    """The occurrence a job's step records belong to: its ``count`` (runs
    completed), less the run that just completed it for a COMPLETED job."""
    return count - 1 if status == COMPLETED and count > 0 else count


class StepTaken(Exception):
    """Another run of the job recorded this step first (a run whose lease
    expired went on beside its retry): the stored record stands."""


@dataclass(frozen=True)
class WaitRow:
    """A wait in progress: a job's ``wait_for_event`` that no event has met yet."""

    job_id: str
    occurrence: int
    name: str
    event: str
    #: JSON text of the wait's ``match`` (None: any event of that name).
    match: str | None
    attempt: int
    deadline: datetime
    created_at: datetime


#: The longest duration a step record holds (an INTEGER column, in ms: 24 days).
MAX_DURATION_MS = 2**31 - 1


class Steps:
    """Reads and writes of ``<table>_steps`` and ``<table>_waits``."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def _name(self, value: Any) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def read(self, job_id: str, occurrence: int) -> dict[str, StepRecord]:
        """SELECT on the primary key's prefix: every record of one occurrence
        of a job, by name. A replay reads its steps once, not once per step."""
        s = self.core.steps
        with storage_errors("read the job's steps"), self.core.engine.connect() as c:
            rows = c.execute(
                sa.select(s).where(s.c.job_id == job_id, s.c.occurrence == occurrence)
            ).all()
        return {
            self._name(r.name): StepRecord(
                self._name(r.name),
                r.kind,
                r.result,
                r.attempt,
                r.finished_at.replace(tzinfo=timezone.utc),
                r.duration_ms,
            )
            for r in rows
        }

    def listed(self, job_id: str, occurrence: int) -> list[StepRecord]:
        """``read``, in the order the steps finished: the job page's list."""
        return sorted(self.read(job_id, occurrence).values(), key=lambda r: r.finished_at)

    def _row(self, job_id: str, occurrence: int, record: StepRecord) -> dict[str, Any]:
        return {
            "job_id": job_id,
            "occurrence": occurrence,
            "name": self.core.key(record.name),
            "kind": record.kind,
            "result": record.result,
            "attempt": record.attempt,
            "finished_at": naive_utc(record.finished_at),
            "duration_ms": record.duration_ms,
        }

    def record(
        self, job_id: str, occurrence: int, record: StepRecord, *, session: Any = None
    ) -> None:
        """INSERT one record: in its own transaction, or with ``session`` in
        the caller's (then committed with the caller's writes: a step that
        only writes to this database happens exactly once). A record of that
        name that another run wrote first raises ``StepTaken``, after the
        session (and the step's writes in it) was rolled back."""
        stmt = sa.insert(self.core.steps).values(self._row(job_id, occurrence, record))
        if session is not None:
            try:
                session.execute(stmt)
                session.commit()
            except sa.exc.IntegrityError:
                session.rollback()
                raise StepTaken() from None
            except BaseException:
                session.rollback()
                raise
            return
        with storage_errors("record the step"):
            try:
                with self.core.one_statement() as c:
                    c.execute(stmt)
            except sa.exc.IntegrityError:
                raise StepTaken() from None

    def prune(self) -> int:
        """DELETE the records (and waits) whose job is gone, or whose job has
        moved on to a later occurrence (a repeating job's next slot, a completed
        job run again): run with the purge of finished jobs."""
        t = self.core.table
        pruned = 0
        with storage_errors("prune the job steps"), self.core.engine.begin() as c:
            for s in (self.core.steps, self.core.waits):
                # ``occurrence_of`` in SQL: a COMPLETED job keeps the records of
                # the run that completed it (the dashboard shows them) until its purge.
                done = sa.and_(t.c.status == COMPLETED, t.c.count - 1 == s.c.occurrence)
                current = sa.exists().where(
                    t.c.id == s.c.job_id, sa.or_(t.c.count == s.c.occurrence, done)
                )
                pruned += int(c.execute(sa.delete(s).where(~current)).rowcount or 0)
        return pruned

    # -- waits ---------------------------------------------------------------------------

    def _wait_row(self, r: Any) -> WaitRow:
        return WaitRow(
            r.job_id,
            r.occurrence,
            self._name(r.name),
            self._name(r.event),
            r.match,
            r.attempt,
            r.deadline.replace(tzinfo=timezone.utc),
            r.created_at.replace(tzinfo=timezone.utc),
        )

    def wait(self, wait: WaitRow, probe: str | None) -> datetime | None:
        """INSERT the wait, unless the job waits there already (a replay before
        its deadline, or the run that finds it passed): the deadline that holds.
        None: the wait is resolved (an emit recorded its event since the run
        read its records), so the run reads its records again."""
        w = self.core.waits
        row = {
            "job_id": wait.job_id,
            "occurrence": wait.occurrence,
            "name": self.core.key(wait.name),
            "event": self.core.key(wait.event),
            "probe": probe,
            "match": wait.match,
            "attempt": wait.attempt,
            "deadline": naive_utc(wait.deadline),
            "created_at": naive_utc(wait.created_at),
        }
        with storage_errors("register the wait"):
            try:
                with self.core.one_statement() as c:
                    c.execute(sa.insert(w).values(row))
            except sa.exc.IntegrityError:
                pass
            else:
                if not self._recorded(wait):
                    return wait.deadline
                # An emit met this wait between the run's read and this
                # INSERT (it deleted the row this one replaced): the row
                # would wait forever, and the next emit meet it twice.
                with self.core.one_statement() as c:
                    c.execute(sa.delete(w).where(*self._this_wait(wait)))
                return None
            with self.core.engine.connect() as c:
                deadline = c.execute(sa.select(w.c.deadline).where(*self._this_wait(wait))).scalar()
        # Gone meanwhile: an emit resolved it (its record says how) or the
        # purge took it; either way the deadline has no more say.
        return None if deadline is None else deadline.replace(tzinfo=timezone.utc)

    def _recorded(self, wait: WaitRow, conn: Any = None) -> bool:
        """Whether the wait has its record (an emit or the timeout resolved it)."""
        s = self.core.steps
        stmt = sa.select(s.c.kind).where(
            s.c.job_id == wait.job_id,
            s.c.occurrence == wait.occurrence,
            s.c.name == self.core.key(wait.name),
        )
        if conn is not None:
            return conn.execute(stmt).first() is not None
        with self.core.engine.connect() as c:
            return c.execute(stmt).first() is not None

    def _this_wait(self, wait: WaitRow) -> tuple[sa.ColumnElement[bool], ...]:
        w = self.core.waits
        return (
            w.c.job_id == wait.job_id,
            w.c.occurrence == wait.occurrence,
            w.c.name == self.core.key(wait.name),
        )

    def waiting(self, event: str, probes: list[str] | None, conn: Any) -> list[WaitRow]:
        """SELECT on ``(event, probe)``: the waits for ``event`` that may match
        data with these probes (None: every wait for the event)."""
        w = self.core.waits
        where = [w.c.event == self.core.key(event)]
        if probes is not None:
            where.append(sa.or_(w.c.probe.is_(None), w.c.probe.in_(probes)))
        # A locking read: in the caller's REPEATABLE READ transaction (session=)
        # a plain one reads its snapshot and misses the waits begun since.
        # Exclusive, not shared: two emits that shared a wait's lock would
        # both wait for the other's to DELETE it (a deadlock); so they queue,
        # in one order (job id; on InnoDB the index's).
        stmt = sa.select(w).where(*where).order_by(w.c.job_id).with_for_update()
        rows = conn.execute(stmt).all()
        return [self._wait_row(r) for r in rows]

    def current_wait(self, job_id: str, occurrence: int) -> WaitRow | None:
        """The wait a job's occurrence is at, if any (the job page)."""
        w = self.core.waits
        with storage_errors("read the job's wait"), self.core.engine.connect() as c:
            row = c.execute(
                sa.select(w).where(w.c.job_id == job_id, w.c.occurrence == occurrence).limit(1)
            ).first()
        return None if row is None else self._wait_row(row)

    def resolve(self, wait: WaitRow, result: str, conn: Any) -> bool:
        """In the emit's transaction: DELETE the wait; lock its job's row
        (until the emit commits, so the run that registered the wait cannot
        write its outcome in between unseen: see ``Runs._wake_if_resolved``);
        make the job due now if it is SCHEDULED; INSERT the wait's record with
        the event as its result. False, with nothing recorded, if the wait was
        resolved already, or its job is no longer waiting at that occurrence
        (cancelled, deleted, finished: the stale row is deleted)."""
        t = self.core.table
        now = naive_utc(self.core.now())
        # The wait's row first: a wait another emit resolved (or is resolving)
        # costs no lock on its job, whose claim (SKIP LOCKED) would pass it by.
        if conn.execute(sa.delete(self.core.waits).where(*self._this_wait(wait))).rowcount != 1:
            return False
        job = conn.execute(
            sa.select(t.c.status, t.c.count).where(t.c.id == wait.job_id).with_for_update()
        ).first()
        if job is None or job.status not in (SCHEDULED, RUNNING) or job.count != wait.occurrence:
            return False  # a wait left by a cancelled, deleted or finished job: gone now
        if self._recorded(wait, conn):
            return False  # resolved already (its run registered it again)
        if job.status == SCHEDULED:
            conn.execute(sa.update(t).where(t.c.id == wait.job_id).values(run_at=now))
        record = StepRecord(
            wait.name, "wait", result, wait.attempt, self.core.clock(), self._waited(wait)
        )
        conn.execute(
            sa.insert(self.core.steps).values(self._row(wait.job_id, wait.occurrence, record))
        )
        return True

    def _waited(self, wait: WaitRow) -> int:
        ms = (self.core.now() - naive_utc(wait.created_at)).total_seconds() * 1000
        return max(0, min(round(ms), MAX_DURATION_MS))

    def time_out(self, wait: WaitRow, attempt: int) -> bool:
        """The run that found the wait's deadline passed: DELETE the wait and
        INSERT its record (no event) in one transaction; False if an emit
        resolved it first (its record holds the event)."""
        record = StepRecord(wait.name, "wait", None, attempt, self.core.clock(), self._waited(wait))
        with storage_errors("time out the wait"), self.core.engine.begin() as c:
            if c.execute(sa.delete(self.core.waits).where(*self._this_wait(wait))).rowcount != 1:
                return False
            c.execute(
                sa.insert(self.core.steps).values(self._row(wait.job_id, wait.occurrence, record))
            )
        return True
