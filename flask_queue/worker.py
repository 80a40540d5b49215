"""Long-lived loops: ``flask queue produce --loop`` and ``flask queue work``."""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import InvalidOptionError, StorageError
from .executors import ThreadExecutor
from .history import LOG_LINE, clipped
from .producer import ProduceResult, produce
from .state import QueueState, current_state

if TYPE_CHECKING:
    from .registry import Registry
    from .store import JobStore, Listener

log = logging.getLogger("flask_queue")

#: Seconds to wait after the first failed produce of an outage; doubled after
#: each failure in a row, up to ``MAX_BACKOFF``.
BACKOFF = 0.5
#: The longest wait between retries while the database stays away: bounds how
#: late a loop notices that it is back.
MAX_BACKOFF = 30.0
#: Seconds a worker waits for its own NOTIFY to reach its LISTEN (QUEUE_LISTEN="auto").
LISTEN_CHECK = 2.0
#: Seconds a stopping worker lets its runs finish (``flask queue work --grace``).
GRACE = 30.0


def _stop_on_signals(stop: threading.Event, force: threading.Event | None = None) -> None:
    """SIGTERM/SIGINT set ``stop``; a second one sets ``force``."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(*_: Any) -> None:
        if stop.is_set() and force is not None:
            force.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)


def _check_interval(interval: float) -> None:
    # Zero or less would wait for nothing between idle polls: a loop spinning on
    # the database hundreds of times a second. (Infinity would not wait at all:
    # Event.wait refuses it.)
    if not (interval > 0 and math.isfinite(interval)):
        raise InvalidOptionError(
            f"interval must be a finite number of seconds more than 0, got {interval!r}."
        )


def _check_backoff(backoff: float, max_backoff: float) -> None:
    if not (backoff > 0 and math.isfinite(max_backoff) and max_backoff >= backoff):
        raise InvalidOptionError(
            "backoff must be more than 0 and max_backoff a finite number at least as"
            f" large, got backoff={backoff!r}, max_backoff={max_backoff!r}."
        )


class _Outage:
    """Failed produces in a row: how long to back off, and the log lines.

    A database that is away fails every produce until it is back. One WARNING
    when that starts and one INFO when it ends say all there is to say; a line
    per retry would bury them.
    """

    def __init__(self, backoff: float, max_backoff: float) -> None:
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.failures = 0
        self.since = 0.0

    def failed(self, exc: StorageError) -> float:
        """Note a failed produce; return the seconds to wait before the next."""
        self.failures += 1
        if self.failures == 1:
            self.since = time.monotonic()
            if exc.transient:
                log.warning(
                    "flask_queue: produce failed, is the database down? (%s: %s);"
                    " retrying with backoff up to %gs",
                    type(exc).__name__,
                    clipped(str(exc), LOG_LINE - 120),
                    self.max_backoff,
                )
            else:
                # The database answers and says no (a table not migrated, a
                # pooler that lost a prepared statement): waiting alone will
                # not mend it, but a deploy (a migration) may, so the loop
                # goes on and says once what to do.
                log.warning(
                    "flask_queue: produce failed (%s: %s); retrying with backoff up to %gs%s",
                    type(exc).__name__,
                    clipped(str(exc), LOG_LINE - 160),
                    self.max_backoff,
                    pooler_hint(exc),
                )
        else:
            log.debug("flask_queue: produce failed again (%d in a row): %s", self.failures, exc)
        # The exponent is capped so that a days-long outage cannot overflow the float.
        delay = min(self.max_backoff, self.backoff * 2.0 ** min(self.failures - 1, 64))
        # Up to 20% less: workers cut off together by one outage must not all
        # reconnect in the same instant when it ends.
        return delay * random.uniform(0.8, 1.0)

    def produce(
        self, state: QueueState, stop: threading.Event, **options: Any
    ) -> ProduceResult | None:
        """``produce(state, **options)``, or None after waiting out a database
        error (an outage, or one a deploy must mend: the loop never exits on
        one); any other error (a bug) ends the loop."""
        try:
            result = produce(state, **options)
        except StorageError as exc:
            stop.wait(self.failed(exc))
            return None
        self.succeeded()
        return result

    def succeeded(self) -> None:
        if self.failures:
            log.info(
                "flask_queue: database back: produce succeeded after %d failed"
                " attempt(s) over %.1fs",
                self.failures,
                time.monotonic() - self.since,
            )
            self.failures = 0


#: What a transaction pooler's lost prepared statements look like (psycopg 3).
POOLER_SIGNS = ("prepared statement", "DuplicatePreparedStatement", "InvalidSqlStatementName")


def pooler_hint(exc: StorageError) -> str:
    """The fix, when ``exc`` is a transaction pooler's: flask_queue turns
    psycopg's preparing off unless the app set ``prepare_threshold`` itself."""
    if not any(sign in str(exc) for sign in POOLER_SIGNS):
        return ""
    return (
        "; this is a transaction pooler (PgBouncer, a pooled Supabase or Neon URL) losing"
        " psycopg's prepared statements: remove prepare_threshold from connect_args, or"
        " set it to None"
    )


