"""The run path after the claim: start, finish (one run or a batch), mark
started, extend leases, release."""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..job import Job
from .core import (
    CANCELLED,
    COMPLETED,
    FAILED,
    RUNNING,
    SCHEDULED,
    StoreCore,
    chunks,
    naive_utc,
)
from .errors import storage_errors
from .predicates import (
    finish_guard,
    held_id,
    released_id,
    settled,
    unstarted_run,
)
from .ratelog import RateLog
from .schema import ERROR_WIDTH


def _storable(text: str | None) -> str | None:
    """A reason the database will take: no NUL (PostgreSQL refuses it in text),
    lone surrogates from a handler's exception message written as escapes."""
    if text is None:
        return None
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _storable_line(text: str | None) -> str | None:
    """An error line the ``error`` column will take: escaped first, then cut
    to its width (escaping makes a NUL four characters: a line cut before it
    could be four times too long, and then the whole outcome was refused)."""
    stored = _storable(text)
    return stored[:ERROR_WIDTH] if stored is not None else None


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
        "b_result": outcome.result,
    }


@dataclass(frozen=True)
class Finish:
    """What the runner decided after a run; the store applies it atomically."""

    status: str  # COMPLETED, SCHEDULED (retry or next occurrence), FAILED, CANCELLED, "DELETE"
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
    #: The handler's return value as JSON text (None: it returned None, or failed).
    result: str | None = None
    #: A retry that keeps the row's lease: a timed-out run whose thread goes on
    #: holds its place in a concurrency limit until it returns (``let_go``).
    keep_lease: bool = False
    #: A run that ended at a ``wait_for_event``: (occurrence, wait name). If an
    #: emit resolved that wait while the run was writing this outcome, the job
    #: is due now rather than at its deadline (see ``Runs.finish``).
    wake_if: tuple[int, str] | None = None

    @property
    def row_error(self) -> str | None:
        return self.error if self.reason is not None else None


@dataclass
class Progress:
    """What a ``finish_many`` call wrote before it failed: the ids it wrote and
    how many of them still owned their row."""

    written: set[str] = field(default_factory=set)
    owned: int = 0


