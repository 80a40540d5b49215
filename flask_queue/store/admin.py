"""Admin actions on stored jobs: delete, retry, run now, the bulk actions on
FAILED jobs, the purge of kept COMPLETED jobs, and re-encrypting payloads."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..errors import InvalidStatusError, JobNotFoundError, StorageError
from ..job import Job
from .core import (
    BLOCKED,
    CANCELLED,
    COMPLETED,
    FAILED,
    RUNNING,
    SCHEDULED,
    StoreCore,
    naive_utc,
    nameable,
    text_of,
)
from .errors import storage_errors
from .predicates import released_id
from .reads import Reads


class Admin:
    """What an operator (CLI, dashboard) does to stored jobs."""

    def __init__(self, core: StoreCore, reads: Reads) -> None:
        self.core = core
        self.reads = reads

    def delete(self, job_id: str) -> bool:
        """DELETE by primary key unless leased (then a SELECT by primary key, to
        say why): delete a job; False if there is none. A job whose run holds a live
        lease (RUNNING, or replaced while running) is refused: its row is the
        run's concurrency slot, and the handler goes on running whatever
        happens to the row. A run whose lease expired (dead) may go."""
        if not nameable(job_id):
            return False
        t = self.core.table
        now = self.core.now()
        unleased = sa.or_(t.c.lease_until.is_(None), t.c.lease_until <= now)
        with storage_errors("delete a job"), self.core.one_statement() as c:
            if c.execute(sa.delete(t).where(t.c.id == job_id, unleased)).rowcount > 0:
                return True
            asked = c.execute(
                sa.update(t)
                .where(t.c.id == job_id, t.c.status == RUNNING)
                .values(cancelled_at=now, cancel_action="DELETE", updated_at=now)
            )
            if asked.rowcount > 0:
                return True
            held = c.execute(sa.select(t.c.lease_until).where(t.c.id == job_id)).first()
        if held is None:
            return False
        raise InvalidStatusError(
            f"Cannot delete job {job_id!r}: it replaced a run that is still going (its"
            f" lease holds until {held[0]:%Y-%m-%d %H:%M:%S} UTC). Delete it once that"
            " run has ended."
        )

    def cancel(self, job_id: str) -> Job[Any]:
        """UPDATE by primary key of a live row, then SELECT by primary key, in one
        transaction: a SCHEDULED job becomes CANCELLED (it gives up its custom
        id, like a finished job); a RUNNING one is asked to stop (``cancelled_at``),
        which its run sees at its next heartbeat, in whatever process, and ends
        CANCELLED. A finished job is refused."""
        if not nameable(job_id):
            raise JobNotFoundError(f"No job with id {job_id!r}.")
        t = self.core.table
        now = self.core.now()
        with storage_errors("cancel a job"), self.core.engine.begin() as c:
            now_cancelled = c.execute(
                sa.update(t)
                .where(t.c.id == job_id, t.c.status.in_((SCHEDULED, BLOCKED)))
                .values(
                    status=CANCELLED,
                    cancelled_at=now,
                    live_custom_id=released_id(t, now),
                    reason=f"Cancelled at {now:%Y-%m-%d %H:%M:%S} UTC before it ran.",
                    error="Cancelled",
                    updated_at=now,
                )
            )
            c.execute(
                sa.update(t)
                .where(t.c.id == job_id, t.c.status == RUNNING, t.c.cancelled_at.is_(None))
                .values(cancelled_at=now, updated_at=now)
            )
            row = c.execute(sa.select(t).where(t.c.id == job_id)).first()
        if row is None:
            raise JobNotFoundError(f"No job with id {job_id!r}.")
        status = row._mapping["status"]
        if status != RUNNING and not now_cancelled.rowcount:
            raise InvalidStatusError(
                f"Cannot cancel job {job_id!r}: it is {status} (only SCHEDULED, BLOCKED and"
                " RUNNING jobs can be)."
            )
        return self.core.to_job(row)

    def retry(self, job_id: str) -> Job[Any]:
        """``_reschedule_now``: a FAILED job goes back to SCHEDULED, due now,
        with a fresh retry budget.

        It takes its custom id back (a live job holds its id): if a newer live
        job holds it already, the retry is refused, so no id, and no declared
        cron, ever has two live rows.
        """
        return self._reschedule_now(job_id, (FAILED, CANCELLED), "retry")

    def run_now(self, job_id: str) -> Job[Any]:
        """``_reschedule_now``: a SCHEDULED or FAILED job becomes due now."""
        return self._reschedule_now(job_id, (SCHEDULED, FAILED, CANCELLED), "run now")

    def retry_failed(self, queue: str | None = None) -> int:
        """UPDATE of the FAILED range on (status, run_at) or (queue, status,
        run_at), then ``_reschedule_now`` per custom id: every FAILED job (of
        ``queue``) back to SCHEDULED, due now; return how many.

        Jobs without a custom id go back in one statement; each one with a custom
        id takes it back on its own, and stays FAILED if a live job holds it.
        """
        t = self.core.table
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
        """DELETE the FAILED range on (status, run_at) or (queue, status, run_at):
        every FAILED job (of ``queue``)."""
        t = self.core.table
        stmt = sa.delete(t).where(t.c.status == FAILED)
        if queue is not None:
            stmt = stmt.where(t.c.queue == queue)
        with storage_errors("delete failed jobs"), self.core.engine.begin() as c:
            return c.execute(stmt).rowcount

    def _custom_id_of(self, job_id: str) -> Any:
        """SELECT by primary key: the custom id of ``job_id`` (as stored)."""
        t = self.core.table
        with storage_errors("read a job"), self.core.engine.connect() as c:
            return c.execute(sa.select(t.c.custom_id).where(t.c.id == job_id)).scalar()

    def _reschedule_now(self, job_id: str, allowed: tuple[str, ...], action: str) -> Job[Any]:
        """UPDATE by primary key, then SELECT by primary key, in one
        transaction: a job of an ``allowed`` status becomes SCHEDULED, due now,
        and takes its custom id back (the unique live_custom_id refuses it if
        another live job holds it)."""
        if not nameable(job_id):
            raise JobNotFoundError(f"No job with id {job_id!r}.")
        t = self.core.table
        now = self.core.now()
        stmt = (
            sa.update(t)
            .where(t.c.id == job_id, t.c.status.in_(allowed))
            .values(
                status=SCHEDULED,
                run_at=now,
                errors=0,
                # A SCHEDULED row's lease is a replaced run's, still going (see
                # Inserts._replace_live): the new content waits for it even when run now.
                lease_until=sa.case((t.c.status == SCHEDULED, t.c.lease_until), else_=None),
                updated_at=now,
                cancelled_at=None,
                cancel_action=None,
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
            holder = self.reads.get_by_custom_id(text_of(self._custom_id_of(job_id)))
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

    def purge_completed(self, older_than: datetime, results_until: datetime | None = None) -> int:
        """DELETE ranges of COMPLETED on (status, run_at) (a COMPLETED row's
        run_at is its finish time): every row finished before ``results_until``
        (kept for its result, ``QUEUE_KEEP_RESULTS``, at most that long), and
        rows without a result finished before ``older_than``
        (``QUEUE_KEEP_COMPLETED``): a bounded range between the two. A row
        kept for its ``unique_for`` window stays until the window closes."""
        t = self.core.table
        now = self.core.now()
        done = sa.and_(
            t.c.status == COMPLETED,
            sa.or_(t.c.unique_until.is_(None), t.c.unique_until <= now),
        )
        oldest = min(older_than, results_until) if results_until is not None else older_than
        with storage_errors("purge completed jobs"), self.core.engine.begin() as c:
            purged = c.execute(sa.delete(t).where(done, t.c.run_at < naive_utc(oldest))).rowcount
            # A delete of a running job whose run ended before it saw the
            # delete (an outcome written in a batch) left its row CANCELLED.
            purged += c.execute(
                sa.delete(t).where(t.c.status == CANCELLED, t.c.cancel_action == "DELETE")
            ).rowcount
            if results_until is not None and results_until < older_than:
                # Rows without a result between the two cut-offs (the caller
                # passes no ``results_until`` when QUEUE_KEEP_COMPLETED is 0:
                # such rows are then deleted at their success, and this range
                # would be every kept result).
                newer = sa.and_(
                    t.c.run_at >= naive_utc(oldest),
                    t.c.run_at < naive_utc(older_than),
                    t.c.result.is_(None),
                )
                purged += c.execute(sa.delete(t).where(done, newer)).rowcount
            return purged

    def reseal_payloads(self, batch: int = 500) -> int:
        """SELECT (id, payload) pages in primary-key order, then an executemany
        UPDATE by primary key per page: encrypt every payload not yet encrypted
        with the newest key (rows
        written in plain text before encryption, or with an older key); return
        how many were rewritten. Reads and writes ``batch`` rows at a time in
        primary-key order, each batch its own transaction, so it can run beside
        the app and be stopped and run again. A payload changed meanwhile (an
        ``override``) is left as it is: it was written with the newest key."""
        cipher = self.core.cipher
        if cipher is None:
            raise ValueError("QUEUE_ENCRYPTION_KEYS is not set: there is no key to encrypt with")
        t = self.core.table
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
                new = cipher.resealed(text)
                if new is not None:
                    changes.append({"b_id": job_id, "b_old": text, "b_new": new})
            if changes:
                with storage_errors("re-encrypt payloads"), self.core.engine.begin() as c:
                    c.execute(update, changes)
                rewritten += len(changes)