def produce_loop(
    queue: Registry,
    interval: float,
    *,
    stop: threading.Event | None = None,
    report: Callable[[str], None] = print,
    backoff: float = BACKOFF,
    max_backoff: float = MAX_BACKOFF,
) -> None:
    """Call ``produce`` every ``interval`` seconds (sooner while work is left).

    A produce that fails because the database is away (down, restarting,
    unreachable, out of connections) is retried after ``backoff`` seconds,
    doubling up to ``max_backoff`` while the failures go on; WARNING is logged
    once when that starts and INFO when a produce succeeds again. So is any
    other database error (a table not migrated yet, a pooler's): it says once
    what to do, and a deploy that mends it is picked up. Any other error (a
    bug) ends the loop.
    """
    _check_interval(interval)
    _check_backoff(backoff, max_backoff)
    if stop is None:  # the CLI: SIGTERM/SIGINT stop the loop
        stop = threading.Event()
        _stop_on_signals(stop)
    state = current_state(queue)
    outage = _Outage(backoff, max_backoff)
    while not stop.is_set():
        result = outage.produce(state, stop)
        if result is None:
            continue
        if result.failed_deliveries:
            report(
                f"claimed {result.claimed} job(s), {result.failed_deliveries} could not be"
                f" delivered: {result.delivery_error}"
            )
        elif result.claimed:
            report(f"claimed {result.claimed} job(s)")
        stop.wait(0 if result.more else interval)


def work(
    queue: Registry,
    *,
    concurrency: int,
    interval: float,
    stop: threading.Event | None = None,
    max_jobs: int | None = None,
    report: Callable[[str], None] = print,
    backoff: float = BACKOFF,
    max_backoff: float = MAX_BACKOFF,
    grace: float = GRACE,
    force: threading.Event | None = None,
) -> int:
    """Claim and run jobs on ``concurrency`` threads until stopped; return jobs run.

    The worker runs jobs itself whatever ``QUEUE_EXECUTOR`` says: it is the
    process that exists to run them. The first SIGTERM/SIGINT (``stop``) stops
    claiming, says so in one line, and lets running handlers finish for up to
    ``grace`` seconds; the second signal (``force``), or the grace's end, stops
    at once: the unfinished runs are handed back (SCHEDULED, due now, the
    attempt not counted as a failure) for another worker to take now, not a
    lease later. ``report`` gets one line on start (what it serves, and how)
    and one on stop. While the database is away it retries with backoff, as
    :func:`produce_loop` does; runs already started finish or fail on their
    own threads.
    """
    _check_interval(interval)
    _check_backoff(backoff, max_backoff)
    if not (math.isfinite(grace) and grace >= 0):
        raise InvalidOptionError(f"grace must be a finite number of seconds >= 0, got {grace!r}.")
    state = current_state(queue)
    report(_started_line(queue, state.store.dialect, concurrency, interval, max_jobs))
    force = force or threading.Event()
    if stop is None:  # the CLI: SIGTERM/SIGINT stop the worker, a second one at once
        stop = threading.Event()
        _stop_on_signals(stop, force)
    executor = ThreadExecutor(state, workers=concurrency)
    outage = _Outage(backoff, max_backoff)
    idle = _Idle(state.store, stop, interval, state.config.listen, state.config.listen_url)
    total = 0
    housekept = -math.inf
    try:
        while not stop.is_set():
            left = None if max_jobs is None else max_jobs - total
            if left is not None and left <= 0:
                break
            if executor.capacity() <= 0:
                # Every thread is busy: claim again as soon as one run ends, not
                # after a whole idle interval (that was 8 jobs/s with defaults).
                executor.wait_for_room(interval)
                continue
            # Cron sync and history purge once per idle interval, not before
            # every claim: a draining worker claims dozens of times a second.
            housekeeping = time.monotonic() - housekept >= max(interval, HOUSEKEEPING_EVERY)
            # produce claims in batches sized to the pool: without the limit,
            # --max-jobs 1 would claim (and run) a whole batch.
            result = outage.produce(
                state, stop, executor=executor, limit=left, housekeeping=housekeeping
            )
            if result is None:
                continue
            if housekeeping:
                housekept = time.monotonic()
            total += result.claimed
            if not result.claimed:
                busy = executor.inflight()
                if state.store.has_limits and (busy or state.finisher.pending()):
                    # Nothing claimed while this worker's own runs go on or
                    # their outcomes wait to be written: a limit may hold
                    # their queue's jobs back on them. Claim again once one
                    # ends and is written, not after a whole idle interval
                    # (that drained a concurrency=2 queue at 2 jobs/s). Only
                    # with limited queues: otherwise an idle worker waits on
                    # NOTIFY, which a run in flight must not delay.
                    if busy:
                        executor.wait_for_a_run(busy, interval)
                    state.finisher.flush()
                    continue
                idle.wait()  # nothing due: the only time the worker idles
        if stop.is_set():
            _wind_down(state, executor, grace, force, report)
    finally:
        idle.close()
        executor.shutdown(wait=not force.is_set(), cancel=force.is_set())
        state.tally.flush()
    report(f"worker stopped after {total} job(s)")
    return total