class Runs:
    """Writes of a claimed run's life: its start, its outcome, its lease."""

    def __init__(self, core: StoreCore, rates: RateLog) -> None:
        self.core = core
        self.rates = rates

    def start(self, job_id: str, attempt: int, lease: timedelta) -> tuple[Job[Any] | None, str]:
        """UPDATE by primary key guarded by the attempt (... RETURNING, or a
        SELECT by primary key after it): mark a claimed run as started; exactly
        one caller per attempt wins. Stamps the run's start in the rate log.

        Returns (job, "ok"), or (None, "missing") for an unknown id, or
        (None, "stale") when the attempt is not the current, unstarted one — a
        replayed or late request — and the row is left as it was.
        """
        t = self.core.table
        now = self.core.now()
        returning = self.core.dialect.returning

        def build() -> Any:
            stmt = (
                sa.update(t)
                .where(unstarted_run(t, sa.bindparam("b_id"), sa.bindparam("b_attempt")))
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
        if self.rates.stamps_starts(row.queue):
            self.rates.stamp([(job_id, attempt)], now)
        job = self.core.readable(row)
        return (job, "ok") if job is not None else (None, "failed")

    def finish(self, job: Job[Any], outcome: Finish, *, unstarted: bool = False) -> bool:
        """UPDATE or DELETE by primary key guarded by the attempt (and the INSERT
        of a failed copy): apply a run's outcome if the run still owns the row;
        False if it does not.

        ``unstarted`` applies it only to a claimed attempt that nobody started:
        a delivery the invoke endpoint refused (a run that did start finishes
        itself; this must not overwrite it).
        """
        t = self.core.table
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
                    lambda: sa.delete(t).where(
                        finish_guard(t, unstarted), t.c.cancelled_at.is_(None)
                    ),
                )
                if c.execute(stmt, guard).rowcount == 1:
                    return True
                if self._settle_cancelled(c, [(job.id, job.attempt)]):
                    return True
                self._let_go(c, [(job.id, job.attempt)])
                return False
            if outcome.status == CANCELLED:
                # A delete of the running job asked for the row to go at its end.
                stmt = self.core.prebuilt(
                    ("finish-cancel-delete",),
                    lambda: sa.delete(t).where(
                        finish_guard(t, False), t.c.cancel_action == "DELETE"
                    ),
                )
                if c.execute(stmt, guard).rowcount == 1:
                    return True
            values: dict[str, Any] = {
                "status": outcome.status,
                "errors": outcome.errors,
                "updated_at": now,
                "reason": _storable(outcome.reason),
                "error": _storable_line(outcome.row_error),
                "result": outcome.result,
            }
            if not outcome.keep_lease:
                values["lease_until"] = None
            if outcome.history is not None:
                values["history"] = _history_json(outcome.history)
            if outcome.status == SCHEDULED:
                values["started_at"] = None  # the next run has not started
                values["progress"] = None  # nor reported any progress

            if outcome.run_at is not None:
                values["run_at"] = naive_utc(outcome.run_at)
            if outcome.occurrence_at is not None:
                values["occurrence_at"] = naive_utc(outcome.occurrence_at)
            if outcome.count is not None:
                values["count"] = outcome.count
            # One prebuilt UPDATE per set of columns an outcome writes (a handful).
            columns = tuple(values)
            ends = outcome.status != SCHEDULED  # a finished job releases its id
            stmt = self.core.prebuilt(
                ("finish-update", unstarted, columns, ends),
                lambda: (
                    sa.update(t)
                    .where(finish_guard(t, unstarted))
                    .values(
                        {
                            **{k: sa.bindparam(f"v_{k}") for k in columns},
                            # A cancel asked for since the run's last beat wins.
                            "status": settled(t, sa.bindparam("v_status")),
                            "live_custom_id": released_id(t, sa.bindparam("b_now"))
                            if ends
                            else held_id(t, sa.bindparam("b_now")),
                        }
                    )
                ),
            )
            params = {f"v_{k}": v for k, v in values.items()}
            params["b_now"] = now
            if c.execute(stmt, {**guard, **params}).rowcount != 1:
                self._let_go(c, [(job.id, job.attempt)])
                return False
            if outcome.wake_if is not None:
                self._wake_if_resolved(c, job.id, *outcome.wake_if)
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
                self.core.insert(c, [copy])
            return True

    def _wake_if_resolved(self, c: Connection, job_id: str, occurrence: int, name: str) -> None:
        """UPDATE by primary key: the job, just written SCHEDULED at its wait's
        deadline, is due now if an emit resolved the wait meanwhile.

        No wake-up is lost: an emit locks the job's row in the transaction
        that records the event (``Steps.resolve``). If it came first, the
        outcome's UPDATE waited for its commit and this one sees the record; if
        the outcome came first, the emit finds the job SCHEDULED and makes it
        due itself."""
        t, s = self.core.table, self.core.steps
        now = naive_utc(self.core.now())
        resolved = sa.exists().where(
            s.c.job_id == job_id, s.c.occurrence == occurrence, s.c.name == self.core.key(name)
        )
        c.execute(
            sa.update(t)
            .where(t.c.id == job_id, t.c.status == SCHEDULED, t.c.run_at > now, resolved)
            .values(run_at=now)
        )

    def _settle_cancelled(self, c: Connection, runs: list[tuple[str, int]]) -> int:
        """DELETE then UPDATE by primary key of these runs' rows, still RUNNING
        under their attempt, that a cancel was asked for since their last beat:
        the row goes (a delete of the running job) or ends CANCELLED. How many."""
        t = self.core.table
        now = self.core.now()
        asked = sa.and_(
            self.core.dialect.runs_among(t.c.id, t.c.attempt, runs),
            t.c.status == RUNNING,
            t.c.cancelled_at.is_not(None),
        )
        gone = c.execute(sa.delete(t).where(asked, t.c.cancel_action == "DELETE")).rowcount
        ended = c.execute(
            sa.update(t)
            .where(asked)
            .values(
                status=CANCELLED,
                reason="Cancelled while it ran; it ended before it saw the cancel.",
                error="Cancelled",
                lease_until=None,
                live_custom_id=released_id(t, now),
                updated_at=now,
            )
        ).rowcount
        return int(gone + ended)

    def let_go(self, runs: list[tuple[str, int]]) -> None:
        """``_let_go`` on a statement of its own: the run kept its retry's lease
        (``Finish.keep_lease``) and has ended now."""
        with storage_errors("let a lease go"), self.core.one_statement() as c:
            self._let_go(c, runs)

    def _let_go(self, c: Connection, runs: list[tuple[str, int]]) -> None:
        """UPDATE by primary key of these runs' rows if SCHEDULED and leased:
        runs that ended without owning their row; if their job was replaced
        while they ran (override), its new content may start now, not a lease
        later (see ``Inserts._replace_live``)."""
        t = self.core.table
        c.execute(
            sa.update(t)
            .where(
                t.c.status == SCHEDULED,
                t.c.lease_until.is_not(None),
                self.core.dialect.runs_among(t.c.id, t.c.attempt, runs),
            )
            .values(lease_until=None)
        )

    def mark_started(
        self, runs: Sequence[tuple[str, int]], *, deleted: Collection[tuple[str, int]] = ()
    ) -> None:
        """UPDATE by primary key per FINISH_CHUNK runs (and their stamps in the
        rate log): record that these claimed runs (id, attempt) began their
        handlers; from then on a death of their process counts as a failed
        attempt (see ``predicates.claim_values``). Only a run still RUNNING
        and unstarted is touched: an outcome written first stays as it is.
        Rows are locked in id order, and a deadlock with another writer of
        them (InnoDB picks a victim) is tried again: it is safe to repeat.

        ``deleted``: runs whose outcome, written next, deletes their row: only
        their rate-log stamps are written."""
        t = self.core.table
        now = self.core.now()
        marked = [run for run in runs if run not in deleted] if deleted else runs
        for chunk in chunks(sorted(marked)):
            stmt = (
                sa.update(t)
                .where(
                    self.core.dialect.runs_among(t.c.id, t.c.attempt, chunk),
                    t.c.status == RUNNING,
                    t.c.started_at.is_(None),
                )
                .values(started_at=now)
            )
            self.core.repeatable("mark runs started", stmt)
        if self.rates.stamps_starts():
            self.rates.stamp(runs, now)

    def finish_many(
        self, runs: Sequence[tuple[Job[Any], Finish]], progress: Progress | None = None
    ) -> int:
        """One DELETE by primary key, and one executemany UPDATE by primary key
        per kind of outcome: apply many runs' outcomes; return how many runs
        still owned their row.

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
        t = self.core.table
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
            elif (
                outcome.failed_copy_reason is None
                and outcome.wake_if is None
                and outcome.status in by_status
            ):
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
            where = self.core.dialect.runs_among(t.c.id, t.c.attempt, chunk)
            # A run cancelled since its last beat is not deleted: it ends
            # CANCELLED (``_settle_cancelled``, when the count comes up short).
            uncancelled = t.c.cancelled_at.is_(None)
            statements.append(
                (sa.delete(t).where(mine, uncancelled, where), None, [i for i, _ in chunk])
            )
        for kind in (SCHEDULED, FAILED, COMPLETED):
            if by_status[kind]:
                for params in by_status[kind]:
                    params["b_now"] = now
                stmt = self.core.prebuilt(
                    ("finish-many", kind), functools.partial(self._by_row, kind)
                )
                statements.append((stmt, by_status[kind], [p["b_id"] for p in by_status[kind]]))
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
                short = [(j.id, j.attempt) for j, _ in runs if j.id in mine_now]
                with storage_errors("finish jobs"), self.core.one_statement() as c:
                    if params is None:  # a DELETE: its count is exact on every database
                        progress.owned += self._settle_cancelled(c, short)
                    self._let_go(c, short)
        return progress.owned

    def extend_leases(
        self,
        runs: Sequence[tuple[str, int]],
        lease: timedelta,
        progress: dict[str, str] | None = None,
    ) -> dict[tuple[str, int], bool]:
        """UPDATE by primary key over these runs (... RETURNING, or a SELECT by
        primary key after it): extend the leases of these running attempts, and
        write the ``progress`` (job id -> JSON) they reported since the last
        beat; return the (id, attempt) pairs that still owned their row, each
        with whether a cancel was asked for (``cancelled_at``). One statement a
        beat, however many runs and however often their handlers report."""
        t = self.core.table
        now = self.core.now()
        # A run whose job was replaced (override) while it ran keeps the
        # replaced row's lease alive until it ends: see Inserts._replace_live.
        replaced = sa.and_(t.c.status == SCHEDULED, t.c.lease_until.is_not(None))
        owned = sa.and_(
            sa.or_(t.c.status == RUNNING, replaced),
            self.core.dialect.runs_among(t.c.id, t.c.attempt, runs),
        )
        values: dict[str, Any] = {"lease_until": now + lease}
        if progress:
            # Only a RUNNING row's progress: a replaced row's belongs to its new content.
            values["progress"] = sa.case(
                *((sa.and_(t.c.id == i, t.c.status == RUNNING), p) for i, p in progress.items()),
                else_=t.c.progress,
            )
        stmt = sa.update(t).where(owned).values(values)
        # Columns, not an expression of them: SQLite's RETURNING got a bound
        # parameter of one wrong (every run read as cancelled).
        back = (t.c.id, t.c.attempt, t.c.cancelled_at, t.c.status)
        with storage_errors("extend leases"):
            if self.core.dialect.returning:
                with self.core.one_statement() as c:
                    rows = list(c.execute(stmt.returning(*back)))
            else:
                with self.core.engine.begin() as c:
                    c.execute(stmt)
                    rows = list(c.execute(sa.select(*back).where(owned)))
        return {(r[0], r[1]): r[2] is not None and r[3] == RUNNING for r in rows}

    def _by_row(self, kind: str) -> Any:
        """``finish_many``'s executemany UPDATE of one kind of outcome, built once:
        every value a bound parameter of the row's (``_finish_params``)."""
        t = self.core.table
        now: Any = sa.bindparam("b_now")
        by_row = sa.and_(
            t.c.status == RUNNING,
            t.c.id == sa.bindparam("b_id"),
            t.c.attempt == sa.bindparam("b_attempt"),
        )
        values: dict[str, Any] = {
            "status": settled(t, kind),
            "errors": sa.bindparam("b_errors"),
            "reason": sa.bindparam("b_reason"),
            "error": sa.bindparam("b_error"),
            "history": sa.bindparam("b_history"),
            "run_at": sa.bindparam("b_run_at"),
            "occurrence_at": sa.bindparam("b_occurrence_at"),
            "count": sa.bindparam("b_count"),
            "result": sa.bindparam("b_result"),
            "lease_until": None,
            "updated_at": now,
        }
        if kind == SCHEDULED:
            # A retry or the next occurrence: not started, still holding its id.
            values.update(live_custom_id=held_id(t, now), started_at=None, progress=None)
        else:  # a finished job releases its custom id
            values["live_custom_id"] = released_id(t, now)
        return sa.update(t).where(by_row).values(values)

    def hand_back(self, runs: Sequence[tuple[str, int]]) -> int:
        """UPDATE by primary key per FINISH_CHUNK runs, guarded by the attempt and
        RUNNING: give back runs a stopping worker will not finish (SCHEDULED, due
        now, lease and start cleared, ``errors`` unchanged: no failure is
        counted), so another worker takes them now rather than a lease later.
        Their late outcomes then match no row (``finish_guard``). How many."""
        t = self.core.table
        now = self.core.now()
        handed = 0
        for chunk in chunks(sorted(runs)):
            stmt = (
                sa.update(t)
                .where(
                    self.core.dialect.runs_among(t.c.id, t.c.attempt, chunk),
                    t.c.status == RUNNING,
                )
                .values(
                    status=SCHEDULED,
                    run_at=now,
                    lease_until=None,
                    started_at=None,
                    progress=None,
                    updated_at=now,
                )
            )
            handed += self.core.repeatable("hand back runs", stmt)
        return handed

    def release(self, job_id: str, attempt: int) -> bool:
        """UPDATE by primary key guarded by the attempt (and a DELETE of its
        rate log entry): give back a claimed job whose dispatch failed, so the
        next produce retries it."""
        t = self.core.table
        now = self.core.now()
        with storage_errors("release a job"), self.core.one_statement() as c:
            result = c.execute(
                sa.update(t)
                .where(unstarted_run(t, job_id, attempt))
                .values(status=SCHEDULED, lease_until=None, updated_at=now)
            )
            released = result.rowcount == 1
        if released and self.rates.stamps_starts():
            # A run that never started holds no place in a rate limit's window.
            self.rates.forget(job_id, attempt)
        return released
