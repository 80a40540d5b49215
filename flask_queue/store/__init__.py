"""The job store: the only package that writes SQL.

The extension, runner, producer, CLI and dashboard call ``JobStore``'s methods;
none of them builds a statement. Driver errors are wrapped here, once, into
:class:`~flask_queue.errors.StorageError` (``errors.py``).

Times are stored as naive UTC (portable across SQLite, PostgreSQL and MySQL) and
handed out as aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..crypto import PayloadCipher
from .admin import Admin
from .claim import Claimed, Claims
from .claim.mysql import CANDIDATE_ROUNDS
from .core import (
    COMPLETED,
    FAILED,
    FINISH_CHUNK,
    INSERT_CHUNK,
    LIVE,
    RUNNING,
    SCHEDULED,
    UTC,
    Row,
    StoreCore,
    aware_utc,
    naive_utc,
)
from .counts import Counts, HeldKey
from .crons import CRON_ID_PREFIX, Crons
from .deps import NEEDS_COMPLETED, NEEDS_ENDED, Deps, Link, Resolved
from .errors import DEADLOCK_RETRIES
from .errors import is_outage as _is_outage
from .events import EventRow, Events
from .inserts import UNIQUE_ROUNDS, Inserts
from .notify import Listener, Notifier
from .predicates import (
    LEASE_EXPIRED,
    LEASE_EXPIRED_LINE,
    REASON_TAIL,
    ClaimRequest,
    Phase,
    due_phases,
)
from .queues import QueueSettings
from .ratelog import LIMITS_RECHECK, RateLog
from .reads import Reads
from .runs import Finish, Progress, Runs
from .schema import ERROR_WIDTH
from .steps import StepRecord, Steps, StepTaken, WaitRow

P = ParamSpec("P")
R = TypeVar("R")


class _Delegated(Generic[P, R]):
    """A ``JobStore`` method that is a part's method: ``insert =
    _Delegated("inserts", Inserts.insert)`` makes ``store.insert(...)``
    ``store.inserts.insert(...)``, with its signature (for type checkers) and
    its docstring. The first call on a store keeps the part's bound method on
    it, so later calls go straight to the part, as fast as a method of the
    store's own."""

    def __init__(self, part: str, method: Callable[Concatenate[Any, P], R]) -> None:
        self.part = part
        self.method = method.__name__
        self.__doc__ = method.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, store: None, owner: type) -> _Delegated[P, R]: ...
    @overload
    def __get__(self, store: object, owner: type) -> Callable[P, R]: ...
    def __get__(self, store: object | None, owner: type) -> Any:
        if store is None:
            return self
        bound = getattr(getattr(store, self.part), self.method)
        store.__dict__[self.name] = bound
        return bound


