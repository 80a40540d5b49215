"""How the dashboard (and CLI) words things: schedules, times, errors, payloads."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from . import history
from .durations import to_milliseconds
from .errors import QueueError
from .history import ERROR_LINE
from .job import Job
from .scheduling import Schedule, ScheduleType

_SENSITIVE = re.compile(r"pass(word)?|secret|token|api[_-]?key|authorization|cookie|card", re.I)
MASK = "••••••"


def schedule_words(job: Job[Any]) -> str:
    """ "At 09:00 AM (Europe/Paris)", "every 5 minutes", or "" for a one-off job."""
    if job.schedule_type is ScheduleType.CRON and job.schedule:
        from cron_descriptor import get_description

        try:
            words = str(get_description(job.schedule))
        except Exception:  # noqa: BLE001 - never let wording break a page
            words = job.schedule
        return f"{words} ({job.tz or 'UTC'})"
    if job.schedule_type is ScheduleType.EVERY and job.schedule:
        try:
            return f"every {duration_words(Schedule.of(job).interval)}"
        except QueueError:
            return f"every {job.schedule} (unreadable)"
    return ""


_UNITS = (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000), ("second", 1000))


def duration_words(interval: timedelta | None) -> str:
    """ "12 days", "1 hour 30 minutes", "1.5 seconds", "250 ms": exact, not rounded."""
    if interval is None:
        return ""
    ms = to_milliseconds(interval)
    parts = []
    for name, size in _UNITS:
        if ms >= size and (ms % size == 0 or name != "second"):
            amount, ms = divmod(ms, size)
            parts.append(f"{amount} {name}{'' if amount == 1 else 's'}")
    if ms >= 1000:
        parts.append(f"{ms / 1000:g} seconds")
    elif ms:
        parts.append(f"{ms} ms")
    return " ".join(parts)


def next_runs(job: Job[Any], count: int = 5) -> list[datetime]:
    """The next ``count`` run times of a repeating job (respecting ``times``)."""
    if job.schedule_type is None or not job.schedule:
        return []
    if job.count_limit is not None:
        count = max(0, min(count, job.count_limit - job.count))
    try:
        return Schedule.of(job).upcoming(job.run_at, count)
    except QueueError:
        return []  # an unreadable stored schedule: the page still renders


def relative(when: datetime | None, now: datetime) -> str:
    """ "in 5 min", "3 h ago", "just now"."""
    if when is None:
        return "—"
    delta = when - now
    future = delta > timedelta(0)
    seconds = abs(delta.total_seconds())
    if seconds < 5:
        return "just now"
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min"), (1, "s")):
        if seconds >= size:
            amount = int(seconds // size)
            text = f"{amount} {unit}"
            break
    return f"in {text}" if future else f"{text} ago"


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def error_type(reason: str | None) -> str:
    """The exception's type name from a stored traceback's last line."""
    if not reason:
        return "unknown"
    for line in reversed(reason.strip().splitlines()):
        match = _ERROR_LINE.match(line.strip())
        if match and not line.startswith(" "):
            return match.group(1)
    return "unknown"


def error_line(job: Job[Any]) -> str:
    """The job's last error in one line: its ``error``, or for a row written
    before that column existed, the end of its traceback."""
    return job.error or error_summary(job.reason)


def error_cut(job: Job[Any]) -> bool:
    """Whether the stored one-line error was cut to the column's width."""
    return len(error_line(job)) >= ERROR_LINE


_FRAME = re.compile(r'^  File "')


def error_text(job: Job[Any]) -> str:
    """The job's last error in full, however long: the exception's lines at the
    end of its traceback (after the last frame and its source lines), the whole
    reason when it is no traceback (a refusal, a lost lease), else the stored line."""
    if not job.reason:
        return job.error or ""
    lines = job.reason.strip().splitlines()
    start = 0
    for i, line in enumerate(lines):
        if _FRAME.match(line):
            start = i + 1
            # The frame's source line and its ^^^ markers, indented by four.
            while start < len(lines) and lines[start].startswith("    "):
                start += 1
    return "\n".join(lines[start:]).strip() or error_line(job)


