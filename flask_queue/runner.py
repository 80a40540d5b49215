"""Running one claimed job: start it, call its handler, apply the outcome.

Every executor ends here — ``inline`` and ``thread`` directly, ``http`` through the
invoke endpoint — so a job behaves the same whichever way it was delivered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import history, signals, tracing
from .control import CANCEL, RunControl
from .errors import InvalidResultError, StorageError
from .job import Job, Progress
from .planning import encode_result
from .scheduling import Schedule
from .steps import RunSteps, Suspended
from .store import COMPLETED, FAILED, SCHEDULED, Finish
from .store.core import CANCELLED

if TYPE_CHECKING:
    from .config import QueueConfig
    from .finisher import Finisher
    from .metrics import Metrics
    from .state import QueueState

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
    """Start, run and finish attempt ``attempt`` of job ``job_id``, in a fresh
    app context: the invoke endpoint's path, where the start is a statement of
    its own (one replayed request must not run the job twice).

    A fresh context gives the handler its own ``db.session`` (Flask-SQLAlchemy
    scopes sessions by app context), so a handler never shares the session of
    the code that enqueued or dispatched it.

    Whatever happens after the start — the handler raising, or this release
    failing to work out the job's next time from its row — ends in a
    ``finish``: a started run is never left RUNNING by an exception here.
    """
    with state.app.app_context():
        job, why = state.store.start(job_id, attempt, state.config.lease)
        if job is None:
            return RunResult(why, job_id, attempt)
        state.heartbeat.add(job.id, job.attempt)
        try:
            outcome = _decided(state, job)
        except BaseException:
            state.heartbeat.discard(job.id, job.attempt)
            raise
        if outcome is None:
            return _timed_out(state, job)
        return _finish_now(state, job, outcome)


def run_claimed(state: QueueState, job: Job[Any], finisher: Finisher | None) -> RunResult:
    """Run a job that ``JobStore.claim_started`` claimed (the thread executor
    and the worker), in a fresh app context; its start and outcome go to
    ``finisher`` to be written with others', or are written now without one.

    The claim put the run in the heartbeat; it leaves once its outcome is
    written (by the finisher, or here).
    """
    with state.app.app_context():
        try:
            if finisher is not None:
                finisher.started(job)
            else:
                state.store.mark_started([(job.id, job.attempt)])
            outcome = _decided(state, job)
        except BaseException:
            state.heartbeat.discard(job.id, job.attempt)
            raise
        if outcome is None:
            return _timed_out(state, job)
        if finisher is not None:
            finisher.add(job, outcome)
            return RunResult(_describe(outcome), job.id, job.attempt)
        return _finish_now(state, job, outcome)


def _timed_out(state: QueueState, job: Job[Any]) -> RunResult:
    """A run whose timeout wrote its outcome: its late one is discarded, and the
    lease its retry kept is let go (the retry may start now)."""
    state.heartbeat.discard(job.id, job.attempt)
    state.store.let_go([(job.id, job.attempt)])
    return RunResult("timed out", job.id, job.attempt)


def _finish_now(state: QueueState, job: Job[Any], outcome: Finish) -> RunResult:
    """Write a run's outcome at once; the run leaves the heartbeat after."""
    try:
        state.heartbeat.finishing(job.id, job.attempt)
        owned = _finish(state, job, outcome)
    finally:
        state.heartbeat.discard(job.id, job.attempt)
    return RunResult(_describe(outcome) if owned else "lost", job.id, job.attempt)


def _decided(state: QueueState, job: Job[Any]) -> Finish | None:
    """``decide``, inside the run's span when tracing is on (tracing.py)."""
    if not state.config.tracing or not tracing.recording():
        return decide(state, job)
    with tracing.run_span(job) as span:
        outcome = decide(state, job)
        if outcome is None:
            tracing.finished(span, "timed out", None)
        else:
            tracing.finished(span, _describe(outcome), outcome.error)
        return outcome


