"""``flask queue ...``: thin click wrappers over ``Queue`` methods."""

from __future__ import annotations

import itertools
import json
import logging
from datetime import datetime
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from .errors import QueueError
from .extension import ProduceResult, Queue
from .job import Job, JobStatus

queue_cli = AppGroup("queue", help="Background jobs stored in the app's database.")


def _queue() -> Queue:
    state = current_app.extensions.get("queue")
    if state is None:
        raise click.ClickException("flask_queue is not initialised on this app.")
    return state.queue  # type: ignore[no-any-return]


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


#: Loop intervals: 0 or less would poll the database without pausing.
INTERVAL = click.FloatRange(min=0, min_open=True)


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
    type=INTERVAL,
    default=None,
    help="Seconds between loops (default QUEUE_PRODUCE_INTERVAL).",
)
def produce_command(loop: bool, interval: float | None) -> None:
    """Claim due jobs and hand them to the executor (what a cron ping does)."""
    from .worker import produce_loop

    if loop:
        _log_to_stderr()

    q = _queue()
    try:
        if loop:
            every = interval or q.state().config.produce_interval.total_seconds()
            produce_loop(q, every, report=click.echo)
        else:
            result = q.produce()
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
    "--interval", type=INTERVAL, default=1.0, show_default=True, help="Idle poll seconds."
)
@click.option("--max-jobs", type=click.IntRange(1), default=None, help="Stop after this many.")
def work_command(concurrency: int, interval: float, max_jobs: int | None) -> None:
    """Produce and run jobs in this process until SIGTERM/SIGINT."""
    from .worker import work

    _log_to_stderr()

    try:
        work(
            _queue(),
            concurrency=concurrency,
            interval=interval,
            max_jobs=max_jobs,
            report=click.echo,
        )
    except QueueError as exc:
        raise _fail(exc) from None


@queue_cli.command("enqueue")
@click.argument("name")
@click.argument("payload", default="null")
@click.option("--delay", help="e.g. 10s, '5 minutes', 1.5h")
@click.option("--id", "custom_id", help="Custom id, unique among live jobs.")
@click.option("--override", is_flag=True, help="Replace a job with the same --id.")
@click.option("--cron", help="5-field cron expression.")
@click.option("--tz", help="IANA timezone of --cron.")
@click.option("--every", help="Repeat interval, e.g. 1h.")
@click.option("--times", type=int, help="Total runs of a repeating job.")
def enqueue_command(
    name: str,
    payload: str,
    delay: str | None,
    custom_id: str | None,
    override: bool,
    cron: str | None,
    tz: str | None,
    every: str | None,
    times: int | None,
) -> None:
    """Enqueue a job for queue NAME with a JSON PAYLOAD."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{payload!r} is not JSON: {exc}", param_hint="PAYLOAD") from None
    q = _queue()
    try:
        # Looked up first only to say what happened: enqueue keeps (or with
        # --override replaces) a live job holding this custom id, and returns a
        # job either way.
        before = q.get_by_custom_id(custom_id) if custom_id is not None else None
        job = q.enqueue(
            name,
            data,
            delay=delay,
            id=custom_id,
            override=override,
            cron=cron,
            tz=tz,
            every=every,
            times=times,
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


@queue_cli.command("list")
@click.option("--status", help="SCHEDULED, RUNNING, FAILED or COMPLETED.")
@click.option("--queue", "queue_name", help="Only this queue.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def list_command(status: str | None, queue_name: str | None, limit: int) -> None:
    """List jobs, soonest first."""
    try:
        # jobs() may return an iterator over every match: read at most limit,
        # and inside the try, where its reads happen.
        found = _queue().jobs(status=status, queue=queue_name, limit=limit, payloads=False)
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
@click.argument("key")
def show_command(key: str) -> None:
    """Show one job in full (JSON), by id or custom id (an id match wins)."""
    try:
        job = _queue().store.find(key)
    except QueueError as exc:
        raise _fail(exc) from None
    if job is None:
        raise click.ClickException(f"No job with id or custom id {key!r}.")
    click.echo(json.dumps(job.as_dict(), indent=2, default=str))


@queue_cli.command("retry")
@click.argument("job_id")
def retry_command(job_id: str) -> None:
    """Put a FAILED job back to SCHEDULED, due now."""
    try:
        job = _queue().retry(job_id)
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(f"{job.id} {job.status.value}")


@queue_cli.command("delete")
@click.argument("job_id")
def delete_command(job_id: str) -> None:
    """Delete a job."""
    try:
        deleted = _queue().delete(job_id)
    except QueueError as exc:
        raise _fail(exc) from None
    if not deleted:
        raise click.ClickException(f"No job with id {job_id!r}.")
    click.echo(f"deleted {job_id}")


@queue_cli.command("pause")
@click.argument("name")
def pause_command(name: str) -> None:
    """Stop claiming queue NAME's jobs (every process, from its next claim)."""
    try:
        _queue().pause(name)
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(f"{name} paused: its jobs stay SCHEDULED; running ones finish")


@queue_cli.command("resume")
@click.argument("name")
def resume_command(name: str) -> None:
    """Claim queue NAME's jobs again."""
    try:
        _queue().resume(name)
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(f"{name} resumed")


@queue_cli.command("stats")
def stats_command() -> None:
    """Jobs per queue and status."""
    try:
        counts = _queue().store.counts()
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
        click.echo(_queue().produce_token())
    except QueueError as exc:
        raise _fail(exc) from None


@queue_cli.command("sync-crons")
def sync_crons_command() -> None:
    """Make the table hold exactly the crons declared with @queue.cron."""
    try:
        stats = _queue().sync_crons()
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(", ".join(f"{k} {v}" for k, v in stats.items()))


@queue_cli.command("rotate-keys")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True)
def rotate_keys_command(batch: int) -> None:
    """Re-encrypt every payload with the newest of QUEUE_ENCRYPTION_KEYS."""
    try:
        count = _queue().rotate_keys(batch=batch)
    except QueueError as exc:
        raise _fail(exc) from None
    click.echo(f"{count} payload(s) encrypted with the newest key")
