"""``flask queue ...``: each command is its options and one call into
``actions``, ``enqueue``, ``producer`` or ``worker``."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
from flask import current_app
from flask.cli import AppGroup

from . import actions, enqueue, producer
from .durations import parse_ms, to_timedelta
from .errors import InvalidDurationError, QueueError, shown
from .events import emit_event
from .job import Job, JobStatus
from .planning import json_problem
from .producer import ProduceResult
from .signing import produce_token_for
from .state import QueueState

queue_cli = AppGroup("queue", help="Background jobs stored in the app's database.")


def _state() -> QueueState:
    state = current_app.extensions.get("queue")
    if state is None:
        raise click.ClickException("flask_queue is not initialised on this app.")
    return state  # type: ignore[no-any-return]


def _log_to_stderr() -> None:
    """Show flask_queue's INFO lines (outage over, runs failing) from the long-lived
    commands, unless the app set up logging itself."""
    logger = logging.getLogger("flask_queue")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _fail(exc: QueueError) -> click.ClickException:
    # One line: a database's message runs over several (the SQL, a help link),
    # and a log collector would file each line as an error of its own.
    return click.ClickException(" ".join(filter(None, map(str.strip, str(exc).splitlines()))))


if TYPE_CHECKING:
    # Generic only in recent click (8.5); the older ones Flask allows cannot
    # subscript it at run time.
    _TextType = click.ParamType[str]
    _AnyType = click.ParamType[Any]
    _DurationType = click.ParamType[timedelta]
else:
    _TextType = _AnyType = _DurationType = click.ParamType


class Utf8Text(_TextType):
    """Text that can be stored and looked up.

    On POSIX, Python turns argv bytes that are not UTF-8 into lone surrogates
    ("\\udcff"), which no database driver can encode: refused here, with the
    bytes the shell passed, instead of a UnicodeEncodeError from the driver.
    """

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(click.STRING.convert(value, param, ctx))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            try:
                given: object = text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                given = text
            self.fail(f"{shown(given)} is not UTF-8 text.", param, ctx)
        return text


TEXT = Utf8Text()


class JsonValue(_AnyType):
    """A JSON argument, refused in one line whatever makes it unreadable."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = TEXT.convert(value, param, ctx)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.fail(f"{shown(text)} is not JSON: {exc}.", param, ctx)
        except (ValueError, RecursionError) as exc:
            # Valid JSON that Python will not read: an int over 4,300 digits,
            # or nesting deeper than the recursion limit.
            self.fail(f"{shown(text)} cannot be read as JSON: {json_problem(exc)}.", param, ctx)


#: Said in the --help of every duration option.
DURATION_FORMS = "a bare number is seconds; or 10s, '5 minutes', 1.5h, 250ms"
_BARE_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")


class Duration(_DurationType):
    """Every duration option's grammar: a bare number is seconds, as a number is
    in the Python API; anything else is an ``ms`` string ("10s", "1.5h").

    The Python API reads the *string* "100" as 100 ms, as ``ms`` does; but on a
    command line every value is a string, so that rule made "--delay 60" 60 ms
    while "--interval 60" was a minute. ``positive`` refuses 0: a loop interval
    of 0 would poll the database without pausing, and --every needs a period.
    """

    name = "duration"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = TEXT.convert(value, param, ctx).strip()
        given: float | str
        if _BARE_NUMBER.fullmatch(text):
            given = float(text)
        else:
            try:
                parse_ms(text)
            except InvalidDurationError:
                self.fail(f"{shown(text)} is not a duration ({DURATION_FORMS}).", param, ctx)
            given = text
        try:
            return to_timedelta(given, allow_zero=not self.positive)
        except InvalidDurationError as exc:
            self.fail(f"{shown(text)}: {exc.reason}.", param, ctx)