def decide(state: QueueState, job: Job[Any]) -> Finish | None:
    """Run a started job's handler; return what the store must make of the row,
    or None when it is written already (the run timed out: see ``_control``)."""
    now = state.store.clock
    handler = state.queue.handlers.get(job.queue)
    if handler is None:
        return _no_handler(job, state.config.handler_grace, now())
    if job.cancelled_at is not None:
        # Cancelled after its claim, or re-claimed after its process died: never run.
        return _cancelled(job, now(), ran=False)
    # The job's own retry option wins, then the handler's, then QUEUE_RETRY.
    default = handler.retry if handler.retry is not None else state.config.retry
    control = _control(state, job, handler.timeout, default, handler.is_async)
    try:
        outcome, succeeded = _run(
            job, handler.run, default, state.config, now, control, state.app, state.metrics
        )
    except Exception as exc:  # noqa: BLE001 - a row this release cannot plan
        reason = (
            "flask_queue could not work out what comes after this run from the"
            f" job's stored schedule or retry policy: {exc!r}\n"
            + "".join(traceback.format_exception(exc))
        )
        log.error(
            "flask_queue: job %s (%s) failed: %s",
            job.id,
            history.clipped(job.queue, 60),
            history.clipped(reason, history.LOG_LINE - 120),
        )
        outcome = Finish(status=FAILED, reason=reason, errors=job.errors + 1)
        return _recorded(job, outcome, now(), None, history.FAILED, history.line(reason))
    if not control.take_outcome():
        return None  # timed out: that outcome is written; this late one is not
    if succeeded is not None:  # a sleep is neither
        state.tally.count(job.queue, succeeded, now())
    return outcome


def _control(
    state: QueueState,
    job: Job[Any],
    default_timeout: timedelta | None,
    retry: list[timedelta],
    is_async: bool,
) -> RunControl:
    """The run's control, attached to the job the handler gets and to the
    heartbeat; its ``on_timeout`` records the timed-out attempt at the deadline."""
    limit = job.timeout or default_timeout
    control = RunControl(job.id, job.attempt, limit.total_seconds() if limit else None)
    # Job is frozen; the control is not the job's data, and progress reports to it.
    # The steps are made at the handler's first step, sleep or wait (Job._steps):
    # most handlers have none, and a no-op run paid for them.
    job.__dict__.update(
        _control=control,
        _make_steps=functools.partial(
            RunSteps,
            state.store,
            job.id,
            job.count,
            job.attempt,
            state.store.clock,
            state.config.max_payload,
            control,
        ),
        progress=Progress(job.progress, control),
    )

    def on_timeout() -> None:
        # On a thread of its own (heartbeat.expire). The run stays in the beat:
        # a retry keeps the lease (``keep_lease``), which holds the run's place
        # in a concurrency limit and keeps the retry from starting beside it
        # until its thread returns (``_timed_out``) or a lease later.
        at = state.store.clock()
        state.heartbeat.finishing(job.id, job.attempt)
        if control.why == CANCEL:  # cancelled, and the handler never stopped
            _finish(state, job, _cancelled(job, at, ran=True))
            return
        reason = f"JobTimeoutError: the run passed its timeout of {control.timeout:g}s."
        failed = dataclasses.replace(after_failure(job, reason, retry, at), keep_lease=True)
        outcome = _recorded(job, failed, at, control.timeout, history.FAILED, reason)
        _log_failure(job, reason, outcome, len(_delays(job, retry)))
        if not is_async:
            log.warning(
                "flask_queue: job %s: its handler's thread stays busy until the handler"
                " returns (Python cannot stop a thread); call job.check() in long loops",
                job.id,
            )
        retrying = outcome.status == SCHEDULED and outcome.failed_copy_reason is None
        _told_failed(state.app, state.metrics, job, None, retrying)
        state.tally.count(job.queue, False, at)
        _finish(state, job, outcome)

    control.on_timeout = on_timeout
    state.heartbeat.attach(control)
    return control


def _cancelled(job: Job[Any], at: datetime, *, ran: bool) -> Finish:
    """A cancelled run's outcome: CANCELLED (or the row deleted, for a delete of a
    running job), never retried, however the handler ended."""
    if job.cancel_action == "DELETE":
        return Finish(status="DELETE")
    reason = f"Cancelled at {at:%Y-%m-%d %H:%M:%S} UTC" + (
        " while it ran." if ran else " before it ran."
    )
    outcome = Finish(status=CANCELLED, reason=reason, errors=job.errors)
    return _recorded(job, outcome, at, None, history.CANCELLED, "Cancelled")