class JobStore:
    """The store of one job table, composed of parts over one ``StoreCore``.

    Each part owns one concern and its statements; the first line of each of
    its methods' docstrings says which statement it runs, on which index:

    - ``inserts`` (``Inserts``): enqueue's INSERTs, with a custom id or not;
    - ``reads`` (``Reads``): jobs by id, by custom id, keyset pages;
    - ``counting`` (``Counts``): exact and capped counts, lag, failures, the
      stats table;
    - ``admin`` (``Admin``): delete, retry, run now, the bulk actions, purge,
      re-encryption;
    - ``claims`` (``Claims``): the claim, limited queues first, then the free
      claim of this database (``claim/``);
    - ``runs`` (``Runs``): start, finish, mark started, leases, release;
    - ``rates`` (``RateLog``): the rate limits' start log;
    - ``settings`` (``QueueSettings``): pause state and limits per queue;
    - ``crons`` (``Crons``): the declared crons' rows;
    - ``notifier`` (``Notifier``): NOTIFY and LISTEN (PostgreSQL).

    The methods here are the ones callers have always used, each a part's
    method (``_Delegated``: the same signature and docstring); new callers
    may use the parts (``store.runs.finish``).
    ``core`` holds the engine (read at first use), its ``Dialect``, the tables,
    the clock and the cipher.
    """

    def __init__(
        self, engine: Callable[[], Engine], table: sa.Table, clock: Callable[[], datetime]
    ) -> None:
        self.core = core = StoreCore(engine, table, clock)
        self.table = table
        #: Per-queue pause state and limits (``schema.queue_table``).
        self.queues = core.queues
        #: Runs finished per minute and queue (``schema.stats_table``).
        self.stats = core.stats
        #: The rate limits' start log (``schema.starts_table``).
        self.starts = core.starts
        self.rates = RateLog(core)
        #: The durable steps' records (``steps.Steps``; table ``core.steps``).
        self.step_records = Steps(core)
        self.inserts = Inserts(core)
        #: The emitted events (``events.Events``; table ``core.events``).
        self.events = Events(core, self.step_records, self.inserts)
        #: The BLOCKED jobs' parents (``deps.Deps``; table ``core.deps``).
        self.deps = Deps(core, self.inserts)
        self.reads = Reads(core)
        self.counting = Counts(core)
        self.admin = Admin(core, self.reads)
        self.claims = Claims(core, self.rates)
        self.runs = Runs(core, self.rates)
        self.settings = QueueSettings(core, on_limits_changed=self.claims.limited.look_again)
        self.crons = Crons(core)
        self.notifier = Notifier(core)

    # -- what the parts share --------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self.core.engine

    @property
    def dialect(self) -> str:
        """The database's dialect name ("postgresql", "mysql", "sqlite", ...)."""
        return self.core.dialect.name

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.core.clock

    @clock.setter
    def clock(self, clock: Callable[[], datetime]) -> None:
        self.core.clock = clock

    @property
    def cipher(self) -> PayloadCipher | None:
        """Encrypts payloads at rest when QUEUE_ENCRYPTION_KEYS is set (``crypto.py``)."""
        return self.core.cipher

    @cipher.setter
    def cipher(self, cipher: PayloadCipher | None) -> None:
        self.core.cipher = cipher

    @property
    def before_claim(self) -> Callable[[], None] | None:
        """Called before the first claim: the extension stores the declared limits."""
        return self.claims.before_claim

    @before_claim.setter
    def before_claim(self, hook: Callable[[], None] | None) -> None:
        self.claims.before_claim = hook

    now = _Delegated("core", StoreCore.now)
    to_job = _Delegated("core", StoreCore.to_job)
    new_row = _Delegated("core", StoreCore.new_row)
    key = _Delegated("core", StoreCore.key)

    # -- enqueue ---------------------------------------------------------------------

    insert = _Delegated("inserts", Inserts.insert)
    insert_unique = _Delegated("inserts", Inserts.insert_unique)

    # -- reads and counts ------------------------------------------------------------

    get = _Delegated("reads", Reads.get)
    get_by_custom_id = _Delegated("reads", Reads.get_by_custom_id)
    jobs = _Delegated("reads", Reads.jobs)
    iter_jobs = _Delegated("reads", Reads.iter_jobs)
    find = _Delegated("reads", Reads.find)
    search = _Delegated("reads", Reads.search)
    search_statements = _Delegated("reads", Reads.search_statements)
    counts = _Delegated("counting", Counts.counts)
    oldest_due = _Delegated("counting", Counts.oldest_due)
    count_capped = _Delegated("counting", Counts.count_capped)
    counts_capped = _Delegated("counting", Counts.counts_capped)
    recent_failures = _Delegated("counting", Counts.recent_failures)
    held_keys = _Delegated("counting", Counts.held_keys)
    add_stats = _Delegated("counting", Counts.add_stats)
    run_stats = _Delegated("counting", Counts.run_stats)
    prune_stats = _Delegated("counting", Counts.prune_stats)

    # -- admin actions -------------------------------------------------------------

    delete = _Delegated("admin", Admin.delete)
    retry = _Delegated("admin", Admin.retry)
    run_now = _Delegated("admin", Admin.run_now)
    retry_failed = _Delegated("admin", Admin.retry_failed)
    delete_failed = _Delegated("admin", Admin.delete_failed)
    purge_completed = _Delegated("admin", Admin.purge_completed)
    reseal_payloads = _Delegated("admin", Admin.reseal_payloads)

    # -- the run path ----------------------------------------------------------------

    claim = _Delegated("claims", Claims.claim)
    claim_started = _Delegated("claims", Claims.claim_started)
    claim_one = _Delegated("claims", Claims.claim_one)
    start = _Delegated("runs", Runs.start)
    finish = _Delegated("runs", Runs.finish)
    mark_started = _Delegated("runs", Runs.mark_started)
    finish_many = _Delegated("runs", Runs.finish_many)
    extend_leases = _Delegated("runs", Runs.extend_leases)
    release = _Delegated("runs", Runs.release)
    hand_back = _Delegated("runs", Runs.hand_back)
    let_go = _Delegated("runs", Runs.let_go)

    # -- queue settings, crons, waking workers ----------------------------------------

    queue_settings = _Delegated("settings", QueueSettings.queue_settings)
    set_paused = _Delegated("settings", QueueSettings.set_paused)
    sync_limits = _Delegated("settings", QueueSettings.sync_limits)
    sync_crons = _Delegated("crons", Crons.sync_crons)
    notify = _Delegated("notifier", Notifier.notify)
    listener = _Delegated("notifier", Notifier.listener)

    @property
    def has_limits(self) -> bool:
        """Whether the queue table held limited (or fair) queues at the last
        claim's look."""
        return self.claims.limited.held

    @property
    def channel(self) -> str:
        return self.notifier.channel

    # -- what tests reach --------------------------------------------------------------

    def _due_phases(self, now: Any) -> list[Phase]:
        return due_phases(self.table, now)

    def _claim_limited(
        self,
        limit: int,
        now: datetime,
        lease: timedelta,
        ids: Sequence[str] | None,
        *,
        whole: bool,
    ) -> list[Any]:
        request = ClaimRequest(limit, lease, None if ids is None else list(ids), whole)
        return self.claims.limited.claim(request, now)


__all__ = [
    "CANDIDATE_ROUNDS",
    "COMPLETED",
    "CRON_ID_PREFIX",
    "DEADLOCK_RETRIES",
    "ERROR_WIDTH",
    "FAILED",
    "FINISH_CHUNK",
    "INSERT_CHUNK",
    "LEASE_EXPIRED",
    "LEASE_EXPIRED_LINE",
    "LIMITS_RECHECK",
    "LIVE",
    "NEEDS_COMPLETED",
    "NEEDS_ENDED",
    "REASON_TAIL",
    "RUNNING",
    "SCHEDULED",
    "UNIQUE_ROUNDS",
    "UTC",
    "Claimed",
    "Deps",
    "EventRow",
    "Events",
    "Finish",
    "HeldKey",
    "JobStore",
    "Link",
    "Listener",
    "Progress",
    "Resolved",
    "Row",
    "StepRecord",
    "StepTaken",
    "Steps",
    "WaitRow",
    "_is_outage",
    "aware_utc",
    "naive_utc",
]
