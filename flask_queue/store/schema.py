"""The job table, declared on the app's own ``db.metadata``.

Declaring it there (not on a private metadata) is what lets ``db.create_all()``
create it and ``flask db migrate`` autogenerate it alongside the app's models. It
is a Core ``Table`` rather than an ORM class: the store only issues Core
statements (cheaper on the hot paths), and a Core table can be declared once per
metadata without touching the app's declarative class registry.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

DEFAULT_TABLE_NAME = "queue_job"

# MySQL/MariaDB DATETIME keeps whole seconds unless asked for more; run_at ordering
# and leases need sub-second precision. TEXT there is 64 KiB; tracebacks and
# payloads can be longer.
_DateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


#: Custom ids compare byte for byte on every database. MySQL/MariaDB's default
#: collations fold case, accents and trailing spaces ("invoice-7" = "Invoice-7" =
#: "invoice-7 "), and even ``utf8mb4_bin`` pads spaces: there they are VARBINARY
#: (UTF-8 bytes, every byte significant; the store decodes what it reads).
#: SQLite and PostgreSQL already compare text exactly. A variant, not a
#: TypeDecorator, so that Flask-Migrate renders it without importing flask_queue.
_ExactString = sa.String(255).with_variant(mysql.VARBINARY(4 * 255), "mysql", "mariadb")


#: Characters of the ``error`` column (one line: "ValueError: bad card").
ERROR_WIDTH = 255


def _declared(metadata: sa.MetaData, name: str, kind: str) -> sa.Table | None:
    """Our table ``name`` if ``metadata`` already declares it; an error if the
    app declares a table of its own by that name."""
    existing = metadata.tables.get(name)
    if existing is not None and not existing.info.get("flask_queue"):
        raise ValueError(
            f"Table {name!r} already exists on this metadata and is not a flask_queue"
            f" {kind} table; set QUEUE_TABLE_NAME to another name."
        )
    return existing


def _table(metadata: sa.MetaData, name: str, kind: str, *items: Any) -> sa.Table:
    """Table ``name`` of ``items`` on ``metadata``, declared once."""
    existing = _declared(metadata, name, kind)
    if existing is not None:
        return existing
    return sa.Table(name, metadata, *items, info={"flask_queue": True})


def job_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE_NAME) -> sa.Table:
    """Return the job table called ``name`` on ``metadata``, declaring it once."""
    existing = _declared(metadata, name, "job")
    if existing is not None:
        return existing
    table = sa.Table(
        name,
        metadata,
        sa.Column("id", sa.String(32), primary_key=True),
        # custom_id stays on the row for search and history; live_custom_id is
        # the same value while the job is live (SCHEDULED/RUNNING) and NULL once
        # it is COMPLETED or FAILED, so "unique among live jobs" is a plain
        # unique key on every database (NULLs never collide).
        sa.Column("custom_id", _ExactString, nullable=True),
        sa.Column("live_custom_id", _ExactString, nullable=True, unique=True),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("payload", _LongText, nullable=False),
        sa.Column("run_at", _DateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", _LongText, nullable=True),
        # The last error in one line ("ValueError: bad card"), set with reason:
        # lists and the failures overview read this, never the traceback.
        sa.Column("error", sa.String(ERROR_WIDTH), nullable=True),
        # The last HISTORY_SIZE attempts (JSON list: number, start, duration,
        # outcome, error line), appended by each outcome written row by row.
        sa.Column("history", sa.Text, nullable=True),
        sa.Column("count", sa.Integer, nullable=False, default=0),
        sa.Column("schedule_type", sa.String(8), nullable=True),
        sa.Column("schedule", sa.String(255), nullable=True),
        sa.Column("count_limit", sa.Integer, nullable=True),
        sa.Column("tz", sa.String(64), nullable=True),
        # The slot a repeating job's current run belongs to: run_at moves to a
        # retry's time, this does not, so the next slot keeps the cadence.
        sa.Column("occurrence_at", _DateTime, nullable=True),
        # attempt: runs started, never reset; the signed invoke request names it, so
        # a stale or replayed request for an earlier run is refused.
        sa.Column("attempt", sa.Integer, nullable=False, default=0),
        # Among due jobs the claim takes the highest first (then the oldest run_at).
        # A server default, so adding the column to a filled table needs no backfill.
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default="0"),
        # errors: consecutive failures of the current run, measured against retry.
        sa.Column("errors", sa.Integer, nullable=False, default=0),
        sa.Column("retry", sa.Text, nullable=True),
        sa.Column("lease_until", _DateTime, nullable=True),
        sa.Column("started_at", _DateTime, nullable=True),
        sa.Column("created_at", _DateTime, nullable=False),
        sa.Column("updated_at", _DateTime, nullable=False),
        # Job control (issue 19). All nullable: a table migrated from an earlier
        # release needs no backfill, and that release's writes leave them NULL.
        # The handler's return value (JSON), kept with a COMPLETED row.
        sa.Column("result", _LongText, nullable=True),
        # The run's last reported progress, JSON [fraction, message], written by
        # the heartbeat (one write per beat, however often the handler reports).
        sa.Column("progress", sa.Text, nullable=True),
        # When a cancel was asked for: a RUNNING job's run sees it at its next
        # beat and ends CANCELLED; a SCHEDULED job is CANCELLED at once.
        sa.Column("cancelled_at", _DateTime, nullable=True),
        # What the end of a cancelled run does with the row: NULL keeps it
        # CANCELLED; "DELETE" (a delete of a running job) removes it.
        sa.Column("cancel_action", sa.String(16), nullable=True),
        # The job's own run timeout in milliseconds (None: the handler's, or none).
        sa.Column("timeout_ms", sa.Integer, nullable=True),
        # Windows (issue 19): a debounced job is pushed back by each enqueue of
        # its id, but never past this (its first enqueue + max_wait).
        sa.Column("latest_run_at", _DateTime, nullable=True),
        # unique_for: until then an enqueue of the same custom id returns this
        # job, finished or not (the row is kept that long).
        sa.Column("unique_until", _DateTime, nullable=True),
        # Keys (issue 19): a limited queue's limits hold per (queue, key); jobs
        # without one share one group. Exact bytes on MySQL, as custom ids, so
        # "Tenant" and "tenant" are two keys everywhere.
        sa.Column("key", _ExactString, nullable=True),
        # OpenTelemetry (tracing.py): the enqueue's W3C trace context, as JSON;
        # each run's span links to it. None without tracing or a current span.
        sa.Column("trace_context", sa.Text, nullable=True),
        # Lists by status in run_at order, and the purge of kept history.
        sa.Index(f"ix_{name}_status_run_at", "status", "run_at"),
        # The claim of expired RUNNING leases.
        sa.Index(f"ix_{name}_status_lease_until", "status", "lease_until"),
        # Lookups and counts by queue, and the dashboard's per-queue lists in
        # run_at order (keyset pages without a sort), per-queue bulk actions.
        sa.Index(f"ix_{name}_queue_status_run_at", "queue", "status", "run_at"),
        # The limited claim's look for keyed jobs of a queue, and the running
        # runs per key.
        sa.Index(f"ix_{name}_queue_status_key", "queue", "status", "key"),
        # Search and get_by_custom_id, which also find finished records.
        sa.Index(f"ix_{name}_custom_id", "custom_id"),
        # Declared crons are found by type on every produce; keep that off a scan.
        sa.Index(f"ix_{name}_schedule_type", "schedule_type"),
        info={"flask_queue": True},
    )
    # The claim of due jobs, highest priority then oldest first, walks this in
    # order and stops at its LIMIT: a due backlog of any size costs a claim the
    # same (ordering the due range of (status, run_at) by priority read all of
    # it: 80 ms per claim with 100,000 due on PostgreSQL, 430 ms on MariaDB).
    # What it walks past are future jobs of higher priorities than the ones it
    # takes. MariaDB before 10.8 and MySQL before 8 ignore DESC here and sort.
    sa.Index(f"ix_{name}_claim", table.c.status, table.c.priority.desc(), table.c.run_at)
    return table


def queue_table(metadata: sa.MetaData, job_table_name: str = DEFAULT_TABLE_NAME) -> sa.Table:
    """The per-queue settings every claim reads: pause state (set by an operator)
    and the limits the code declares (synced by each produce), one row per queue
    that has any. Named after the job table (``<job table>_queues``)."""
    return _table(
        metadata,
        f"{job_table_name}_queues",
        "queue",
        sa.Column("name", sa.String(255), primary_key=True),
        # The literal, not sa.false(): that compiles per dialect, and a migration
        # autogenerated on SQLite wrote DEFAULT 0, which PostgreSQL refuses for a
        # BOOLEAN. "false" means the same on all three (SQLite since 3.23).
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.text("false")),
        # At most this many RUNNING jobs of the queue at once (1: exclusive).
        sa.Column("concurrency", sa.Integer, nullable=True),
        # At most rate_limit starts in any rate_window_ms window.
        sa.Column("rate_limit", sa.Integer, nullable=True),
        sa.Column("rate_window_ms", sa.BigInteger, nullable=True),
        # fair=True: the claim takes the queue's due jobs round-robin across
        # keys (NULL: not fair, as a release older than keys wrote it).
        sa.Column("fair", sa.Boolean, nullable=True),
        # Unused since the rate log got a table of its own (``starts_table``);
        # kept so that a release older than that can share the table.
        sa.Column("starts", sa.Text, nullable=True),
        sa.Column("updated_at", _DateTime, nullable=False),
    )


def starts_table(metadata: sa.MetaData, job_table_name: str = DEFAULT_TABLE_NAME) -> sa.Table:
    """The rate limits' start log (``<job table>_starts``): one row per run of
    a rate-limited queue, written by the claim (``started_at`` NULL: claimed,
    not started yet) and stamped when the run starts (or, if its run ended
    unstamped, by the next claim). Rows out of the window are deleted by the
    next claim.

    A table, not a list on the queue's row: a window of 10,000 starts is
    10,000 small rows on an index, where a JSON list outgrew MySQL's 64 KiB
    TEXT after about 3,000 and then failed every claim."""
    name = f"{job_table_name}_starts"
    return _table(
        metadata,
        name,
        "start log",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("started_at", _DateTime, nullable=True),
        # The run's key: a rate holds per (queue, key).
        sa.Column("key", _ExactString, nullable=True),
        # Each claim prunes what left a queue's window, and counts it per key.
        sa.Index(f"ix_{name}_queue_started_at", "queue", "started_at"),
        sa.Index(f"ix_{name}_queue_key", "queue", "key"),
    )


def steps_table(metadata: sa.MetaData, job_table_name: str = DEFAULT_TABLE_NAME) -> sa.Table:
    """The durable steps' records (``<job table>_steps``): one row per step (or
    sleep) a job's handler completed, by job, run count and name. The run count
    (the job's ``count`` when the step ran) makes a repeating job's next
    occurrence start with no steps without a DELETE on the run path; a replay
    reads the job's records in one SELECT on the primary key's prefix."""
    name = f"{job_table_name}_steps"
    return _table(
        metadata,
        name,
        "steps",
        sa.Column("job_id", sa.String(32), primary_key=True),
        # The job's ``count`` (runs completed) when the step ran.
        sa.Column("occurrence", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", _ExactString, primary_key=True),
        # "step", "sleep" or "wait"; a sleep's result is its wake time, a
        # wait's the event that resolved it (null: it timed out).
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("result", _LongText, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("finished_at", _DateTime, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=True),
    )


def waits_table(metadata: sa.MetaData, job_table_name: str = DEFAULT_TABLE_NAME) -> sa.Table:
    """The waits in progress (``<job table>_waits``): one row per
    ``job.wait_for_event`` a job is waiting at, by job, occurrence and name.
    ``queue.emit`` finds the waits for its event on ``(event, probe)``: the
    probe is a hash of one (key, value) pair of the wait's ``match``, so an
    emit reads the waits that share a pair with its data (or match anything),
    not every wait for that event name. The row goes when the wait is
    resolved (an emit, or its deadline); its outcome is a step record."""
    name = f"{job_table_name}_waits"
    return _table(
        metadata,
        name,
        "waits",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("occurrence", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", _ExactString, primary_key=True),
        # Exact, like ids: "Booking.Confirmed" is another event (MySQL's collations fold case).
        sa.Column("event", _ExactString, nullable=False),
        # SHA-256 hex of one (key, value) pair of ``match``; NULL: no match.
        sa.Column("probe", sa.String(64), nullable=True),
        sa.Column("match", _LongText, nullable=True),
        # The attempt that began waiting (its record says so).
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("deadline", _DateTime, nullable=False),
        sa.Column("created_at", _DateTime, nullable=False),
        sa.Index(f"ix_{name}_event", "event", "probe"),
    )


def events_table(metadata: sa.MetaData, job_table_name: str = DEFAULT_TABLE_NAME) -> sa.Table:
    """The events ``queue.emit`` stored (``<job table>_events``): the id
    dedupes (a webhook delivered twice is one event), ``jobs`` lists what
    the event started and woke (the Events page), and the rows go after
    ``QUEUE_KEEP_EVENTS``."""
    name = f"{job_table_name}_events"
    return _table(
        metadata,
        name,
        "events",
        sa.Column("id", _ExactString, primary_key=True),
        sa.Column("name", _ExactString, nullable=False),
        sa.Column("data", _LongText, nullable=False),
        # JSON: {"started": [job ids], "woke": [job ids], "woke_count": n}.
        sa.Column("jobs", _LongText, nullable=True),
        sa.Column("created_at", _DateTime, nullable=False),
        sa.Index(f"ix_{name}_created", "created_at"),
        sa.Index(f"ix_{name}_name", "name", "created_at"),
    )


def deps_table(metadata: sa.MetaData, job_table_name: str = DEFAULT_TABLE_NAME) -> sa.Table:
    """The parents of jobs enqueued with ``after=`` (``<job table>_deps``),
    and of batch callbacks: one row per (child, parent). ``needs`` says what
    frees the child: every parent COMPLETED ("completed"), or every parent
    ended whatever its outcome ("ended": ``on_complete``). A parent's result
    is copied here when its child is freed (``job.parent_results``), so the
    parent's row may go first."""
    name = f"{job_table_name}_deps"
    return _table(
        metadata,
        name,
        "dependencies",
        sa.Column("child_id", sa.String(32), primary_key=True),
        sa.Column("parent_id", sa.String(32), primary_key=True),
        sa.Column("needs", sa.String(16), nullable=False),
        # The batch a callback child reports on (None: a plain ``after=``).
        sa.Column("batch", sa.String(32), nullable=True),
        sa.Column("result", _LongText, nullable=True),
        # The job page lists a job's children.
        sa.Index(f"ix_{name}_parent", "parent_id"),
    )


def stats_table(metadata: sa.MetaData, job_table_name: str = DEFAULT_TABLE_NAME) -> sa.Table:
    """Runs finished per minute and queue (``<job table>_stats``), for the
    dashboard's charts: each process adds its counts in one statement per
    interval (see ``stats.Tally``), so the run path writes no row per job."""
    return _table(
        metadata,
        f"{job_table_name}_stats",
        "stats",
        # The minute's start, UTC; with queue, the key each flush adds to.
        sa.Column("minute", _DateTime, primary_key=True),
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    )