def _recorded(
    job: Job[Any],
    outcome: Finish,
    at: datetime,
    seconds: float | None,
    result: str,
    error: str | None,
) -> Finish:
    """``outcome`` with this attempt added to the job's history, and its error
    line; a deleted job's as it is (its row, history and all, is gone)."""
    if outcome.status == "DELETE":
        return outcome
    entry = history.entry(job.attempt, at, seconds, result, error)
    return dataclasses.replace(outcome, error=error, history=history.appended(job.history, entry))


#: Backoff of a finish that the database refused: doubling from FINISH_RETRY_FIRST
#: up to FINISH_RETRY_CAP, for at most two leases in all.
FINISH_RETRY_FIRST = 0.05
FINISH_RETRY_CAP = 2.0


def _finish(state: QueueState, job: Job[Any], outcome: Finish) -> bool:
    """Record the outcome, retrying through a database outage.

    The handler already ran: giving up here would leave the row RUNNING until
    its lease expires and then run the handler again, a duplicate caused by a
    dropped connection rather than a crash. Retrying is safe because the
    finish only applies while this attempt still owns the row (the attempt
    guard); the heartbeat keeps the lease meanwhile, once the database answers.
    """
    delay = FINISH_RETRY_FIRST
    give_up = time.monotonic() + 2 * state.config.lease.total_seconds()
    while True:
        try:
            return state.store.finish(job, outcome)
        except StorageError as exc:
            if not exc.transient or time.monotonic() + delay > give_up:
                raise
            log.warning(
                "flask_queue: could not record the outcome of job %s (%s); retrying in %.2fs",
                job.id,
                exc,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, FINISH_RETRY_CAP)


#: How soon a job whose handler this release lacks is offered again.
NO_HANDLER_RECHECK = timedelta(seconds=30)


def _no_handler(job: Job[Any], grace: timedelta, now: datetime) -> Finish:
    """A job for a queue this release has no handler for.

    During a rolling deploy another release may have it: the job is left for
    that one (scheduled again shortly, no attempt used) for ``QUEUE_HANDLER_GRACE``
    from when it became due; after that the handler is taken to be gone, and the
    job fails with a reason that says so rather than wait forever.
    """
    # Counted from when the job first met a release without its handler: for a
    # one-off job occurrence_at is otherwise unused and records that moment.
    due_since = job.occurrence_at or job.run_at
    deadline = due_since + grace
    if now < deadline:
        reason = (
            f"No handler for queue {job.queue!r} in this release: left for a release that"
            f" has one until {deadline:%Y-%m-%d %H:%M:%S} UTC (QUEUE_HANDLER_GRACE)."
        )
        log.warning("flask_queue: job %s: %s", job.id, history.clipped(reason, history.LOG_LINE))
        outcome = Finish(
            status=SCHEDULED,
            run_at=min(now + NO_HANDLER_RECHECK, deadline),
            occurrence_at=due_since,
            reason=reason,
            errors=job.errors,
        )
        return _recorded(job, outcome, now, None, history.NO_HANDLER, history.line(reason))
    reason = (
        f"No handler is registered for queue {job.queue!r} (the code changed since this"
        " job was enqueued). Register one and retry this job."
    )
    log.error("flask_queue: job %s: %s", job.id, history.clipped(reason, history.LOG_LINE))
    outcome = Finish(status=FAILED, reason=reason, errors=job.errors)
    return _recorded(job, outcome, now, None, history.NO_HANDLER, history.line(reason))


def refuse_delivery(state: QueueState, job_id: str, attempt: int, reason: str) -> str:
    """Record that the invoke endpoint definitely refused attempt ``attempt``.

    A 4xx (bad signature, wrong prefix, CSRF, a proxy's 404) or a redirect means
    the request arrived and will never run: it costs an attempt like a handler
    error, so after the retries the job fails with a reason naming the status and
    the URL instead of being re-sent once per lease forever. Only an attempt
    nobody started is touched: a 409/404 that our own endpoint gave because the
    run started elsewhere, or the job is gone, changes nothing.
    """
    with state.app.app_context():
        job = state.store.get(job_id)
        if job is None or job.attempt != attempt or job.started_at is not None:
            return "ignored"
        handler = state.queue.handlers.get(job.queue)
        default = handler.retry if handler and handler.retry is not None else state.config.retry
        now = state.store.clock()
        outcome = after_failure(job, reason, default, now)
        outcome = _recorded(job, outcome, now, None, history.REFUSED, history.line(reason))
        if not state.store.finish(job, outcome, unstarted=True):
            return "ignored"  # started or finished meanwhile: nothing failed
        _log_failure(job, reason, outcome, len(_delays(job, default)))
        return _describe(outcome)


