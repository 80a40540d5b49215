"""Enqueue options -> row fields: every check, and schedules in canonical form.

Nothing is written before :func:`plan` (and :func:`encode_payload`) pass, so bad
input raises a :class:`~flask_queue.errors.QueueError` naming the value and
leaves the table as it was.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypedDict, Union

from .durations import MAX_DURATION, Duration, to_timedelta
from .errors import (
    InvalidOptionError,
    InvalidPayloadError,
    InvalidResultError,
    InvalidScheduleError,
    QueueError,
    UnknownQueueError,
    shown,
)
from .job import JobStatus
from .scheduling import Schedule, retry_delays

UTC = timezone.utc
if TYPE_CHECKING:
    from sqlalchemy.orm import Session, scoped_session

RetryPolicy = Union[int, Sequence[Duration]]
#: ``session=``: the caller's Flask-SQLAlchemy session (or a plain ``Session``).
AnySession = Union["Session", "scoped_session[Any]"]


class EnqueueOptions(TypedDict, total=False):
    """The keywords of ``enqueue`` (``Queue.enqueue``, ``Handler.enqueue``): one
    declaration, typed for callers, instead of the list restated per method."""

    delay: Duration | None
    run_at: datetime | None
    id: str | None
    override: bool
    cron: str | None
    tz: str | None
    every: Duration | None
    times: int | None
    retry: RetryPolicy | None
    priority: int | None
    timeout: Duration | None
    debounce: Duration | None
    max_wait: Duration | None
    unique_for: Duration | None
    key: str | None
    after: Sequence[Any] | None
    session: AnySession | None


#: What ``EnqueueOptions`` names, checked at run time (a typo is an error).
ENQUEUE_OPTIONS = frozenset(EnqueueOptions.__annotations__)
#: The options that name or window one job: ``enqueue_many`` refuses them.
ONE_JOB_OPTIONS = frozenset({"id", "override", "debounce", "max_wait", "unique_for", "after"})
#: What ``enqueue_many`` takes.
MANY_OPTIONS = ENQUEUE_OPTIONS - ONE_JOB_OPTIONS
#: The options ``plan`` reads (the rest are the enqueue's own).
PLAN_OPTIONS = ENQUEUE_OPTIONS - {"id", "override", "session", "priority", "key", "after"}


def check_options(options: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    """An ``InvalidOptionError`` naming the keywords ``where`` does not take."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InvalidOptionError(
            f"{where} does not take {', '.join(map(repr, unknown))}"
            f" (it takes {', '.join(sorted(allowed))})."
        )


#: ``times`` is stored in a 32-bit integer column on every database.
MAX_TIMES = 2**31 - 1
#: Custom ids and queue names are stored in 255-character columns.
MAX_NAME = 255
#: Priorities: a higher number is claimed first among due jobs; 0 by default.
MIN_PRIORITY, MAX_PRIORITY = -100, 100


def check_custom_id(custom_id: object) -> str:
    if (
        not isinstance(custom_id, str)
        or not custom_id
        or len(custom_id) > MAX_NAME
        or "\x00" in custom_id
    ):
        raise InvalidOptionError(
            f"Invalid id {shown(custom_id)}: use a non-empty string of at most {MAX_NAME}"
            " characters, without NUL."
        )
    return check_text(custom_id, "id")


def check_key(key: object, origin: str = "") -> str:
    """A job's key (``enqueue(key=)``, or what the handler's key function
    returned: ``origin`` names it): a non-empty str of at most 255 characters,
    stored exactly like a custom id."""
    if not isinstance(key, str) or not key or len(key) > MAX_NAME or "\x00" in key:
        raise InvalidOptionError(
            f"Invalid key {shown(key)}{origin}: use a non-empty string of at most {MAX_NAME}"
            " characters, without NUL."
        )
    return check_text(key, f"key{origin}")


def check_event_name(name: object, what: str = "event") -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\x00" in name:
        raise InvalidOptionError(
            f"Invalid {what} name {shown(name)}: use a non-empty string of at most"
            f" {MAX_NAME} characters, without NUL (e.g. 'booking.confirmed')."
        )
    return check_text(name, f"{what} name")