def error_summary(reason: str | None) -> str:
    """The last line of a traceback: ``RuntimeError: boom``."""
    if not reason:
        return ""
    lines = [line for line in reason.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def attempts(job: Job[Any]) -> list[dict[str, Any]]:
    """The job's attempt history for its page, newest first.

    Each row: ``first``/``last`` attempt numbers (equal but for a gap),
    ``at`` (aware datetime or None), ``ms``, ``outcome``, ``error``. Numbers
    with no entry become one "no outcome" row: a claim that was released
    undelivered, or a run whose process died (the job's error says which last
    happened). The current attempt of a RUNNING job is shown as running.
    """
    rows: list[dict[str, Any]] = []
    seen = 0
    for item in sorted(job.history or [], key=lambda e: int(e.get("n", 0))):
        n = int(item.get("n", 0))
        if seen and n > seen + 1:
            rows.append(_attempt_row(seen + 1, n - 1, "no outcome"))
        try:
            at: datetime | None = datetime.fromisoformat(item["at"])
        except (KeyError, TypeError, ValueError):
            at = None
        outcome = str(item.get("outcome", ""))
        rows.append(_attempt_row(n, n, outcome, at, item.get("ms"), item.get("error")))
        seen = max(seen, n)
    running = job.status.value == "RUNNING"
    current = job.attempt - 1 if running else job.attempt
    if seen and current > seen:
        rows.append(_attempt_row(seen + 1, current, "no outcome"))
    if running:
        state = "running" if job.started_at else "claimed"
        rows.append(_attempt_row(job.attempt, job.attempt, state, job.started_at))
    rows.reverse()
    return rows


def failures_kept(job: Job[Any]) -> tuple[int, int]:
    """How many of the attempts its history keeps failed (raised or were
    refused), and how many it keeps: failures apart from runs."""
    kept = job.history or []
    failed = sum(1 for item in kept if item.get("outcome") in (history.FAILED, history.REFUSED))
    return failed, len(kept)


def _attempt_row(
    first: int,
    last: int,
    outcome: str,
    at: datetime | None = None,
    ms: int | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {"first": first, "last": last, "at": at, "ms": ms, "outcome": outcome, "error": error}


def milliseconds(ms: int | None) -> str:
    """ "250 ms", "1.5 s", "2 min 5 s"; "—" for None."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.3g} s"
    minutes, seconds = divmod(ms // 1000, 60)
    return f"{minutes} min {seconds} s"


#: The charts' drawing box (SVG user units); the page scales it to its width.
CHART_WIDTH = 600
CHART_HEIGHT = 120


def _minute(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)


def charts_since(now: datetime) -> tuple[datetime, datetime]:
    """The first minute of the hour chart and the first hour of the day chart."""
    minute = _minute(now)
    return minute - timedelta(minutes=59), minute.replace(minute=0) - timedelta(hours=23)


def run_charts(
    minutes: list[tuple[datetime, int, int]],
    hours: list[tuple[datetime, int, int]],
    now: datetime,
) -> list[dict[str, Any]]:
    """The overview's two charts from (start, succeeded, failed) counts: the
    last hour per minute and the last 24 hours per hour, each bar a stack of
    succeeded under failed, the current minute (or hour) last."""
    by_minute = {_minute(m): (ok, bad) for m, ok, bad in minutes}
    by_hour = {_minute(h).replace(minute=0): (ok, bad) for h, ok, bad in hours}
    end = _minute(now)
    hour = [end - timedelta(minutes=i) for i in range(59, -1, -1)]
    last_hour = end.replace(minute=0)
    day = [last_hour - timedelta(hours=i) for i in range(23, -1, -1)]
    return [
        _chart("Last hour", "per minute", [(t, *by_minute.get(t, (0, 0))) for t in hour], "%H:%M"),
        _chart(
            "Last 24 hours",
            "per hour",
            [(t, *by_hour.get(t, (0, 0))) for t in day],
            "%H:00",
        ),
    ]


def _chart(
    title: str, unit: str, points: list[tuple[datetime, int, int]], fmt: str
) -> dict[str, Any]:
    peak = max((ok + bad for _, ok, bad in points), default=0)
    scale = (CHART_HEIGHT - 2) / peak if peak else 0.0
    width = CHART_WIDTH / len(points)
    bars = []
    for i, (start, ok, bad) in enumerate(points):
        # A count of one stays visible beside a peak of thousands.
        h_ok = max(ok * scale, 1.0) if ok else 0.0
        h_bad = max(bad * scale, 1.0) if bad else 0.0
        bars.append(
            {
                "x": round(i * width + width * 0.1, 2),
                "w": round(width * 0.8, 2),
                "ok": ok,
                "bad": bad,
                "y_ok": round(CHART_HEIGHT - h_ok, 2),
                "h_ok": round(h_ok, 2),
                "y_bad": round(CHART_HEIGHT - h_ok - h_bad, 2),
                "h_bad": round(h_bad, 2),
                "label": f"{start.strftime(fmt)} UTC: {ok:,} succeeded, {bad:,} failed",
            }
        )
    return {
        "title": title,
        "unit": unit,
        "bars": bars,
        "peak": peak,
        "succeeded": sum(ok for _, ok, _ in points),
        "failed": sum(bad for _, _, bad in points),
        "first": points[0][0].strftime(fmt),
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
    }


def mask(value: Any) -> Any:
    """Hide values under keys that look secret (password, token, api_key, ...)."""
    if isinstance(value, dict):
        return {k: MASK if _SENSITIVE.search(str(k)) else mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def elapsed(since: datetime, now: datetime) -> str:
    """ "12 s", "3 min", "2 h": how long since ``since``."""
    text = relative(since, now)
    return "under 5 s" if text == "just now" else text.removesuffix(" ago").removeprefix("in ")


def pretty_result(result: Any) -> str:
    """A job's result as the page shows it: JSON, indented, masked like payloads."""
    return json.dumps(mask(result), indent=2, sort_keys=True, ensure_ascii=False)


#: Characters of a step's result the job page shows.
STEP_PREVIEW = 200


def step_preview(record: Any) -> str:
    """A step's result on one line, masked like payloads and cut to
    ``STEP_PREVIEW``; a sleep's wake time as the time it is."""
    if record.result is None:
        return "timed out: no event" if record.kind == "wait" else "null"
    value = json.loads(record.result)
    if record.kind == "sleep":
        return f"until {value.replace('T', ' ')[:19]} UTC"
    if record.kind == "wait":
        # The event that met the wait (a timed-out wait's result is null).
        value = {"event": value["name"], "id": value["id"], "data": value["data"]}
    text = json.dumps(mask(value), sort_keys=True, ensure_ascii=False)
    return text if len(text) <= STEP_PREVIEW else text[: STEP_PREVIEW - 1] + "…"


def wait_match(wait: Any) -> str:
    """A wait's ``match`` on one line, masked like payloads."""
    text = json.dumps(mask(json.loads(wait.match)), sort_keys=True, ensure_ascii=False)
    return text if len(text) <= STEP_PREVIEW else text[: STEP_PREVIEW - 1] + "…"


def event_preview(event: Any) -> str:
    """An event's data on one line, masked like payloads (the Events page)."""
    text = json.dumps(mask(event.data), sort_keys=True, ensure_ascii=False)
    return text if len(text) <= STEP_PREVIEW else text[: STEP_PREVIEW - 1] + "…"


def pretty_payload(payload: Any) -> str:
    return json.dumps(mask(payload), indent=2, sort_keys=True, ensure_ascii=False)


#: Characters of a payload the job page shows; the rest is a download.
PAYLOAD_EXCERPT = 64 * 1024


def payload_excerpt(payload: Any) -> tuple[str, int]:
    """The pretty payload, cut at ``PAYLOAD_EXCERPT`` characters, and its full
    length if it was cut (0 if not): a big payload's page stays small."""
    text = pretty_payload(payload)
    if len(text) <= PAYLOAD_EXCERPT:
        return text, 0
    return text[:PAYLOAD_EXCERPT], len(text)


#: Where a queue name or an id may wrap: after one of these, between its words.
_BREAK_AFTER = re.compile(r"(?<=[._\-:/])")


def breakable(name: str) -> Markup:
    """``name`` escaped, with a line break allowed after each separator (``.``
    ``_`` ``-`` ``:`` ``/``): a long name wraps between its words, not inside one."""
    return Markup("<wbr>").join(escape(part) for part in _BREAK_AFTER.split(name))


def limits(settings: dict[str, Any] | None) -> str:
    """A queue's stored limits in words: "one at a time", "3 at once", "10 per 1s"."""
    if not settings:
        return ""
    words = []
    concurrency = settings.get("concurrency")
    if concurrency == 1:
        words.append("one at a time")
    elif concurrency is not None:
        words.append(f"{concurrency:,} at once")
    rate = settings.get("rate")
    if rate is not None:
        count, window = rate
        words.append(f"{count:,} per {duration_words(window)}")
    if settings.get("fair"):
        words.append("fair across keys")
    return ", ".join(words)


def capped(count: int, cap: int) -> str:
    return f"{cap:,}+" if count > cap else f"{count:,}"