def _run(
    job: Job[Any],
    func: Callable[[Job[Any]], Any],
    default_retry: list[timedelta],
    config: QueueConfig,
    now: Callable[[], datetime],
    control: RunControl,
    app: Any,
    metrics: Metrics | None = None,
) -> tuple[Finish, bool | None]:
    """Run the handler: the outcome to write, and whether the run succeeded
    (None: it ended at a sleep). ``app`` is the signals' sender (the app whose
    context the run is in)."""
    delays = _delays(job, default_retry)
    if job.errors > len(delays):
        # Only runs whose runner died get here (the claim counted them): the
        # retries are used up, so fail the job instead of running it again.
        reason = job.reason or "The run's process died."
        earlier = dataclasses.replace(job, errors=job.errors - 1)
        at = now()
        outcome = after_failure(earlier, reason, default_retry, at)
        _log_failure(earlier, reason.strip().splitlines()[-1], outcome, len(delays))
        _told_failed(app, metrics, job, None, False)
        error = job.error or history.line(reason)
        return _recorded(job, outcome, at, None, history.FAILED, error), False
    signals.send(signals.job_started, app, job=job)
    if metrics is not None:
        metrics.run_started(job.queue)
    at = now()
    started = time.perf_counter()
    try:
        value = func(job)
        if control.why == CANCEL:
            return _cancelled(job, now(), ran=True), False
        result = encode_result(value, config.max_payload)
    except Suspended as pause:
        # Not a failure: the run ends at a sleep, the job waits SCHEDULED for
        # its wake time with its errors and steps as they are.
        if control.why == CANCEL:
            return _cancelled(job, now(), ran=True), False
        seconds = time.perf_counter() - started
        steps = job._steps("sleep")
        wake_if = (steps.occurrence, pause.name) if pause.waits else None
        outcome = Finish(status=SCHEDULED, run_at=pause.wake, errors=job.errors, wake_if=wake_if)
        entry = history.WAITING if pause.waits else history.SLEPT
        return _recorded(job, outcome, at, seconds, entry, None), None
    # CancelledError is a BaseException: an async handler's task cancelled (by
    # itself, or a library it awaits) ends the run as a failure, with an
    # outcome, instead of escaping the runner and leaving the job RUNNING.
    # KeyboardInterrupt and SystemExit stop the process: its runs are recovered
    # when their leases run out, as for any process that dies.
    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - the job's failure
        if control.why == CANCEL:
            return _cancelled(job, now(), ran=True), False
        seconds = time.perf_counter() - started
        if config.tracing:
            tracing.failed(exc)
        reason = "".join(traceback.format_exception(exc))
        if isinstance(exc, InvalidResultError) and not job.is_repeating:
            # The handler ran to its end: running it again would repeat its
            # work only to return the same value. Failed now, not retried.
            outcome = Finish(status=FAILED, reason=reason, errors=job.errors + 1)
        else:
            outcome = after_failure(job, reason, default_retry, now())
        _log_failure(job, repr(exc), outcome, len(delays))
        retrying = outcome.status == SCHEDULED and outcome.failed_copy_reason is None
        _told_failed(app, metrics, job, exc, retrying)
        error = history.error_line(exc)
        return _recorded(job, outcome, at, seconds, history.FAILED, error), False
    seconds = time.perf_counter() - started
    signals.send(signals.job_succeeded, app, job=job, duration=seconds)
    if metrics is not None:
        metrics.run_succeeded(job.queue, seconds)
    finished = now()
    outcome = after_success(job, _kept_for(job, config, finished, result), finished, result)
    return _recorded(job, outcome, at, seconds, history.SUCCEEDED, None), True


def _told_failed(
    app: Any, metrics: Metrics | None, job: Job[Any], error: BaseException | None, retrying: bool
) -> None:
    """A failed run, to the ``job_failed`` receivers and to the metrics."""
    signals.send(signals.job_failed, app, job=job, error=error, will_retry=retrying)
    if metrics is not None:
        metrics.run_failed(job.queue)