def check_text(text: str, name: str) -> str:
    """``text`` if it can be stored: every database takes text as UTF-8, which
    has no form for a lone surrogate ("\\udc80", what Python makes of bytes
    that were not UTF-8), so the driver would raise UnicodeEncodeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidOptionError(
            f"Invalid {name} {shown(text)}: not valid Unicode text (a lone surrogate at"
            f" position {exc.start}, e.g. from bytes that were not UTF-8)."
        ) from None
    return text


def plan(
    handlers: Collection[str],
    now: datetime,
    name: str,
    *,
    delay: Duration | None = None,
    run_at: datetime | None = None,
    cron: str | None = None,
    tz: str | None = None,
    every: Duration | None = None,
    times: int | None = None,
    retry: RetryPolicy | None = None,
    priority: int = 0,
    timeout: Duration | None = None,
    debounce: Duration | None = None,
    max_wait: Duration | None = None,
    unique_for: Duration | None = None,
) -> dict[str, Any]:
    """Validate the options and return the row fields they decide."""
    if name not in handlers:
        known = ", ".join(sorted(handlers)) or "none"
        raise UnknownQueueError(
            f"Unknown queue {shown(name)}: register it with @queue.handler({shown(name)})"
            f" (registered: {known})."
        )
    if cron is not None and every is not None:
        raise InvalidOptionError(
            f"cron={shown(cron)} and every={shown(every)} both given: a job repeats one way."
        )
    if delay is not None and run_at is not None:
        raise InvalidOptionError("delay= and run_at= both given: pass one of them.")
    check_priority(priority)
    limit = check_timeout(timeout)
    if tz is not None and cron is None:
        raise InvalidOptionError(f"tz={shown(tz)} given without cron=: it is the cron's timezone.")
    if times is not None:
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= MAX_TIMES:
            raise InvalidScheduleError(
                f"Invalid times {shown(times)}: must be an int from 1 to {MAX_TIMES}."
            )
        if cron is None and every is None:
            raise InvalidOptionError(f"times={times} given without cron= or every=.")
    window = _check_windows(
        debounce, max_wait, unique_for, delay=delay, run_at=run_at, repeats=cron or every
    )
    start: datetime | None = None
    if debounce is not None:
        start = now + min(window["debounce"], window.get("max_wait", window["debounce"]))
    if run_at is not None:
        start = _check_run_at(run_at, now)
    elif delay is not None:
        start = now + to_timedelta(delay, name="delay")
    schedule: Schedule | None = None
    if cron is not None:
        schedule = Schedule.parse("CRON", cron, tz or "UTC")  # checks the cron and zone
    elif every is not None:
        schedule = Schedule.every(every)
    when = schedule.first(now, start) if schedule is not None else start or now
    if when - now > MAX_DURATION:
        # A cron that fires rarely can push the first run past the bound.
        raise InvalidScheduleError(
            f"Invalid schedule: the first run would be at {when.isoformat()}, more than"
            " 100 years ahead."
        )
    retry_seconds = (
        json.dumps([d.total_seconds() for d in retry_delays(retry)]) if retry is not None else None
    )
    # A job due now is stored SCHEDULED like any other and then dispatched by
    # id (claimed on the executor's side): if that dispatch never happens, the
    # job is simply due, and the next produce takes it.
    return {
        "queue": name,
        "run_at": when,
        "status": JobStatus.SCHEDULED.value,
        "schedule_type": schedule.type.value if schedule else None,
        "schedule": schedule.stored if schedule else None,
        "count_limit": times,
        "tz": schedule.tz if schedule and cron is not None else None,
        "occurrence_at": when if schedule else None,
        "retry": retry_seconds,
        "priority": priority,
        "timeout_ms": None if limit is None else round(limit.total_seconds() * 1000),
        "latest_run_at": now + window["max_wait"] if "max_wait" in window else None,
        "unique_until": now + window["unique_for"] if "unique_for" in window else None,
    }


def _check_windows(
    debounce: Duration | None,
    max_wait: Duration | None,
    unique_for: Duration | None,
    *,
    delay: Duration | None,
    run_at: datetime | None,
    repeats: Any,
) -> dict[str, timedelta]:
    """The debounce/max_wait/unique_for windows as timedeltas, refusing the
    combinations that contradict each other (``id=`` is checked by enqueue)."""
    out: dict[str, timedelta] = {}
    for name, value in (("debounce", debounce), ("max_wait", max_wait), ("unique_for", unique_for)):
        if value is None:
            continue
        span = to_timedelta(value, name=name)
        if span <= timedelta(0):
            raise InvalidOptionError(f"Invalid {name} {shown(value)}: use a duration more than 0.")
        out[name] = span
    if "max_wait" in out and "debounce" not in out:
        raise InvalidOptionError("max_wait= caps a debounce: it needs debounce=.")
    if "debounce" in out and "unique_for" in out:
        raise InvalidOptionError(
            "debounce= and unique_for= both given: a debounce replaces the job, a unique"
            " window keeps it; pass one."
        )
    if out and repeats:
        raise InvalidOptionError("debounce= and unique_for= are for one-off jobs, not cron/every.")
    if "debounce" in out and (delay is not None or run_at is not None):
        raise InvalidOptionError("debounce= sets the run time: drop delay=/run_at=.")
    return out


def check_priority(priority: object) -> int:
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise InvalidOptionError(
            f"Invalid priority {shown(priority)}: use an int from {MIN_PRIORITY} to {MAX_PRIORITY}"
            " (higher runs first; 0 by default)."
        )
    return priority


#: The most starts a rate limit counts per window: the claim keeps that many start
#: times in the queue's row and rewrites them under its lock.
MAX_RATE = 10_000
#: Rate limit periods by name: ``"10/s"``, ``"100/m"``, ``"1000/h"``, ``"5000/d"``.
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_rate(rate: object) -> tuple[int, timedelta]:
    """``"10/s"`` -> (10, 1 s): at most that many starts in any window that long.
    The period is ``s``/``m``/``h``/``d`` or a duration (``"30/5m"``)."""
    count, _, period = rate.partition("/") if isinstance(rate, str) else ("", "", "")
    window: timedelta | None = None
    if period.strip() in _PERIODS:
        window = timedelta(seconds=_PERIODS[period.strip()])
    elif period.strip():
        try:
            window = to_timedelta(period.strip(), name="rate")
        except QueueError:
            window = None
    if (
        window is None
        # Stored as whole milliseconds: a shorter or finer window would round to
        # another one (0 ms: no limit at all).
        or window < timedelta(milliseconds=1)
        or window % timedelta(milliseconds=1)
        or not count.strip().isdigit()
        or not 1 <= int(count) <= MAX_RATE
    ):
        raise InvalidOptionError(
            f'Invalid rate {shown(rate)}: use starts per period, like "10/s", "100/m",'
            f' "1000/h" or "30/5m", at most {MAX_RATE:,} per period.'
        )
    return int(count), window


def _check_run_at(run_at: object, now: datetime) -> datetime:
    if not isinstance(run_at, datetime):
        raise InvalidOptionError(f"Invalid run_at {shown(run_at)}: expected a datetime.")
    # A naive datetime is UTC, as the README says. An aware one is converted
    # here, where failing is a refusal: in UTC a time on the first or last day
    # of the calendar can fall outside it (0001-01-01 at +05:00 is year 0).
    try:
        when = run_at.astimezone(UTC) if run_at.tzinfo else run_at.replace(tzinfo=UTC)
    except OverflowError:
        raise InvalidOptionError(
            f"Invalid run_at {run_at.isoformat()}: in UTC it falls outside the years 1-9999."
        ) from None
    if when - now > MAX_DURATION:
        raise InvalidOptionError(f"Invalid run_at {run_at.isoformat()}: more than 100 years ahead.")
    return when


def encode_payload(payload: Any, max_bytes: int | None = None) -> str:
    """JSON text of ``payload``, refusing anything that would not come back equal,
    or that is longer than ``max_bytes`` bytes (``QUEUE_MAX_PAYLOAD``)."""
    try:
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayloadError(
            f"Payload {shown(payload)} is not JSON-serialisable: {json_problem(exc)}."
        ) from None
    # json.dumps escapes every non-ASCII character: one character, one byte.
    if max_bytes is not None and len(text) > max_bytes:
        raise InvalidPayloadError(
            f"Payload is {len(text):,} bytes of JSON, more than QUEUE_MAX_PAYLOAD"
            f" ({max_bytes:,}): store large data elsewhere and enqueue its key."
        )
    try:
        back = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidPayloadError(
            f"Payload {shown(payload)} does not survive a JSON round trip: {json_problem(exc)}."
        ) from None
    if back != payload or type(back) is not type(payload):
        raise InvalidPayloadError(
            f"Payload {shown(payload)} does not survive a JSON round trip (it would come"
            f" back as {shown(back)}); use lists, dicts with str keys, str, numbers,"
            " bools and None."
        )
    return text


#: The longest run timeout: a day (a longer job is a workflow of steps).
MAX_TIMEOUT = timedelta(days=1)


def check_timeout(timeout: Duration | None) -> timedelta | None:
    """``timeout=`` as a timedelta (None: none), or an InvalidOptionError naming it."""
    if timeout is None:
        return None
    try:
        value = to_timedelta(timeout)
    except QueueError as exc:
        raise InvalidOptionError(f"Invalid timeout {shown(timeout)}: {exc}") from None
    # Stored in whole milliseconds: less than one would be stored as none.
    if value < timedelta(milliseconds=1) or value > MAX_TIMEOUT:
        raise InvalidOptionError(
            f"Invalid timeout {shown(timeout)}: use a duration from 1 ms to a day."
        )
    return value


def encode_result(value: Any, max_bytes: int | None = None) -> str | None:
    """JSON text of a handler's return value (None for None), or an
    ``InvalidResultError`` naming what is wrong with it."""
    if value is None:
        return None
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidResultError(
            f"The handler returned {shown(value)}, which is not JSON: {json_problem(exc)}."
            " Return JSON data (lists, dicts with str keys, str, numbers, bools, None)."
        ) from None
    if max_bytes is not None and len(text) > max_bytes:
        raise InvalidResultError(
            f"The handler returned {len(text):,} bytes of JSON, more than QUEUE_MAX_PAYLOAD"
            f" ({max_bytes:,}): store large results elsewhere and return their key."
        )
    return text


def json_problem(exc: Exception) -> str:
    """What JSON could not do, in words a queue's user can act on."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        # Python's own hint (raise sys.set_int_max_str_digits) would not help:
        # every process that runs the job would have to raise it too.
        return (
            f"it has an integer of more than {sys.get_int_max_str_digits():,} digits"
            " (send such a number as a string)"
        )
    return str(exc)


__all__ = [
    "MAX_TIMES",
    "RetryPolicy",
    "check_custom_id",
    "check_priority",
    "check_text",
    "encode_payload",
    "json_problem",
    "parse_rate",
    "plan",
]
