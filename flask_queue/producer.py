"""One producer call: housekeeping, then claim due jobs in batches and hand them
to the executor. The cron ping, the in-process scheduler, ``/produce``,
``flask queue produce`` and the worker loops all come here."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .deliveries import Failed
from .errors import QueueError, StorageError
from .scheduling import ScheduleType, next_cron
from .state import Executor, QueueState
from .store import CRON_ID_PREFIX, SCHEDULED, Row

log = logging.getLogger("flask_queue")


@dataclass(frozen=True)
class ProduceResult:
    """What one producer call did. ``more`` is True when it stopped at its time
    budget or batch bound with due jobs possibly left for the next call.
    ``failed_deliveries`` of the claimed runs surely reached no handler (the
    ``http`` executor could not reach or was refused by the invoke endpoint);
    ``delivery_error`` says why, for the last of them."""

    claimed: int = 0
    purged: int = 0
    crons: dict[str, int] = field(default_factory=dict)
    more: bool = False
    seconds: float = 0.0
    failed_deliveries: int = 0
    delivery_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed,
            "failed_deliveries": self.failed_deliveries,
            "delivery_error": self.delivery_error,
            "purged": self.purged,
            "crons": self.crons,
            "more": self.more,
            "seconds": round(self.seconds, 4),
        }


# -- housekeeping: each a service of its own, called by produce ---------------------


def store_limits(state: QueueState, *, prune: bool = False) -> None:
    """Store the limits the handlers declare, where every process's claim reads
    them; ``prune`` also clears the limits of queues no longer declared."""
    state.store.sync_limits(state.queue.declared_limits(), prune=prune)
    state.store.before_claim = None


def sync_crons(state: QueueState, *, prune: bool = True) -> dict[str, int]:
    """Make the table hold exactly the crons declared with ``@queue.cron``.

    ``prune=False`` (what ``produce`` does) only creates and updates: during
    a rolling deploy two releases share the table, and neither may delete
    the other's crons. Run ``flask queue sync-crons`` at deploy to prune.
    """
    crons = state.queue.crons
    clock = state.queue.clock

    def row_for(name: str) -> Row:
        # Built only for a cron that is missing or changed, not on every produce.
        c = crons[name]
        return state.store.new_row(
            custom_id=CRON_ID_PREFIX + c.name,
            queue=c.name,
            payload="null",
            run_at=(first := next_cron(c.expr, c.tz, clock(), inclusive=True)),
            occurrence_at=first,
            status=SCHEDULED,
            schedule_type=ScheduleType.CRON.value,
            schedule=c.expr,
            tz=c.tz,
        )

    declared = {c.name: (c.expr, c.tz) for c in crons.values()}
    result = state.store.sync_crons(declared, row_for, prune=prune)
    if prune:
        # The deploy-time sync also clears the limits this release dropped.
        store_limits(state, prune=True)
    return result


def purge_history(state: QueueState) -> int:
    """Delete the completed jobs kept longer than ``QUEUE_KEEP_COMPLETED``, and
    those kept for their result longer than ``QUEUE_KEEP_RESULTS`` too; then
    the step records of jobs that are gone (or moved on to another run), and
    the events older than ``QUEUE_KEEP_EVENTS``."""
    now = state.queue.clock()
    keep, results = state.config.keep_completed, state.config.keep_results
    if not keep:
        # Only rows kept for a result (or a unique window) exist: one range.
        purged = state.store.purge_completed(now - results)
    else:
        purged = state.store.purge_completed(now - keep, results_until=now - max(keep, results))
    state.store.step_records.prune()
    state.store.events.prune(now - state.config.keep_events)
    state.store.deps.prune()
    return purged


def flush_stats(state: QueueState) -> None:
    """Write this process's run counts, and prune the chart rows past their time."""
    state.tally.flush_if_due()
    state.tally.prune_if_due(state.queue.clock())


def housekeep(state: QueueState) -> tuple[dict[str, int], int]:
    """Every housekeeping service once: (crons synced, completed jobs purged).

    It never stops the claim: a produce that cannot sync crons or purge history
    still runs every due job, so a failure is logged in one line and skipped."""
    crons: dict[str, int] = {}
    purged = 0
    try:
        store_limits(state)
        if state.queue.crons:
            crons = sync_crons(state, prune=False)
        purged = purge_history(state)
        # The jobs whose parents are done are due before this produce claims.
        state.store.deps.resolve()
        flush_stats(state)
    except QueueError as exc:
        # An outage is logged once by the loops that retry it (the claim fails
        # too): here it would repeat per retry.
        transient = isinstance(exc, StorageError) and exc.transient
        log.log(
            logging.DEBUG if transient else logging.WARNING,
            "flask_queue: produce housekeeping failed (%s); claiming anyway",
            exc,
        )
    return crons, purged


# -- the claim ------------------------------------------------------------------------


def produce(
    state: QueueState,
    *,
    executor: Executor | None = None,
    limit: int | None = None,
    housekeeping: bool = True,
) -> ProduceResult:
    """``Queue.produce`` for the app of ``state`` (see there): housekeeping,
    then claims of up to ``QUEUE_BATCH_SIZE`` handed to the executor."""
    config = state.config
    runner = executor or state.executor
    started = time.monotonic()
    budget = config.produce_budget.total_seconds()
    crons, purged = housekeep(state) if housekeeping else ({}, 0)
    claimed, more = 0, False
    handed: list[Any] = []  # what submit returned: outcomes, or their futures
    while runner.runs_jobs:
        left = budget - (time.monotonic() - started)
        if limit is not None and claimed >= limit:
            break
        room = min(config.batch_size, runner.capacity())
        if limit is not None:
            room = min(room, limit - claimed)
        if room <= 0:
            if runner.hands_off and left > 0:
                runner.wait_for_room(left)
                continue
            more = True
            break
        try:
            jobs = runner.claim(room)
        except StorageError as exc:
            if not claimed:
                raise
            # The jobs claimed so far are handed off and will run: report
            # them rather than lose the count in a raise. The next produce
            # meets the same error and reports it.
            log.warning("flask_queue: produce stopped claiming early (%s)", exc)
            more = True
            break
        _hand_off(state, runner, jobs, handed)
        claimed += len(jobs)
        if len(jobs) < room:
            break
        if time.monotonic() - started >= budget:
            more = True
            break
    runner.flush(budget - (time.monotonic() - started))
    failed = _failed_deliveries(handed)
    return ProduceResult(
        claimed=claimed,
        purged=purged,
        crons=crons,
        more=more,
        seconds=time.monotonic() - started,
        failed_deliveries=len(failed),
        delivery_error=failed[-1].error if failed else None,
    )


def _hand_off(state: QueueState, runner: Executor, jobs: list[Any], handed: list[Any]) -> None:
    for i, job in enumerate(jobs):
        try:
            handed.append(runner.submit(job))
        except BaseException:
            # The rest of the batch will not run here: out of the heartbeat, so
            # their leases run out and they are claimed again, instead of being
            # kept alive by this process forever.
            for rest in jobs[i:]:
                state.heartbeat.discard(rest.id, rest.attempt)
            raise


def _failed_deliveries(handed: list[Any]) -> list[Failed]:
    """The failures among what ``submit`` returned, as far as known by now: a
    send still waiting for its answer after the flush is not counted."""
    failed = []
    for outcome in handed:
        if isinstance(outcome, Future):
            if not outcome.done() or outcome.cancelled() or outcome.exception() is not None:
                continue
            outcome = outcome.result()
        if isinstance(outcome, Failed):
            failed.append(outcome)
    return failed
