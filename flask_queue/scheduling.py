"""When a job runs next: cron (croniter, in the job's timezone), intervals, retries.

All functions take and return timezone-aware UTC datetimes; the store turns them
into the naive UTC values the columns hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .durations import to_timedelta
from .errors import InvalidDurationError, InvalidRetryError, InvalidScheduleError

UTC = timezone.utc

#: Retry delays used for ``retry=N``: 10 s, 20 s, 40 s ... capped at one day.
DEFAULT_BACKOFF_BASE = timedelta(seconds=10)
DEFAULT_BACKOFF_CAP = timedelta(days=1)
#: Quirrel caps a retry list at 10 entries; we allow more but not unbounded.
MAX_RETRIES = 100


def zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name``, or :class:`InvalidScheduleError` naming it."""
    if not isinstance(name, str) or not name:
        raise InvalidScheduleError(
            f"Invalid timezone {name!r}: use an IANA name like 'Europe/Paris'."
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(
            f"Invalid timezone {name!r}: use an IANA name like 'Europe/Paris'."
        ) from None


def validate_cron(expr: object) -> str:
    """Return ``expr`` if it is a valid 5-field cron expression."""
    if not isinstance(expr, str) or len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise InvalidScheduleError(
            f"Invalid cron expression {expr!r}: use five fields, e.g. '0 9 * * *'."
        )
    return expr


def next_cron(expr: str, tz: str, after: datetime) -> datetime:
    """The first fire time of ``expr`` in zone ``tz`` strictly after ``after`` (UTC)."""
    local = after.astimezone(zone(tz))
    fire = croniter(expr, local).get_next(datetime)
    return fire.astimezone(UTC)


def next_cron_times(expr: str, tz: str, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times, for the dashboard and the CLI."""
    it = croniter(expr, after.astimezone(zone(tz)))
    return [it.get_next(datetime).astimezone(UTC) for _ in range(count)]


def next_every(previous: datetime, interval: timedelta, now: datetime) -> datetime:
    """The next slot of a fixed-rate schedule that started at ``previous``.

    Keeps the cadence (``previous + k * interval``) but never returns a time in the
    past: a producer that was down for a while runs the job once, not once per
    missed slot.
    """
    nxt = previous + interval
    if nxt <= now:
        missed = (now - previous) // interval
        nxt = previous + interval * (missed + 1)
    return nxt


def retry_delays(policy: object, *, name: str = "retry") -> list[timedelta]:
    """Normalise a retry policy to the list of delays between attempts.

    ``retry=3`` means up to three retries after the first failure (four runs), with
    the default exponential backoff; ``retry=["10s", "1m"]`` means two retries with
    those delays; ``retry=0`` or ``[]`` means none.
    """
    if isinstance(policy, bool):
        raise InvalidRetryError(f"Invalid {name} {policy!r}: use an int or a list of durations.")
    if isinstance(policy, int):
        if not 0 <= policy <= MAX_RETRIES:
            raise InvalidRetryError(
                f"Invalid {name} {policy!r}: must be between 0 and {MAX_RETRIES}."
            )
        return [
            min(DEFAULT_BACKOFF_BASE * (2 ** min(i, 20)), DEFAULT_BACKOFF_CAP)
            for i in range(policy)
        ]
    if isinstance(policy, Sequence) and not isinstance(policy, (str, bytes)):
        if len(policy) > MAX_RETRIES:
            raise InvalidRetryError(
                f"Invalid {name}: {len(policy)} entries, at most {MAX_RETRIES} allowed."
            )
        try:
            return [to_timedelta(item, name=f"{name} delay") for item in policy]
        except InvalidDurationError as exc:
            raise InvalidRetryError(str(exc)) from None
    raise InvalidRetryError(f"Invalid {name} {policy!r}: use an int or a list of durations.")