DURATION = Duration()
POSITIVE_DURATION = Duration(positive=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _job_rows(jobs: list[Job[Any]]) -> list[list[str]]:
    return [
        [
            j.id,
            j.queue,
            j.status.value,
            _when(j.run_at),
            f"{j.schedule_type.value.lower()} {j.schedule}" if j.schedule_type else "",
            j.custom_id or "",
        ]
        for j in jobs
    ]


@queue_cli.command("produce")
@click.option("--loop", is_flag=True, help="Keep producing until interrupted.")
@click.option(
    "--interval",
    type=POSITIVE_DURATION,
    default=None,
    help=f"Time between loops (default QUEUE_PRODUCE_INTERVAL): {DURATION_FORMS}.",
)
def produce_command(loop: bool, interval: timedelta | None) -> None:
    """Claim due jobs and hand them to the executor (what a cron ping does)."""
    from .worker import produce_loop

    if loop:
        _log_to_stderr()

    state = _state()
    try:
        if loop:
            every = interval or state.config.produce_interval
            produce_loop(state.queue, every.total_seconds(), report=click.echo)
        else:
            result = producer.produce(state)
            click.echo(json.dumps(result.as_dict()))
            if result.failed_deliveries:
                click.echo(_delivery_warning(result), err=True)
    except QueueError as exc:
        raise _fail(exc) from None


def _delivery_warning(result: ProduceResult) -> str:
    # Exit 0 all the same: the jobs are safe (released, or failed by their
    # retry policy) and a cron retrying every minute is what brings them through.
    return (
        f"Warning: {result.failed_deliveries} of {result.claimed} deliveries failed,"
        f" nothing ran for them; the last: {result.delivery_error}"
    )


@queue_cli.command("work")
@click.option("--concurrency", "-c", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option(
    "--interval",
    type=POSITIVE_DURATION,
    default="1s",
    show_default=True,
    help=f"Time between polls while idle: {DURATION_FORMS}.",
)
@click.option("--max-jobs", type=click.IntRange(1), default=None, help="Stop after this many.")
@click.option(
    "--grace",
    type=DURATION,
    default="30s",
    show_default=True,
    help=f"After SIGTERM/SIGINT, how long running jobs may finish: {DURATION_FORMS}.",
)
def work_command(
    concurrency: int, interval: timedelta, max_jobs: int | None, grace: timedelta
) -> None:
    """Produce and run jobs in this process until SIGTERM/SIGINT.

    The first signal stops claiming and lets running jobs finish for up to
    --grace; the second, or the grace's end, hands the unfinished ones back
    (due now, for another worker) and exits."""
    import threading

    from .worker import work

    _log_to_stderr()
    force = threading.Event()
    try:
        work(
            _state().queue,
            concurrency=concurrency,
            interval=interval.total_seconds(),
            max_jobs=max_jobs,
            report=click.echo,
            grace=grace.total_seconds(),
            force=force,
        )
    except QueueError as exc:
        raise _fail(exc) from None
    if force.is_set():
        # Handlers still running were handed back; Python cannot stop their
        # threads, and the interpreter would join them at exit: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@queue_cli.command("enqueue")
@click.argument("name", type=TEXT)
@click.argument("payload", type=JsonValue(), default="null")
@click.option("--delay", type=DURATION, help=f"Wait before the first run: {DURATION_FORMS}.")
@click.option("--id", "custom_id", type=TEXT, help="Custom id, unique among live jobs.")
@click.option("--override", is_flag=True, help="Replace a job with the same --id.")
@click.option("--cron", type=TEXT, help="5-field cron expression.")
@click.option("--tz", type=TEXT, help="IANA timezone of --cron.")
@click.option("--every", type=POSITIVE_DURATION, help=f"Repeat interval: {DURATION_FORMS}.")
@click.option("--times", type=int, help="Total runs of a repeating job.")
@click.option("--key", type=TEXT, help="The key a limited queue's limits hold per.")
def enqueue_command(
    name: str,
    payload: Any,
    delay: timedelta | None,
    custom_id: str | None,
    override: bool,
    cron: str | None,
    tz: str | None,
    every: timedelta | None,
    times: int | None,
    key: str | None,
) -> None:
    """Enqueue a job for queue NAME with a JSON PAYLOAD."""
    # Checked here to be said in flags: the Python API's messages for the same
    # mistakes name its keywords ("override=True needs id=").
    if override and custom_id is None:
        raise click.UsageError("--override needs --id: it replaces the job holding that id.")
    if tz is not None and cron is None:
        raise click.UsageError("--tz needs --cron: it is the cron's timezone.")
    if cron is not None and every is not None:
        raise click.UsageError("--cron and --every both given: a job repeats one way.")
    if times is not None and cron is None and every is None:
        raise click.UsageError("--times needs --cron or --every: it counts a repeating job's runs.")
    state = _state()
    try:
        # Looked up first only to say what happened: enqueue keeps (or with
        # --override replaces) a live job holding this custom id, and returns a
        # job either way.
        before = actions.get_by_custom_id(state, custom_id) if custom_id is not None else None
        job = enqueue.enqueue(
            state,
            name,
            payload,
            delay=delay,
            id=custom_id,
            override=override,
            cron=cron,
            tz=tz,
            every=every,
            times=times,
            key=key,
        )
    except QueueError as exc:
        raise _fail(exc) from None
    line = f"{job.status.value} at {_when(job.run_at)} UTC"
    # A finished job only gave up its custom id: it was neither kept nor replaced.
    live = before is not None and before.status in (JobStatus.SCHEDULED, JobStatus.RUNNING)
    if before is None or not live:
        click.echo(f"{job.id} {line}")
    elif override:
        how = "in place" if job.id == before.id else f"with job {job.id}"
        click.echo(f"replaced job {before.id} (custom id {custom_id!r}) {how}: {line}")
    elif job.id == before.id:
        click.echo(
            f"kept existing job {job.id} (custom id {custom_id!r}) {line};"
            " pass --override to replace it"
        )
    else:
        # The live job finished between the look-up and the enqueue.
        click.echo(f"{job.id} {line}")


@queue_cli.command("emit")
@click.argument("event", type=TEXT)
@click.argument("data", type=JsonValue(), default="null")
@click.option(
    "--id", "event_id", type=TEXT, help="The event's id: an id emitted already is skipped."
)
def emit_command(event: str, data: Any, event_id: str | None) -> None:
    """Emit EVENT with JSON DATA: start its handlers' jobs, wake the jobs waiting for it."""
    state = _state()
    try:
        before = actions.get_event(state, event_id) if event_id is not None else None
        emitted = emit_event(state, event, data, id=event_id)
    except QueueError as exc:
        raise _fail(exc) from None
    if before is not None:
        click.echo(
            f"event {emitted.id} was emitted already at {_when(emitted.created_at)} UTC:"
            " nothing done"
        )
        return
    click.echo(
        f"event {emitted.id} ({emitted.name}): started {len(emitted.started)} job(s),"
        f" woke {len(emitted.woke)}"
    )
    for job_id in emitted.started:
        click.echo(f"  started {job_id}")
    for job_id in emitted.woke:
        click.echo(f"  woke {job_id}")


@queue_cli.command("list")
@click.option("--status", type=TEXT, help="SCHEDULED, RUNNING, FAILED or COMPLETED.")
@click.option("--queue", "queue_name", type=TEXT, help="Only this queue.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def list_command(status: str | None, queue_name: str | None, limit: int) -> None:
    """List jobs, soonest first."""
    try:
        # jobs() may return an iterator over every match: read at most limit,
        # and inside the try, where its reads happen.
        found = actions.jobs(_state(), status=status, queue=queue_name, limit=limit, payloads=False)
        jobs = list(itertools.islice(found, limit))
    except QueueError as exc:
        raise _fail(exc) from None
    if not jobs:
        click.echo("No jobs.")
        return
    click.echo(
        format_table(
            ["ID", "QUEUE", "STATUS", "RUN AT (UTC)", "SCHEDULE", "CUSTOM ID"], _job_rows(jobs)
        )
    )


@queue_cli.command("show")
@click.argument("key", type=TEXT)
def show_command(key: str) -> None:
    """Show one job in full (JSON), by id or custom id (an id match wins)."""
    try:
        job = actions.find(_state(), key)
    except QueueError as exc:
        raise _fail(exc) from None
    if job is None:
        raise click.ClickException(f"No job with id or custom id {key!r}.")
    click.echo(json.dumps(job.as_dict(), indent=2, default=str))


@queue_cli.command("cancel")
@click.argument("job_id", type=TEXT)
def cancel_command(job_id: str) -> None:
    """Cancel a job: a SCHEDULED one at once, a RUNNING one at its next heartbeat."""
    try:
        job = actions.cancel(_state(), job_id)
    except QueueError as exc:
        raise _fail(exc) from None
    if job.status is JobStatus.CANCELLED:
        click.echo(f"{job.id} CANCELLED")
    else:
        click.echo(f"{job.id} RUNNING: asked to stop; it ends CANCELLED at its next heartbeat")


@queue_cli.command("result")
@click.argument("job_id", type=TEXT)
@click.option(
    "--wait",
    "wait_for",
    type=DURATION,
    default=None,
    help=f"Wait up to this long for the job to end: {DURATION_FORMS}.",
)
def result_command(job_id: str, wait_for: timedelta | None) -> None:
    """Print a COMPLETED job's result (JSON); exit 1 if the job has not completed."""
    state = _state()
    try:
        if wait_for is not None:
            job = actions.wait(state, job_id, wait_for)
        else:
            job = actions.require(state, job_id)
    except QueueError as exc:
        raise _fail(exc) from None
    if job.status is not JobStatus.COMPLETED:
        raise click.ClickException(f"Job {job.id} is {job.status.value}: it has no result.")
    click.echo(json.dumps(job.result))


@queue_cli.command("retry")
@click.argument("job_id", type=TEXT)
def retry_command(job_id: str) -> None:
    """Put a FAILED job back to SCHEDULED, due now."""
    try:
        job = actions.retry(_state(), job_id)
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(f"{job.id} {job.status.value}")


@queue_cli.command("delete")
@click.argument("job_id", type=TEXT)
def delete_command(job_id: str) -> None:
    """Delete a job."""
    try:
        deleted = actions.delete(_state(), job_id)
    except QueueError as exc:
        raise _fail(exc) from None
    if not deleted:
        raise click.ClickException(f"No job with id {job_id!r}.")
    click.echo(f"deleted {job_id}")


@queue_cli.command("pause")
@click.argument("name", type=TEXT)
def pause_command(name: str) -> None:
    """Stop claiming queue NAME's jobs (every process, from its next claim)."""
    try:
        actions.pause(_state(), name)
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(f"{name} paused: its jobs stay SCHEDULED; running ones finish")


@queue_cli.command("resume")
@click.argument("name", type=TEXT)
def resume_command(name: str) -> None:
    """Claim queue NAME's jobs again."""
    try:
        actions.resume(_state(), name)
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(f"{name} resumed")


@queue_cli.command("stats")
def stats_command() -> None:
    """Jobs per queue and status."""
    try:
        counts = actions.counts(_state())
    except QueueError as exc:
        raise _fail(exc) from None
    statuses = [s.value for s in JobStatus]
    queues = sorted({q for _, q in counts})
    rows = [[q, *(str(counts.get((s, q), 0)) for s in statuses)] for q in queues]
    rows.append(
        ["TOTAL", *(str(sum(n for (st, _), n in counts.items() if st == s)) for s in statuses)]
    )
    click.echo(format_table(["QUEUE", *statuses], rows))


@queue_cli.command("token")
def token_command() -> None:
    """Print the bearer token for GET|POST <prefix>/produce."""
    try:
        click.echo(produce_token_for(_state().config))
    except QueueError as exc:
        raise _fail(exc) from None


@queue_cli.command("sync-crons")
def sync_crons_command() -> None:
    """Make the table hold exactly the crons declared with @queue.cron."""
    try:
        stats = producer.sync_crons(_state())
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(", ".join(f"{k} {v}" for k, v in stats.items()))


@queue_cli.command("rotate-keys")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True)
def rotate_keys_command(batch: int) -> None:
    """Re-encrypt every payload with the newest of QUEUE_ENCRYPTION_KEYS."""
    try:
        count = actions.rotate_keys(_state(), batch=batch)
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(f"{count} payload(s) encrypted with the newest key")
