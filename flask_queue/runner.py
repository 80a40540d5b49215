"""Running one claimed job: start it, call its handler, apply the outcome.

Every executor ends here — ``inline`` and ``thread`` directly, ``http`` through the
invoke endpoint — so a job behaves the same whichever way it was delivered.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .durations import to_timedelta
from .job import Job, ScheduleType
from .scheduling import next_cron, next_every
from .store import COMPLETED, FAILED, SCHEDULED, Finish

if TYPE_CHECKING:
    from .extension import QueueState

log = logging.getLogger("flask_queue")


@dataclass(frozen=True)
class RunResult:
    """What happened to one delivery. ``outcome`` is one of: ``missing`` (no such
    job), ``stale`` (not the current attempt; nothing ran), ``completed``,
    ``rescheduled`` (a repeating job's next occurrence), ``retrying``, ``failed``,
    ``lost`` (the run finished but no longer owned the row: its lease had expired
    and another runner took over)."""

    outcome: str
    job_id: str
    attempt: int


def run_job(state: QueueState, job_id: str, attempt: int) -> RunResult:
    """Run attempt ``attempt`` of job ``job_id``, in a fresh app context.

    A fresh context gives the handler its own ``db.session`` (Flask-SQLAlchemy
    scopes sessions by app context), so a handler never shares the session of
    the code that enqueued or dispatched it.
    """
    with state.app.app_context():
        job, why = state.store.start(job_id, attempt, state.config.lease)
        if job is None:
            return RunResult(why, job_id, attempt)
        handler = state.queue.handlers.get(job.queue)
        if handler is None:
            reason = (
                f"No handler is registered for queue {job.queue!r} (the code changed"
                " since this job was enqueued). Register one and retry this job."
            )
            log.error("flask_queue: job %s: %s", job.id, reason)
            owned = state.store.finish(job, Finish(status=FAILED, reason=reason, errors=job.errors))
            return RunResult("failed" if owned else "lost", job.id, attempt)
        retry = handler.retry if handler.retry is not None else state.config.retry
        budget = len(job.retry) if job.retry is not None else len(retry)
        if job.errors > budget:
            # Only runs whose runner died get here (the claim counted them): the
            # retries are used up, so fail the job instead of running it again.
            reason = job.reason or "The run's process died."
            log.error("flask_queue: job %s (%s): %s Giving up.", job.id, job.queue, reason)
            earlier = dataclasses.replace(job, errors=job.errors - 1)
            outcome = after_failure(earlier, reason, retry, state.store.clock())
        else:
            try:
                handler.func(job)
            except Exception as exc:  # noqa: BLE001 - any handler error is the job's failure
                reason = "".join(traceback.format_exception(exc))
                log.warning("flask_queue: job %s (%s) failed: %r", job.id, job.queue, exc)
                outcome = after_failure(job, reason, retry, state.store.clock())
            else:
                outcome = after_success(job, state.config.keep_completed, state.store.clock())
        owned = state.store.finish(job, outcome)
        return RunResult(_describe(outcome) if owned else "lost", job.id, attempt)


def _describe(outcome: Finish) -> str:
    if outcome.status == FAILED:
        return "failed"
    if outcome.status == SCHEDULED:
        return "retrying" if outcome.errors else "rescheduled"
    return "completed"


def next_occurrence(job: Job[Any], now: datetime) -> datetime | None:
    """When a repeating job runs next, or None when it has made its ``times`` runs."""
    runs = job.count + 1
    if job.count_limit is not None and runs >= job.count_limit:
        return None
    assert job.schedule is not None
    if job.schedule_type is ScheduleType.CRON:
        return next_cron(job.schedule, job.tz or "UTC", max(now, job.run_at))
    interval = to_timedelta(job.schedule, name="every")
    return next_every(job.run_at, interval, now)


def _done(keep_completed: timedelta, count: int, now: datetime) -> Finish:
    if keep_completed:
        # A kept job's run_at becomes the time it finished: the completed list
        # reads newest first on (status, run_at), and the purge of expired history
        # is a range on the same index instead of a scan of every kept row.
        return Finish(status=COMPLETED, run_at=now, count=count)
    return Finish(status="DELETE")


def after_success(job: Job[Any], keep_completed: timedelta, now: datetime) -> Finish:
    if not job.is_repeating:
        return _done(keep_completed, job.count + 1, now)
    nxt = next_occurrence(job, now)
    if nxt is None:
        return _done(keep_completed, job.count + 1, now)
    return Finish(status=SCHEDULED, run_at=nxt, count=job.count + 1, errors=0)


def after_failure(
    job: Job[Any], reason: str, default_retry: list[timedelta], now: datetime
) -> Finish:
    errors = job.errors + 1
    delays = [timedelta(seconds=s) for s in job.retry] if job.retry is not None else default_retry
    if errors <= len(delays):
        return Finish(
            status=SCHEDULED, run_at=now + delays[errors - 1], reason=reason, errors=errors
        )
    if not job.is_repeating:
        return Finish(status=FAILED, reason=reason, errors=errors)
    # A repeating job's failed run is kept as a FAILED record of its own; the
    # schedule itself goes on to its next occurrence.
    nxt = next_occurrence(job, now)
    if nxt is None:
        return Finish(status=FAILED, reason=reason, count=job.count + 1, errors=errors)
    return Finish(
        status=SCHEDULED, run_at=nxt, count=job.count + 1, errors=0, failed_copy_reason=reason
    )
