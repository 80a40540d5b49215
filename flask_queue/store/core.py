"""What every part of the store shares: the engine and its dialect, the tables,
the clock and the cipher; connections and prebuilt statements; rows in and out.

Times are stored as naive UTC (portable across SQLite, PostgreSQL and MySQL) and
handed out as aware UTC datetimes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..crypto import PayloadCipher, plain_open
from ..job import Job, JobStatus, Progress, new_id
from ..scheduling import ScheduleType
from .dialects import Dialect
from .errors import retry_on_deadlock, storage_errors
from .schema import (
    deps_table,
    events_table,
    queue_table,
    starts_table,
    stats_table,
    steps_table,
    waits_table,
)

UTC = timezone.utc
Row = dict[str, Any]
log = logging.getLogger("flask_queue")

SCHEDULED = JobStatus.SCHEDULED.value
RUNNING = JobStatus.RUNNING.value
FAILED = JobStatus.FAILED.value
COMPLETED = JobStatus.COMPLETED.value
CANCELLED = JobStatus.CANCELLED.value
BLOCKED = JobStatus.BLOCKED.value
#: Statuses that hold a custom id.
LIVE = (SCHEDULED, RUNNING)

#: Rows per executemany INSERT. The drivers send each as one round trip (SQLAlchemy's
#: insertmanyvalues on PostgreSQL, PyMySQL's multi-row rewrite, SQLite in process);
#: the bound keeps one statement under MySQL's default max_allowed_packet.
INSERT_CHUNK = 1000
#: Runs per statement over (id, attempt) pairs: an IN list of pairs stays well
#: inside every database's limit on bound parameters.
FINISH_CHUNK = 500
_UNSET: Any = object()
#: The datetime columns ``new_row`` makes naive UTC.
_TIMES = (
    "run_at",
    "occurrence_at",
    "lease_until",
    "started_at",
    "created_at",
    "updated_at",
    "latest_run_at",
    "unique_until",
)


def naive_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def aware_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Stored times made aware lately, by their stored value: a claim's rows share
#: their lease, update and often creation times, and a ``replace`` costs a
#: microsecond (four per claimed job). Emptied when full; a dict's get, set and
#: clear are each atomic, so threads share it.
_AWARE: dict[datetime, datetime] = {}
_AWARE_MAX = 1024


def _aware(value: datetime | None) -> datetime | None:
    """``aware_utc`` for a stored time, which is naive UTC on every database."""
    if value is None:
        return None
    aware = _AWARE.get(value)
    if aware is None:
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if len(_AWARE) >= _AWARE_MAX:
            _AWARE.clear()
        _AWARE[value] = aware
    return aware


#: Status text -> JobStatus, without the enum's lookup (an unknown text still
#: goes through ``JobStatus()``, whose ValueError ``readable`` reports).
_STATUSES = {status.value: status for status in JobStatus}


def nameable(key: str) -> bool:
    """Whether a job's id or custom id can be ``key``. Neither holds NUL (ids are
    generated; custom ids refuse it) nor a lone surrogate (not UTF-8), and
    neither can be sent to every database (PostgreSQL refuses NUL in a text
    parameter, and no driver encodes a surrogate): such a key names no job, and
    the look-ups answer so without asking."""
    if "\x00" in key:
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _progress(text: str | None) -> Progress:
    if not text:
        return Progress()
    fraction, message = json.loads(text)
    return Progress((float(fraction), message))


def text_of(value: Any) -> Any:
    """A custom id as text: MySQL hands the VARBINARY column back as bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8")
    return value


def chunks(pairs: list[tuple[str, int]]) -> Iterator[list[tuple[str, int]]]:
    """``pairs`` (runs: id, attempt) ``FINISH_CHUNK`` at a time."""
    for i in range(0, len(pairs), FINISH_CHUNK):
        yield pairs[i : i + FINISH_CHUNK]


