"""The ``Queue`` extension: registration, per-app state, enqueue and produce."""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import inspect
import itertools
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union

from flask import Flask, current_app

from . import signals
from .config import DEFAULTS, QueueConfig, read_config
from .deliveries import DeliveryLog, Failed
from .durations import Duration
from .errors import (
    ConfigError,
    InvalidOptionError,
    JobNotFoundError,
    QueueError,
    StorageError,
    UnknownQueueError,
    shown,
)
from .finisher import Finisher
from .heartbeat import Heartbeat
from .job import Job, JobStatus, new_id
from .planning import (
    MAX_NAME,
    RetryPolicy,
    check_custom_id,
    check_priority,
    check_text,
    encode_payload,
    parse_rate,
    plan,
)
from .scheduling import ScheduleType, next_cron, retry_delays, validate_cron, zone
from .stats import Tally
from .store import CRON_ID_PREFIX, SCHEDULED, JobStore, Row, naive_utc
from .store.schema import job_table

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session, scoped_session

    from .executors import Executor

T = TypeVar("T")
R = TypeVar("R")
UTC = timezone.utc
log = logging.getLogger("flask_queue")
AnySession = Union["Session", "scoped_session[Any]"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


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


@dataclass(frozen=True)
class Limits:
    """What a queue may run at once and how fast, across every process."""

    #: At most this many of the queue's jobs RUNNING at any instant (1: exclusive).
    concurrency: int | None = None
    #: At most ``rate[0]`` runs start in any window of ``rate[1]``.
    rate: tuple[int, timedelta] | None = None

    @classmethod
    def declare(cls, *, concurrency: int | None, exclusive: bool, rate: str | None) -> Limits:
        if exclusive and concurrency not in (None, 1):
            raise InvalidOptionError(
                f"exclusive=True runs one job at a time; it contradicts concurrency={shown(concurrency)}."
            )
        if exclusive:
            concurrency = 1
        if concurrency is not None and (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= 10_000
        ):
            raise InvalidOptionError(
                f"Invalid concurrency {shown(concurrency)}: use an int from 1 to 10000."
            )
        return cls(concurrency=concurrency, rate=parse_rate(rate) if rate is not None else None)

    def __bool__(self) -> bool:
        return self.concurrency is not None or self.rate is not None


class Handler(Generic[T, R]):
    """A registered handler: callable like the function it wraps, plus
    ``enqueue`` typed against the handler's ``Job[T]``."""

    def __init__(
        self,
        queue: Queue,
        name: str,
        func: Callable[[Job[T]], R],
        retry: list[timedelta] | None,
        *,
        priority: int = 0,
        limits: Limits | None = None,
    ) -> None:
        self.queue = queue
        self.name = name
        self.func = func
        self.retry = retry
        #: The priority of this queue's jobs unless ``enqueue(priority=)`` says otherwise.
        self.priority = priority
        #: Concurrency and rate limits, enforced by every claim in every process.
        self.limits = limits or Limits()
        self.__doc__ = func.__doc__
        self.__name__ = getattr(func, "__name__", name)
        self.__wrapped__ = func
        #: An ``async def`` handler: each run gets an event loop of its own.
        self.is_async = inspect.iscoroutinefunction(func)

    def __call__(self, job: Job[T]) -> R:
        return self.func(job)

    def run(self, job: Job[T]) -> Any:
        """Run the handler to completion, as the runner does. An ``async def``
        handler runs in ``asyncio.run`` on the runner's thread (each runner
        thread has no loop of its own), so it may await I/O but shares nothing
        with other runs; the app context the runner pushed is current inside."""
        if self.is_async:
            return asyncio.run(self.func(job))  # type: ignore[arg-type]
        return self.func(job)

    def __repr__(self) -> str:
        return f"<Handler {self.name!r}>"

    def enqueue(
        self,
        payload: T,
        *,
        delay: Duration | None = None,
        run_at: datetime | None = None,
        id: str | None = None,
        override: bool = False,
        cron: str | None = None,
        tz: str | None = None,
        every: Duration | None = None,
        times: int | None = None,
        retry: RetryPolicy | None = None,
        priority: int | None = None,
        session: AnySession | None = None,
    ) -> Job[T]:
        return self.queue.enqueue(
            self.name,
            payload,
            delay=delay,
            run_at=run_at,
            id=id,
            override=override,
            cron=cron,
            tz=tz,
            every=every,
            times=times,
            retry=retry,
            priority=priority,
            session=session,
        )

    def enqueue_many(self, payloads: Iterable[T], **options: Any) -> list[Job[T]]:
        return self.queue.enqueue_many(self.name, payloads, **options)


@dataclass
class QueueState:
    """Everything flask_queue keeps per app, in ``app.extensions["queue"]``."""

    queue: Queue
    app: Flask
    db: SQLAlchemy
    config: QueueConfig
    store: JobStore
    executor: Executor
    heartbeat: Heartbeat
    finisher: Finisher
    #: Runs counted for the charts, written once per interval (``stats.py``).
    tally: Tally
    #: This process's failed deliveries (``deliveries.py``).
    deliveries: DeliveryLog
    scheduler: Any = None
    #: Prometheus metrics, when prometheus_client is installed (``metrics.py``).
    metrics: Any = None


@dataclass
class _Cron:
    name: str
    expr: str
    tz: str
    retry: list[timedelta] | None


class Queue:
    """Background jobs stored in the app's own database.

    ``Queue()`` then ``init_app(app)`` (app factories), or ``Queue(app)``;
    pass ``db=`` when Flask-SQLAlchemy is not registered on the app yet. One
    ``Queue`` serves any number of apps; handlers and declared crons belong to
    the ``Queue``, storage and config to each app.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: SQLAlchemy | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        #: The Flask-SQLAlchemy for apps that do not register their own; a ``db``
        #: passed together with ``app`` is for that app only.
        self.db = db if app is None else None
        #: Returns the current time (aware UTC). Tests swap it for a frozen clock.
        self.clock: Callable[[], datetime] = clock or _utcnow
        self.handlers: dict[str, Handler[Any, Any]] = {}
        self.crons: dict[str, _Cron] = {}
        self.dashboard_auth_callback: Callable[[], bool] | None = None
        if app is not None:
            self.init_app(app, db=db)

    # -- setup -------------------------------------------------------------------

    def init_app(self, app: Flask, *, db: SQLAlchemy | None = None) -> None:
        if "queue" in app.extensions:
            raise ConfigError(
                f"flask_queue is already initialised on app {app.name!r}: call"
                " init_app once per app (one Queue can serve many apps)."
            )
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        config = read_config(app.config)
        if not app.config.get("SECRET_KEY"):
            raise ConfigError(
                "flask_queue's dashboard signs its CSRF tokens and flash messages with the"
                " app's session: set SECRET_KEY (QUEUE_SECRET only signs invoke requests)."
            )
        # The db passed for this app, else this app's own Flask-SQLAlchemy, else
        # the one given to the constructor: Queue(app1, db=db1).init_app(app2)
        # must not put app2's jobs in app1's database.
        db = db or app.extensions.get("sqlalchemy") or self.db
        if db is None:
            raise ConfigError(
                "flask_queue stores jobs with Flask-SQLAlchemy: call db.init_app(app)"
                " before queue.init_app(app), or pass queue.init_app(app, db=db)."
            )
        if config.scheduler:
            # Checked before anything is registered: a failed init_app leaves
            # the app untouched.
            from .scheduler import install_scheduler, require_apscheduler

            require_apscheduler()
        table = job_table(db.metadata, config.table_name)
        store = JobStore(_engine_getter(app, db), table, lambda: self.clock())
        if config.encryption_keys:
            from .crypto import PayloadCipher

            store.cipher = PayloadCipher(config.encryption_keys)

        from .executors import make_executor

        heartbeat = Heartbeat(store, config.lease)
        state = QueueState(
            queue=self,
            app=app,
            db=db,
            config=config,
            store=store,
            executor=None,  # type: ignore[arg-type]
            heartbeat=heartbeat,
            finisher=Finisher(store, heartbeat, size=config.batch_size),
            tally=Tally(store),
            deliveries=DeliveryLog(lambda: self.clock()),
        )
        state.executor = make_executor(state)
        # The limits the handlers declare are stored before this process's first
        # claim (then at every produce): claims in every process read them there.
        store.before_claim = lambda: self._store_limits(state)
        app.extensions["queue"] = state
        if importlib.util.find_spec("prometheus_client") is not None:
            from .metrics import Metrics

            state.metrics = Metrics(state)

        from .views import make_blueprint

        app.register_blueprint(make_blueprint(state), url_prefix=config.url_prefix)
        csrf = app.extensions.get("csrf")
        if csrf is not None:
            # Flask-WTF's CSRFProtect would refuse the invoke and produce POSTs,
            # which carry a signature or a bearer token instead of a form token.
            # (A CSRFProtect initialised later is handled per request: views.py.)
            csrf.exempt("flask_queue.views.invoke")
            csrf.exempt("flask_queue.views.produce")

        from .cli import queue_cli

        app.cli.add_command(queue_cli)

        if config.scheduler:
            install_scheduler(state)

        # Let running handlers finish at interpreter exit without holding it open.
        atexit.register(_shutdown_at_exit, weakref.ref(state))

    def handler(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        priority: int = 0,
        concurrency: int | None = None,
        exclusive: bool = False,
        rate: str | None = None,
    ) -> Callable[[Callable[[Job[T]], R]], Handler[T, R]]:
        """Register the decorated function as the handler of queue ``name``.

        ``priority`` is its jobs' default (higher runs first). ``concurrency=N``:
        never more than N of this queue's jobs RUNNING at once, across every
        process; ``exclusive=True`` is ``concurrency=1``. ``rate="10/s"``: no
        more than 10 runs start in any second, across every process.
        """
        # NUL as for custom ids: PostgreSQL cannot store it, and the dashboard can
        # then answer a NUL in a queue filter as "no such queue" on every database.
        if not isinstance(name, str) or not name or len(name) > 255 or "\x00" in name:
            raise InvalidOptionError(
                f"Invalid queue name {shown(name)}: use a non-empty string of at most 255"
                " characters, without NUL."
            )
        check_text(name, "queue name")
        delays = retry_delays(retry) if retry is not None else None
        check_priority(priority)
        limits = Limits.declare(concurrency=concurrency, exclusive=exclusive, rate=rate)

        def decorator(func: Callable[[Job[T]], R]) -> Handler[T, R]:
            if name in self.handlers:
                raise ConfigError(f"Queue {name!r} already has a handler.")
            handle: Handler[T, R] = Handler(
                self, name, func, delays, priority=priority, limits=limits
            )
            self.handlers[name] = handle
            return handle

        return decorator

    def cron(
        self,
        expr: str,
        *,
        name: str | None = None,
        tz: str = "UTC",
        retry: RetryPolicy | None = None,
    ) -> Callable[[Callable[[Job[None]], R]], Handler[None, R]]:
        """Declare a repeating job: kept as exactly one row, synced at each produce.

        Removing the declaration removes the row at the next sync; changing the
        expression or timezone updates it.
        """
        validate_cron(expr)
        zone(tz)
        if name is not None:
            _check_cron_name(name)

        def decorator(func: Callable[[Job[None]], R]) -> Handler[None, R]:
            cron_name = name or func.__name__
            _check_cron_name(cron_name)
            handle: Handler[None, R] = self.handler(cron_name, retry=retry)(func)
            self.crons[cron_name] = _Cron(cron_name, expr, tz, handle.retry)
            return handle

        return decorator

    def _store_limits(self, state: QueueState, *, prune: bool = False) -> None:
        state.store.sync_limits(
            {n: (h.limits.concurrency, h.limits.rate) for n, h in self.handlers.items()},
            prune=prune,
        )
        state.store.before_claim = None

    # -- pause / resume -------------------------------------------------------------

    def pause(self, name: str) -> None:
        """Stop claiming queue ``name``'s jobs, in every process, from their next
        claim: they stay SCHEDULED; runs in progress finish."""
        self.state().store.set_paused(self._known(name), True)

    def resume(self, name: str) -> None:
        """Claim queue ``name``'s jobs again."""
        self.state().store.set_paused(self._known(name), False)

    def queue_settings(self) -> dict[str, dict[str, Any]]:
        """Each queue's stored pause state and limits (queues with neither are absent)."""
        return self.state().store.queue_settings()

    def _known(self, name: str) -> str:
        if name not in self.handlers:
            known = ", ".join(sorted(self.handlers)) or "none"
            raise UnknownQueueError(f"Unknown queue {shown(name)} (registered: {known}).")
        return name

    def _priority(self, name: str, priority: int | None) -> int:
        if priority is not None:
            return priority
        handler = self.handlers.get(name)
        return handler.priority if handler is not None else 0

    def dashboard_auth(self, func: Callable[[], bool]) -> Callable[[], bool]:
        """Register the callback that guards the dashboard: return True to allow."""
        self.dashboard_auth_callback = func
        return func

    def state(self, app: Flask | None = None) -> QueueState:
        """The per-app state of ``app`` (default: the current app)."""
        if app is None:
            try:
                app = current_app._get_current_object()  # type: ignore[attr-defined]
            except RuntimeError:
                raise ConfigError(
                    "flask_queue needs an app context: use `with app.app_context():`."
                ) from None
        state = app.extensions.get("queue")
        if state is None or state.queue is not self:
            raise ConfigError(
                f"This Queue is not initialised on app {app.name!r}: call queue.init_app(app)."
            )
        return state  # type: ignore[no-any-return]

    @property
    def store(self) -> JobStore:
        return self.state().store

    # -- enqueue -------------------------------------------------------------------

    def enqueue(
        self,
        name: str,
        payload: Any,
        *,
        delay: Duration | None = None,
        run_at: datetime | None = None,
        id: str | None = None,
        override: bool = False,
        cron: str | None = None,
        tz: str | None = None,
        every: Duration | None = None,
        times: int | None = None,
        retry: RetryPolicy | None = None,
        priority: int | None = None,
        session: AnySession | None = None,
    ) -> Job[Any]:
        """Store a job for queue ``name``; dispatch it now if it is due now.

        With ``session=db.session`` the job is written in that session's
        transaction: it commits or rolls back with the caller's rows, and is
        dispatched only after the commit.
        """
        state = self.state()
        if id is not None:
            check_custom_id(id)
        if override and id is None:
            raise InvalidOptionError("override=True needs id=: it replaces the job with that id.")
        fields = plan(
            self.handlers,
            self.clock(),
            name,
            delay=delay,
            run_at=run_at,
            cron=cron,
            tz=tz,
            every=every,
            times=times,
            retry=retry,
            priority=self._priority(name, priority),
        )
        text = encode_payload(payload, state.config.max_payload)
        row = state.store.new_row(custom_id=id, payload=text, **fields)
        conn = session.connection() if session is not None else None
        due = row["run_at"] <= naive_utc(self.clock())
        if id is not None:
            job, created = state.store.insert_unique(row, override=override, conn=conn)
        elif due and conn is None and state.executor.notifies:
            # Idle workers are told in the INSERT's own statement: one round
            # trip instead of two (a third of an enqueue->start on PostgreSQL).
            state.store.insert([row], notify=True)
            job = state.store.to_job(row, payload=payload)
            signals.send(signals.job_enqueued, state.app, job=job)
            return job
        else:
            state.store.insert([row], conn=conn)
            job, created = state.store.to_job(row, payload=payload), True
        if created:
            signals.send(signals.job_enqueued, state.app, job=job)
        if created and due:
            self._dispatch_after_commit(state, [job.id], session)
        return job

    def enqueue_many(
        self,
        name: str,
        payloads: Iterable[Any],
        *,
        delay: Duration | None = None,
        run_at: datetime | None = None,
        cron: str | None = None,
        tz: str | None = None,
        every: Duration | None = None,
        times: int | None = None,
        retry: RetryPolicy | None = None,
        priority: int | None = None,
        session: AnySession | None = None,
        **unsupported: Any,
    ) -> list[Job[Any]]:
        """Store one job per payload in one INSERT (per 500 rows); same options for all."""
        if unsupported:
            raise InvalidOptionError(
                f"enqueue_many does not take {sorted(unsupported)}: a custom id names one job."
            )
        state = self.state()
        items = list(payloads)
        fields = plan(
            self.handlers,
            self.clock(),
            name,
            delay=delay,
            run_at=run_at,
            cron=cron,
            tz=tz,
            every=every,
            times=times,
            retry=retry,
            priority=self._priority(name, priority),
        )
        # Every payload checked before any write.
        encoded = [encode_payload(p, state.config.max_payload) for p in items]
        # One row and one Job built in full, then copied per payload: the rows
        # differ only in id and payload, and building each from scratch was a
        # fifth of the cost of a batch.
        template = state.store.new_row(payload=None, **fields)
        rows = [{**template, "id": new_id(), "payload": text} for text in encoded]
        conn = session.connection() if session is not None else None
        state.store.insert(rows, conn=conn)
        model = state.store.to_job(template, payload=None)
        jobs = [model._twin(r["id"], p) for r, p in zip(rows, items, strict=True)]
        if signals.job_enqueued.receivers:
            for job in jobs:
                signals.send(signals.job_enqueued, state.app, job=job)
        if jobs and jobs[0].run_at <= self.clock():
            self._dispatch_after_commit(state, [j.id for j in jobs], session)
        return jobs

    def _dispatch_after_commit(
        self, state: QueueState, job_ids: list[str], session: AnySession | None
    ) -> None:
        if not job_ids:
            return
        if session is None:
            _dispatch(state, job_ids)
            return
        real = session() if callable(session) else session  # scoped_session -> Session
        pending = real.info.setdefault("flask_queue_pending", [])
        pending.extend((state, job_id) for job_id in job_ids)
        if not real.info.get("flask_queue_hooked"):
            from sqlalchemy import event

            event.listen(real, "after_commit", _dispatch_pending)
            event.listen(real, "after_rollback", _drop_pending)
            real.info["flask_queue_hooked"] = True

    # -- reads and admin ------------------------------------------------------------

    def get(self, job_id: str) -> Job[Any] | None:
        return self.store.get(job_id)

    def get_by_custom_id(self, custom_id: str) -> Job[Any] | None:
        return self.store.get_by_custom_id(custom_id)

    def delete(self, job_id: str) -> bool:
        """Delete a job; False when there was none."""
        return self.store.delete(job_id)

    def retry(self, job_id: str) -> Job[Any]:
        """Put a FAILED job back to SCHEDULED, due now."""
        return self.store.retry(job_id)

    def run_now(self, job_id: str) -> Job[Any]:
        """Make a SCHEDULED or FAILED job due now and dispatch it at the next produce."""
        return self.store.run_now(job_id)

    def jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        payloads: bool = True,
    ) -> Iterator[Job[Any]]:
        """Every matching job (at most ``limit``), ordered by run time.

        ``status`` is the enum or its name. The iterator reads keyset pages
        as it goes, so it costs the same per job at any depth and never loads
        the whole table at once. ``payloads=False`` (listings) reads no
        payloads (``job.payload`` is None) and only the last 1,000 characters
        of each ``reason``.
        """
        jobs = self.store.iter_jobs(status=_status(status), queue=queue, light=not payloads)
        return jobs if limit is None else itertools.islice(jobs, limit)

    def require(self, job_id: str) -> Job[Any]:
        job = self.get(job_id)
        if job is None:
            raise JobNotFoundError(f"No job with id {job_id!r}.")
        return job

    def rotate_keys(self, *, batch: int = 500) -> int:
        """Encrypt every stored payload with the newest of ``QUEUE_ENCRYPTION_KEYS``
        (plain ones too); return how many rows were rewritten. Once it has run,
        the older keys can be dropped from the setting."""
        state = self.state()
        if state.store.cipher is None:
            raise ConfigError(
                "Set QUEUE_ENCRYPTION_KEYS (a list of Fernet keys, newest first) to"
                " encrypt payloads; there is nothing to rotate to."
            )
        return state.store.reseal_payloads(batch)

    # -- producing -----------------------------------------------------------------

    def sync_crons(self, *, prune: bool = True) -> dict[str, int]:
        """Make the table hold exactly the crons declared with ``@queue.cron``.

        ``prune=False`` (what ``produce`` does) only creates and updates: during
        a rolling deploy two releases share the table, and neither may delete
        the other's crons. Run ``flask queue sync-crons`` at deploy to prune.
        """
        state = self.state()
        crons = self.crons

        def row_for(name: str) -> Row:
            # Built only for a cron that is missing or changed, not on every produce.
            c = crons[name]
            return state.store.new_row(
                custom_id=CRON_ID_PREFIX + c.name,
                queue=c.name,
                payload="null",
                run_at=(first := next_cron(c.expr, c.tz, self.clock(), inclusive=True)),
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
            self._store_limits(state, prune=True)
        return result

    def produce(
        self,
        *,
        executor: Executor | None = None,
        limit: int | None = None,
        housekeeping: bool = True,
    ) -> ProduceResult:
        """Claim due jobs in batches and hand them to the executor.

        Returns within about ``QUEUE_PRODUCE_BUDGET``; what is left is claimed
        by the next call. ``limit`` caps how many jobs this call claims.
        ``housekeeping`` first syncs declared crons and purges expired history
        (a caller that produces many times a second does it now and then).
        """
        state = self.state()
        config = state.config
        runner = executor or state.executor
        started = time.monotonic()
        budget = config.produce_budget.total_seconds()
        # Housekeeping never stops the claim: a produce that cannot sync crons
        # or purge history still runs every due job.
        crons: dict[str, int] = {}
        purged = 0
        try:
            if housekeeping:
                self._store_limits(state)
                if self.crons:
                    crons = self.sync_crons(prune=False)
                if config.keep_completed:
                    purged = state.store.purge_completed(self.clock() - config.keep_completed)
                state.tally.flush_if_due()
                state.tally.prune_if_due(self.clock())
        except QueueError as exc:
            # One line, no traceback. An outage is logged once by the loops that
            # retry it (the claim below fails too): here it would repeat per retry.
            transient = isinstance(exc, StorageError) and exc.transient
            log.log(
                logging.DEBUG if transient else logging.WARNING,
                "flask_queue: produce housekeeping failed (%s); claiming anyway",
                exc,
            )
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
            for i, job in enumerate(jobs):
                try:
                    handed.append(runner.submit(job))
                except BaseException:
                    # The rest of the batch will not run here: out of the
                    # heartbeat, so their leases run out and they are claimed
                    # again, instead of being kept alive by this process forever.
                    for left in jobs[i:]:
                        state.heartbeat.discard(left.id, left.attempt)
                    raise
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

    def produce_token(self) -> str:
        """The bearer token ``/produce`` accepts (``QUEUE_PRODUCE_TOKEN`` or derived)."""
        from .signing import produce_token

        config = self.state().config
        if config.produce_token:
            return str(config.produce_token)
        if not config.secret:
            raise ConfigError(
                "No produce token: set QUEUE_PRODUCE_TOKEN, or QUEUE_SECRET/SECRET_KEY to"
                " derive one from."
            )
        return produce_token(config.secret)


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


def _check_cron_name(name: str) -> None:
    # The cron's row is found by the custom id prefix + name, stored in a
    # 255-character column: refuse here what the database would refuse later.
    room = MAX_NAME - len(CRON_ID_PREFIX)
    if not isinstance(name, str) or not name or len(name) > room:
        raise InvalidOptionError(
            f"Invalid cron name {shown(name)}: use a non-empty string of at most {room} characters."
        )
    check_text(name, "cron name")


def _status(status: JobStatus | str | None) -> str | None:
    if status is None:
        return None
    if isinstance(status, JobStatus):
        return status.value
    try:
        return JobStatus[str(status).upper()].value
    except KeyError:
        raise InvalidOptionError(
            f"Unknown status {shown(status)}: use one of {', '.join(s.value for s in JobStatus)}."
        ) from None


def _engine_getter(app: Flask, db: SQLAlchemy) -> Callable[[], Any]:
    def get() -> Any:
        with app.app_context():
            return db.engine

    return get


def _shutdown_at_exit(ref: weakref.ref[QueueState]) -> None:
    state = ref()
    if state is not None:
        state.executor.shutdown(wait=False)
        state.tally.flush()


def _dispatch(state: QueueState, job_ids: list[str]) -> None:
    if len(job_ids) == 1:
        state.executor.dispatch(job_ids[0])
    else:
        state.executor.dispatch_many(job_ids)


def _dispatch_pending(session: Session) -> None:
    by_state: dict[int, tuple[QueueState, list[str]]] = {}
    for state, job_id in session.info.pop("flask_queue_pending", []):
        by_state.setdefault(id(state), (state, []))[1].append(job_id)
    for state, job_ids in by_state.values():
        _dispatch(state, job_ids)


def _drop_pending(session: Session) -> None:
    session.info.pop("flask_queue_pending", None)


__all__ = ["Handler", "ProduceResult", "Queue", "QueueError", "QueueState"]
