"""The ``Queue`` extension: the facade users call, and ``init_app`` wiring.

The work is done below it: handlers and crons in ``registry.py``, per-app state
in ``state.py``, enqueue in ``enqueue.py``, produce in ``producer.py`` and every
admin action in ``actions.py``; each method here is one call into those.
"""

from __future__ import annotations

import atexit
import importlib.util
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flask import Flask

from . import actions, enqueue, producer
from .batches import Batch
from .config import DEFAULTS, read_config
from .deliveries import DeliveryLog
from .durations import Duration
from .errors import ConfigError, QueueError
from .events import Event, emit_event
from .finisher import Finisher
from .heartbeat import Heartbeat
from .job import WAIT_TIMEOUT, Job, JobStatus
from .planning import EnqueueOptions
from .producer import ProduceResult
from .registry import Cron, Handler, Limits, Registry
from .signing import produce_token_for
from .state import Executor, QueueState, current_state
from .stats import Tally
from .store import JobStore
from .store.schema import job_table

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from typing_extensions import Unpack

#: The name before ``registry.Cron`` (kept for a release).
_Cron = Cron


class Queue(Registry):
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
        super().__init__(clock=clock)
        #: The Flask-SQLAlchemy for apps that do not register their own; a ``db``
        #: passed together with ``app`` is for that app only.
        self.db = db if app is None else None
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
        store.before_claim = lambda: producer.store_limits(state)
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

    def state(self, app: Flask | None = None) -> QueueState:
        """The per-app state of ``app`` (default: the current app)."""
        return current_state(self, app)

    @property
    def store(self) -> JobStore:
        return self.state().store

    # -- enqueue -------------------------------------------------------------------

    def enqueue(self, name: str, payload: Any, **options: Unpack[EnqueueOptions]) -> Job[Any]:
        """Store a job for queue ``name``; dispatch it now if it is due now.

        Options (``planning.EnqueueOptions``): ``delay=`` or ``run_at=``;
        ``id=`` (a custom id, unique among live jobs) and ``override=True``
        (replace the live job holding it); ``cron=`` (+ ``tz=``) or ``every=``,
        and ``times=``; ``retry=``; ``priority=``; ``timeout=`` (see
        ``@queue.handler``).

        With ``session=db.session`` the job is written in that session's
        transaction: it commits or rolls back with the caller's rows, and is
        dispatched only after the commit.

        ``debounce="5s"`` (with ``id=``): each enqueue of that id within the
        window replaces the payload and moves the run to 5 s from now, never
        past the first enqueue + ``max_wait``; it runs once, after the last.
        ``unique_for="1h"`` (with ``id=``): an enqueue of an id first enqueued
        less than an hour ago, even one that finished, stores nothing and
        returns that job.
        """
        return enqueue.enqueue(self.state(), name, payload, **options)

    def enqueue_many(
        self, name: str, payloads: Iterable[Any], **options: Unpack[EnqueueOptions]
    ) -> list[Job[Any]]:
        """Store one job per payload in one INSERT (per 500 rows); same options
        for all (those of ``enqueue`` but the ones that name one job: ``id``,
        ``override``, ``debounce``, ``max_wait``, ``unique_for``)."""
        return enqueue.enqueue_many(self.state(), name, payloads, **options)

    def emit(
        self, event: str, data: Any = None, *, id: str | None = None, session: Any = None
    ) -> Event:
        """Store event ``event`` with ``data`` (JSON, at most QUEUE_MAX_PAYLOAD):
        enqueue one job per handler declared with ``events=[event]`` (its payload
        is ``data``) and wake the jobs whose ``job.wait_for_event`` it matches,
        all in one transaction. ``id=`` dedupes: an emit of an id stored already
        (within QUEUE_KEEP_EVENTS) returns that event and does nothing else,
        so a webhook delivered twice is one event. With ``session=db.session``
        it is all written in that session's transaction, dispatched after the
        commit."""
        return emit_event(self.state(), event, data, id=id, session=session)

    def batch(
        self,
        *,
        on_complete: str | None = None,
        on_success: str | None = None,
        session: Any = None,
    ) -> Batch:
        """``with queue.batch(on_complete="report") as batch: batch.enqueue(...)``:
        when the block ends, a job of ``on_complete`` is enqueued that runs once
        every member has finished, and one of ``on_success`` that runs once every
        member has completed (cancelled if one fails or is cancelled), each
        exactly once, with ``{"batch": id, "total", "completed", "failed",
        "cancelled"}`` as its payload. With ``session=`` members and callbacks
        are written in that session's transaction."""
        return Batch(self.state(), on_complete, on_success, session)

    def events(self, *, name: str | None = None, limit: int = 50) -> list[Event]:
        """The newest emitted events first (of ``name``, if given)."""
        return actions.events(self.state(), name=name, limit=limit)

    # -- reads and admin ------------------------------------------------------------

    def get(self, job_id: str) -> Job[Any] | None:
        return actions.get(self.state(), job_id)

    def get_by_custom_id(self, custom_id: str) -> Job[Any] | None:
        return actions.get_by_custom_id(self.state(), custom_id)

    def delete(self, job_id: str) -> bool:
        """Delete a job; False when there was none."""
        return actions.delete(self.state(), job_id)

    def retry(self, job_id: str) -> Job[Any]:
        """Put a FAILED job back to SCHEDULED, due now."""
        return actions.retry(self.state(), job_id)

    def run_now(self, job_id: str) -> Job[Any]:
        """Make a SCHEDULED or FAILED job due now and dispatch it at the next produce."""
        return actions.run_now(self.state(), job_id)

    def cancel(self, job_id: str) -> Job[Any]:
        """Cancel a job: a SCHEDULED one becomes CANCELLED at once; a RUNNING one
        is asked to stop (``job.cancelled``, ``job.check()``; an async handler's
        task is cancelled) within one heartbeat, wherever it runs, and ends
        CANCELLED, never retried. ``retry`` brings a CANCELLED job back."""
        return actions.cancel(self.state(), job_id)

    def wait(self, job_id: str, *, timeout: Duration | None = WAIT_TIMEOUT) -> Job[Any]:
        """The job once it is COMPLETED (``job.result``), FAILED or CANCELLED.

        Raises ``JobTimeoutError`` (a ``TimeoutError``) if it is not by
        ``timeout`` (None: no limit), and ``JobNotFoundError`` if there is no
        such job, or it was deleted at its success (a handler that returned
        None, with QUEUE_KEEP_COMPLETED at 0)."""
        return actions.wait(self.state(), job_id, timeout)

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
        return actions.jobs(
            self.state(), status=status, queue=queue, limit=limit, payloads=payloads
        )

    def require(self, job_id: str) -> Job[Any]:
        return actions.require(self.state(), job_id)

    def rotate_keys(self, *, batch: int = 500) -> int:
        """Encrypt every stored payload with the newest of ``QUEUE_ENCRYPTION_KEYS``
        (plain ones too); return how many rows were rewritten. Once it has run,
        the older keys can be dropped from the setting."""
        return actions.rotate_keys(self.state(), batch=batch)

    def pause(self, name: str) -> None:
        """Stop claiming queue ``name``'s jobs, in every process, from their next
        claim: they stay SCHEDULED; runs in progress finish."""
        actions.pause(self.state(), name)

    def resume(self, name: str) -> None:
        """Claim queue ``name``'s jobs again."""
        actions.resume(self.state(), name)

    def queue_settings(self) -> dict[str, dict[str, Any]]:
        """Each queue's stored pause state and limits (queues with neither are absent)."""
        return actions.queue_settings(self.state())

    # -- producing -----------------------------------------------------------------

    def sync_crons(self, *, prune: bool = True) -> dict[str, int]:
        """Make the table hold exactly the crons declared with ``@queue.cron``.

        ``prune=False`` (what ``produce`` does) only creates and updates: during
        a rolling deploy two releases share the table, and neither may delete
        the other's crons. Run ``flask queue sync-crons`` at deploy to prune.
        """
        return producer.sync_crons(self.state(), prune=prune)

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
        return producer.produce(
            self.state(), executor=executor, limit=limit, housekeeping=housekeeping
        )

    def produce_token(self) -> str:
        """The bearer token ``/produce`` accepts (``QUEUE_PRODUCE_TOKEN`` or derived)."""
        return produce_token_for(self.state().config)


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


__all__ = ["Handler", "Limits", "ProduceResult", "Queue", "QueueError", "QueueState"]