class StoreCore:
    """The engine (read at first use), its ``Dialect``, the four tables, the
    clock and the cipher, shared by every part of the store."""

    def __init__(
        self, engine: Callable[[], Engine], table: sa.Table, clock: Callable[[], datetime]
    ) -> None:
        self._engine_getter = engine
        self._autocommit: Engine | None = None
        self.table = table
        #: Per-queue pause state and limits (``schema.queue_table``).
        self.queues = queue_table(table.metadata, table.name)
        #: Runs finished per minute and queue (``schema.stats_table``).
        self.stats = stats_table(table.metadata, table.name)
        #: The rate limits' start log (``schema.starts_table``).
        self.starts = starts_table(table.metadata, table.name)
        #: The durable steps' records (``schema.steps_table``).
        self.steps = steps_table(table.metadata, table.name)
        #: The waits in progress and the emitted events (``schema.waits_table``,
        #: ``schema.events_table``).
        self.waits = waits_table(table.metadata, table.name)
        self.events = events_table(table.metadata, table.name)
        #: Parents of the jobs enqueued with ``after=`` (``schema.deps_table``).
        self.deps = deps_table(table.metadata, table.name)
        self.clock = clock
        self._statements: dict[Any, Any] = {}
        #: Encrypts payloads at rest when QUEUE_ENCRYPTION_KEYS is set (``crypto.py``).
        self.cipher: PayloadCipher | None = None

    @cached_property
    def engine(self) -> Engine:
        return self._engine_getter()

    @cached_property
    def dialect(self) -> Dialect:
        """Chosen once, at first use (the engine is read lazily)."""
        return Dialect.of(self.engine)

    def now(self) -> datetime:
        return naive_utc(self.clock())

    # -- connections and statements ---------------------------------------------

    def one_statement(self) -> AbstractContextManager[Connection]:
        """A connection for a write that is one statement, atomic by itself.

        Where the dialect says so (PostgreSQL) it runs in autocommit: no
        BEGIN/COMMIT round trips. Elsewhere switching the mode costs more than
        it saves (PyMySQL sends it as a query), so a plain transaction it is.
        """
        if self.dialect.autocommit:
            if self._autocommit is None:
                self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
            return self._autocommit.connect()
        return self.engine.begin()

    @contextmanager
    def begin(
        self, conn: Connection | None, *, nested: bool = False, single: bool = False
    ) -> Iterator[Connection]:
        """A transaction: our own, or (for transactional enqueue) the caller's.

        ``single`` says the block runs one statement, which may then skip the
        transaction wrapper (see ``one_statement``). ``nested`` puts the block in
        a SAVEPOINT inside the caller's transaction: only PostgreSQL needs that
        (``Dialect.savepoint``), because a failed statement aborts its whole
        transaction there, while SQLite and InnoDB undo just the statement. (On
        SQLite a SAVEPOINT would also be wrong: as the first statement it opens
        the transaction itself behind the driver's back, and its RELEASE commits
        the row, so a later rollback would keep it.)
        """
        if conn is None:
            with self.one_statement() if single else self.engine.begin() as c:
                yield c
        elif nested:
            with conn.begin_nested():
                yield conn
        else:
            yield conn

    def prebuilt(self, key: Any, build: Callable[[], Any]) -> Any:
        """A statement built once per store, its values bound at execution.

        Building a Core statement per call (its WHERE and SET coerced, its cache
        key generated) cost about as much CPU as executing it: ~0.25 ms of each
        invoke request's start and ~0.1 ms of its finish. A statement built once
        with bound parameters is compiled once and its cache key is memoized.
        Two threads that build the same key at once both store an equal statement.
        """
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = build()
        return stmt

    def repeatable(self, action: str, stmt: Any) -> int:
        """Run one statement that is safe to repeat, on a connection of its own,
        again if the database picked it as a deadlock victim; its rowcount."""

        def once() -> int:
            with storage_errors(action), self.one_statement() as c:
                return int(c.execute(stmt).rowcount)

        return retry_on_deadlock(once, pause=(0.002, 0.01))

    def insert(self, c: Connection, rows: Sequence[Row]) -> None:
        """INSERT ``rows`` in ``c``, sealed (``sealed``), one round trip per
        ``INSERT_CHUNK`` rows."""
        if self.cipher is not None:
            rows = [self.sealed(r) for r in rows]
        stmt = sa.insert(self.table)
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            c.execute(stmt, chunk[0] if len(chunk) == 1 else list(chunk))

    # -- rows in and out ---------------------------------------------------------

    def key(self, custom_id: str | None) -> Any:
        """A custom id as the custom id columns take it: UTF-8 bytes for MySQL's
        VARBINARY (so it compares byte for byte, see schema), text elsewhere."""
        return self.dialect.key(custom_id)

    def to_job(self, row: Any, *, payload: Any = _UNSET) -> Job[Any]:
        """A ``Job`` from a result row or a row dict; ``payload`` skips decoding
        when the caller already has it (enqueue does).

        Built without ``Job.__init__``: a frozen dataclass's sets each of its
        thirty fields through ``object.__setattr__``, and with the eight time
        conversions that was a fifth of a draining worker's time on the GIL.
        ``tests/test_store.py`` checks that every field is set."""
        m = row._mapping if hasattr(row, "_mapping") else row
        history = m["history"]
        retry = m["retry"]
        result = m["result"]
        timeout_ms = m["timeout_ms"]
        schedule_type = m["schedule_type"]
        job: Job[Any] = object.__new__(Job)
        job.__dict__.update(
            id=m["id"],
            queue=m["queue"],
            payload=json.loads(self.opened(m["payload"])) if payload is _UNSET else payload,
            run_at=_aware(m["run_at"]),
            status=_STATUSES.get(m["status"]) or JobStatus(m["status"]),
            custom_id=text_of(m["custom_id"]),
            reason=m["reason"],
            error=m["error"],
            history=json.loads(history) if history else None,
            count=m["count"],
            schedule_type=ScheduleType(schedule_type) if schedule_type else None,
            schedule=m["schedule"],
            count_limit=m["count_limit"],
            tz=m["tz"],
            occurrence_at=_aware(m["occurrence_at"]),
            attempt=m["attempt"],
            errors=m["errors"],
            priority=m["priority"],
            retry=json.loads(retry) if retry else None,
            lease_until=_aware(m["lease_until"]),
            started_at=_aware(m["started_at"]),
            created_at=_aware(m["created_at"]),
            updated_at=_aware(m["updated_at"]),
            result=json.loads(result) if result is not None else None,
            progress=_progress(m["progress"]),
            cancelled_at=_aware(m["cancelled_at"]),
            cancel_action=m["cancel_action"],
            timeout=timedelta(milliseconds=timeout_ms) if timeout_ms else None,
            unique_until=_aware(m["unique_until"]),
            key=text_of(m["key"]),
            trace_context=m["trace_context"],
        )
        return job

    def opened(self, text: str) -> str:
        return self.cipher.open(text) if self.cipher is not None else plain_open(text)

    def sealed(self, row: Row) -> Row:
        """``row`` as it is written: its payload encrypted when a cipher is set.
        Every INSERT and payload UPDATE goes through here."""
        if self.cipher is None or row.get("payload") is None:
            return row
        return {**row, "payload": self.cipher.seal(row["payload"])}

    def new_row(self, /, **values: Any) -> Row:
        """A complete row with defaults; callers pass what differs."""
        now = self.now()
        row: Row = {
            "id": new_id(),
            "custom_id": None,
            "live_custom_id": None,
            "reason": None,
            "error": None,
            "history": None,
            "count": 0,
            "schedule_type": None,
            "schedule": None,
            "count_limit": None,
            "tz": None,
            "occurrence_at": None,
            "attempt": 0,
            "errors": 0,
            "priority": 0,
            "retry": None,
            "lease_until": None,
            "started_at": None,
            "created_at": now,
            "updated_at": now,
            "result": None,
            "progress": None,
            "cancelled_at": None,
            "cancel_action": None,
            "timeout_ms": None,
            "latest_run_at": None,
            "unique_until": None,
            "key": None,
            "trace_context": None,
        }
        row.update(values)
        if row["custom_id"] is not None:
            row["custom_id"] = self.dialect.key(row["custom_id"])
        if row["key"] is not None:
            row["key"] = self.dialect.key(row["key"])
        if row["status"] in LIVE:
            row["live_custom_id"] = row["custom_id"]
        for key in _TIMES:
            if row.get(key) is not None:
                row[key] = naive_utc(row[key])
        return row

    def readable(self, row: Any) -> Job[Any] | None:
        """UPDATE by primary key, only of a row this release cannot read: the job
        of a row just claimed or started, or None after failing the row. One
        whose payload or retry was edited by hand, or with an unknown status,
        is visibly FAILED, rather than looping on leases."""
        try:
            return self.to_job(row)
        except (ValueError, TypeError, KeyError) as exc:
            m = row._mapping
            reason = f"flask_queue could not read this job's row: {exc!r}"
            log.error("flask_queue: job %s: %s", m["id"], reason)
            t = self.table
            with storage_errors("fail an unreadable job"), self.one_statement() as c:
                c.execute(
                    sa.update(t)
                    .where(t.c.id == m["id"], t.c.attempt == m["attempt"], t.c.status == RUNNING)
                    .values(
                        status=FAILED,
                        reason=reason,
                        error=f"UnreadableRow: {exc!r}"[:255],
                        lease_until=None,
                        live_custom_id=None,
                        updated_at=self.now(),
                    )
                )
            return None