def _kept_for(
    job: Job[Any], config: QueueConfig, finished: datetime, result: str | None
) -> timedelta:
    """How long the COMPLETED row stays: ``QUEUE_KEEP_COMPLETED``, or longer
    for a result (``QUEUE_KEEP_RESULTS``) or a ``unique_for`` window still open
    (the finished job answers enqueues of its id until it ends)."""
    keep = config.keep_completed
    if result is not None:
        keep = max(keep, config.keep_results)
    if job.unique_until is not None and job.unique_until > finished:
        keep = max(keep, job.unique_until - finished)
    return keep


def _delays(job: Job[Any], default_retry: list[timedelta]) -> list[timedelta]:
    if job.retry is None:
        return default_retry
    return [timedelta(seconds=s) for s in job.retry]


def _log_failure(job: Job[Any], error: str, outcome: Finish, retries: int) -> None:
    if outcome.status == SCHEDULED and outcome.failed_copy_reason is None:
        then = f"retrying at {outcome.run_at:%Y-%m-%d %H:%M:%S} UTC"
    elif outcome.status == SCHEDULED:
        then = f"giving up on this run; next occurrence at {outcome.run_at:%Y-%m-%d %H:%M:%S} UTC"
    else:
        then = "giving up"
    head = (
        f"flask_queue: job {job.id} ({history.clipped(job.queue, 60)})"
        f" attempt {job.errors + 1} of {retries + 1} failed: "
    )
    tail = f"; {then}"
    # The error gets what the rest leaves of the line, and always some.
    room = max(history.LOG_LINE - len(head) - len(tail), 60)
    log.warning("%s%s%s", head, history.clipped(error, room), tail)


def _describe(outcome: Finish) -> str:
    if outcome.status == FAILED:
        return "failed"
    if outcome.status == CANCELLED:
        return "cancelled"
    if (
        outcome.status == SCHEDULED
        and outcome.history
        and outcome.history[-1]["outcome"] in (history.SLEPT, history.WAITING)
    ):
        return "sleeping" if outcome.history[-1]["outcome"] == history.SLEPT else "waiting"
    if outcome.status == SCHEDULED:
        return "retrying" if outcome.errors else "rescheduled"
    return "completed"


def next_occurrence(job: Job[Any], now: datetime) -> datetime | None:
    """When a repeating job runs next, or None when it has made its ``times`` runs.

    Counted from the slot this run belongs to (``occurrence_at``), not from
    ``run_at``, which a retry moved: an hourly job retried at 13:10 still runs
    next at 14:00.
    """
    runs = job.count + 1
    if job.count_limit is not None and runs >= job.count_limit:
        return None
    schedule = Schedule.of(job)
    if job.occurrence_at is not None and job.run_at < job.occurrence_at:
        # Run before its slot (run_now): an extra run, the slot stays. Told
        # from the row, not from this runner's clock, which may lag the
        # claimer's by a little and must not make a slot run twice.
        return job.occurrence_at
    return schedule.after(job.occurrence_at or job.run_at, now)


def _done(keep_completed: timedelta, count: int, now: datetime, result: str | None) -> Finish:
    if keep_completed:
        # A kept job's run_at becomes the time it finished: the completed list
        # reads newest first on (status, run_at), and the purge of expired history
        # is a range on the same index instead of a scan of every kept row.
        return Finish(status=COMPLETED, run_at=now, count=count, result=result)
    return Finish(status="DELETE")


def after_success(
    job: Job[Any], keep_completed: timedelta, now: datetime, result: str | None = None
) -> Finish:
    """``keep_completed``: how long the COMPLETED row stays (0: deleted now);
    the caller passes ``QUEUE_KEEP_RESULTS`` when the handler returned a value."""
    if not job.is_repeating:
        return _done(keep_completed, job.count + 1, now, result)
    nxt = next_occurrence(job, now)
    if nxt is None:
        return _done(keep_completed, job.count + 1, now, result)
    return _next_slot(job, nxt, result=result)


def _next_slot(job: Job[Any], nxt: datetime, **extra: Any) -> Finish:
    """A repeating job's run ended: SCHEDULED for its next slot, one more run counted."""
    return Finish(
        status=SCHEDULED, run_at=nxt, occurrence_at=nxt, count=job.count + 1, errors=0, **extra
    )


def after_failure(
    job: Job[Any], reason: str, default_retry: list[timedelta], now: datetime
) -> Finish:
    errors = job.errors + 1
    delays = _delays(job, default_retry)
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
    return _next_slot(job, nxt, failed_copy_reason=reason)