def _wind_down(
    state: QueueState,
    executor: ThreadExecutor,
    grace: float,
    force: threading.Event,
    report: Callable[[str], None],
) -> None:
    """Let the runs in progress finish for up to ``grace`` seconds (or until
    ``force``), then hand the unfinished ones back and stop waiting for them."""
    running = executor.inflight()
    if not running:
        return  # the "worker stopped" line follows at once
    report(f"stopping: {running} run(s) in progress, up to --grace {grace:g}s")
    give_up = time.monotonic() + grace
    while executor.inflight() and not force.is_set() and time.monotonic() < give_up:
        force.wait(min(0.05, max(give_up - time.monotonic(), 0)))
    if not executor.inflight():
        return
    force.set()  # shutdown no longer waits for the stuck threads
    runs = state.heartbeat.running()
    for job_id, attempt in runs:
        # Out of the beat first: a handed-back run's lease is not kept alive.
        state.heartbeat.discard(job_id, attempt)
    handed = state.store.hand_back(runs)
    report(
        f"stopped at once: {handed} unfinished run(s) handed back, due now;"
        " their late outcomes are discarded"
    )


#: Seconds between a worker's cron syncs and history purges, at least.
HOUSEKEEPING_EVERY = 1.0


class _Idle:
    """How an idle worker waits for the next due job.

    On PostgreSQL it LISTENs on the job table's channel, so a job enqueued as
    due (``QUEUE_EXECUTOR="worker"`` sends the NOTIFY) starts within
    milliseconds instead of at the next poll; the poll every ``interval`` still
    finds retries and delayed jobs, which nobody announces. Elsewhere, or while
    the listening connection is down, it just sleeps ``interval``.
    """

    def __init__(
        self,
        store: JobStore,
        stop: threading.Event,
        interval: float,
        listen: bool | str = "auto",
        listen_url: str | None = None,
    ) -> None:
        self.store = store
        self.stop = stop
        self.interval = interval
        self.listener: Listener | None = None
        self._retry_at = 0.0
        #: QUEUE_LISTEN: "auto" checks once that a NOTIFY arrives (see ``_heard``).
        self.listen = listen
        self.listen_url = listen_url

    def wait(self) -> None:
        listener = self._listener()
        if listener is None:
            self.stop.wait(self.interval)
            return
        try:
            listener.wait(self.interval)
        except StorageError as exc:
            log.info("flask_queue: stopped listening for new jobs (%s); polling", exc)
            self.close()
            self._retry_at = time.monotonic() + MAX_BACKOFF

    def _listener(self) -> Listener | None:
        if self.listen is False:
            return None
        if self.listener is not None or time.monotonic() < self._retry_at:
            return self.listener
        if self.store.dialect != "postgresql":
            return None
        try:
            self.listener = self.store.listener(self.listen_url)
            if self.listener is not None and self.listen == "auto":
                self._heard(self.listener)
        except StorageError as exc:
            log.info("flask_queue: cannot listen for new jobs (%s); polling", exc)
            self.close()
            self._retry_at = time.monotonic() + MAX_BACKOFF
        return self.listener

    def _heard(self, listener: Listener) -> None:
        """Once: a NOTIFY of our own must reach the LISTEN. Through a
        transaction pooler it never does (nothing fails, every wait would just
        end at the poll), so the worker says so and polls."""
        self.listen = True  # checked once per worker
        if self.store.notifier.hears(listener, LISTEN_CHECK):
            return
        log.warning(
            "flask_queue: LISTEN hears no NOTIFY on this connection (a transaction pooler,"
            " such as PgBouncer or a pooled Supabase/Neon URL?): polling every %gs instead;"
            " set QUEUE_LISTEN_URL to a direct database URL for instant wake-ups, or"
            " QUEUE_LISTEN=False to poll without this check",
            self.interval,
        )
        self.close()
        self.listen = False

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def _started_line(
    queue: Registry, dialect: str, concurrency: int, interval: float, max_jobs: int | None
) -> str:
    names = ", ".join(queue.handlers) or "(none registered)"
    line = (
        f"worker started: queues {names}; concurrency {concurrency};"
        f" idle poll {interval}s; database {dialect}"
    )
    return line if max_jobs is None else f"{line}; stops after {max_jobs} job(s)"
