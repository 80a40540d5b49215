"""The durable steps' records: read a job's in one SELECT, write one per step
(on our connection, or in the caller's session for a step whose writes must
commit with its record), and prune those whose job or occurrence is gone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from .core import COMPLETED, StoreCore, naive_utc
from .errors import storage_errors


@dataclass(frozen=True)
class StepRecord:
    """One completed step (or sleep) of a job's occurrence."""

    name: str
    kind: str  # "step" or "sleep"
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


class Steps:
    """Reads and writes of ``<table>_steps``."""

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
        """DELETE the records whose job is gone, or whose job has moved on to
        a later occurrence (a repeating job's next slot, a completed job run
        again): run with the purge of finished jobs."""
        s, t = self.core.steps, self.core.table
        # ``occurrence_of`` in SQL: a COMPLETED job keeps the records of the
        # run that completed it (the dashboard shows them) until its purge.
        done = sa.and_(t.c.status == COMPLETED, t.c.count - 1 == s.c.occurrence)
        current = sa.exists().where(t.c.id == s.c.job_id, sa.or_(t.c.count == s.c.occurrence, done))
        with storage_errors("prune the job steps"), self.core.engine.begin() as c:
            return int(c.execute(sa.delete(s).where(~current)).rowcount or 0)
