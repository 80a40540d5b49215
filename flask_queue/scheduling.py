"""When a job runs next: cron (croniter, in the job's timezone), intervals, retries.

All functions take and return timezone-aware UTC datetimes; the store turns them
into the naive UTC values the columns hold.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from .durations import to_milliseconds, to_timedelta
from .errors import (
    InvalidDurationError,
    InvalidRetryError,
    InvalidScheduleError,
    QueueError,
    shown,
)

UTC = timezone.utc


class ScheduleType(str, enum.Enum):
    CRON = "CRON"
    EVERY = "EVERY"

    def __str__(self) -> str:
        return self.value


class Repeating(Protocol):
    """What :meth:`Schedule.of` reads of a job: a ``Job`` has these fields."""

    @property
    def id(self) -> str: ...
    @property
    def schedule_type(self) -> ScheduleType | None: ...
    @property
    def schedule(self) -> str | None: ...
    @property
    def tz(self) -> str | None: ...


#: Retry delays used for ``retry=N``: 10 s, 20 s, 40 s ... capped at one day.
DEFAULT_BACKOFF_BASE = timedelta(seconds=10)
DEFAULT_BACKOFF_CAP = timedelta(days=1)
#: Quirrel caps a retry list at 10 entries; we allow more but not unbounded.
MAX_RETRIES = 100


def zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name``, or :class:`InvalidScheduleError` naming it."""
    if not isinstance(name, str) or not name:
        raise InvalidScheduleError(
            f"Invalid timezone {shown(name)}: use an IANA name like 'Europe/Paris'."
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(
            f"Invalid timezone {shown(name)}: use an IANA name like 'Europe/Paris'."
        ) from None


def validate_cron(expr: object) -> str:
    """Return ``expr`` if it is a valid 5-field cron expression that fires.

    A cron that parses but can never fire (``"0 0 31 2 *"``) is refused here:
    accepted, it would make croniter raise later, on the run path.
    """
    if not isinstance(expr, str):
        raise InvalidScheduleError(
            f"Invalid cron expression {shown(expr)}: expected a string like '0 9 * * *'."
        )
    fields = expr.split()
    if len(fields) != 5:
        raise InvalidScheduleError(
            f"Invalid cron expression {shown(expr)}: it has {len(fields)} fields; use five"
            f" ({' '.join(name.replace(' ', '-') for name, _, _ in _FIELDS)}), e.g. '0 9 * * *'."
        )
    if not croniter.is_valid(expr):
        raise InvalidScheduleError(f"Invalid cron expression {shown(expr)}: {_cron_fault(fields)}.")
    try:
        croniter(expr, _CRON_PROBE).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidScheduleError(
            f"Invalid cron expression {shown(expr)}: it never fires (no such date)."
        ) from None
    return expr


#: The five fields: name, lowest and highest value (croniter takes 7 for Sunday too).
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


def _cron_fault(fields: list[str]) -> str:
    """Which field of a five-field expression croniter refuses, and why.

    croniter only says "[61 * * * *] is not acceptable, out of range"; each
    field is tried alone (the others ``*``) to find the one to name.
    """
    for position, (name, low, high) in enumerate(_FIELDS):
        alone = ["*"] * 5
        alone[position] = fields[position]
        if croniter.is_valid(" ".join(alone)):
            continue
        # Numbers outside the range, in a list, a range or before a step
        # ("0,61", "1-70", "70/5"); a step ("*/90") or an nth weekday ("1#5")
        # has a range of its own. Long digit strings are out of range unread
        # (int() refuses over 4,300 digits).
        for part in fields[position].split(","):
            for number in re.findall(r"\d+", re.split(r"[/#]", part)[0]):
                if len(number) > 4 or not low <= int(number) <= high:
                    short = number if len(number) <= 8 else number[:8] + "..."
                    return f"{name} {short} is out of range {low}-{high}"
        return (
            f"{name} field {shown(fields[position], 40)} is not valid (use {low}-{high}, '*',"
            " a range 'a-b', a list 'a,b' or a step '*/n')"
        )
    return "croniter cannot read it (each field alone is valid, together they are not)"


#: Where validate_cron looks for a first fire time: before any leap day croniter
#: searches past, so "0 0 29 2 *" is found.
_CRON_PROBE = datetime(2001, 1, 1)


def _fixed_time(expr: str) -> bool:
    """Whether ``expr`` names fixed times of day (no ``*`` in minute or hour).

    Vixie cron's rule for a clock set back (DST fall-back): entries at fixed
    times run once in the repeated hour; entries with a wildcard in the minute
    or hour field run on the new time again (an hourly job runs 25 times that day).
    """
    minute, hour = expr.split()[:2]
    return not (minute.startswith("*") or hour.startswith("*"))


def cron_times(
    expr: str, tz: str, after: datetime, *, inclusive: bool = False
) -> Iterator[datetime]:
    """Fire times of ``expr`` in zone ``tz`` after ``after`` (UTC in and out).

    ``inclusive`` also yields ``after`` itself when it is a fire time. In a
    repeated (fall-back) hour a fixed-time entry fires at the first of the two
    wall-clock times only; in a skipped (spring-forward) hour croniter fires
    right after the jump. Both as cron does.
    """
    local = after.astimezone(zone(tz))
    fixed = _fixed_time(expr)
    on_time = local.second == 0 and local.microsecond == 0 and croniter.match(expr, local)
    if inclusive and on_time and not (fixed and _second_of_repeated(local)):
        yield local.astimezone(UTC)
    it = croniter(expr, local)
    while True:
        fire = it.get_next(datetime).astimezone(UTC)
        if fixed and _second_of_repeated(fire.astimezone(local.tzinfo)):
            continue
        yield fire


def _second_of_repeated(local: datetime) -> bool:
    """True for the second occurrence of a wall-clock time a fall-back repeats."""
    return local.fold == 1 and local.utcoffset() != local.replace(fold=0).utcoffset()


def next_cron(expr: str, tz: str, after: datetime, *, inclusive: bool = False) -> datetime:
    """The first fire time of ``expr`` in zone ``tz`` after ``after`` (UTC);
    ``inclusive``: at or after."""
    return next(cron_times(expr, tz, after, inclusive=inclusive))


def next_cron_times(expr: str, tz: str, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times, for the dashboard and the CLI."""
    return list(itertools.islice(cron_times(expr, tz, after), count))


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


@dataclass(frozen=True)
class Schedule:
    """A repeating job's schedule, parsed from its row in exactly one place.

    The row stores it canonically: ``CRON`` keeps the expression and ``tz``;
    ``EVERY`` keeps the interval as a whole number of milliseconds (``"3600000"``).
    Display text ("every 1 hour") is made from this, never stored. The same
    decimal string is what ``ms`` reads as milliseconds, so a release that
    parsed ``every`` with the duration grammar reads the canonical form right.
    """

    type: ScheduleType
    cron: str | None = None
    tz: str = "UTC"
    interval: timedelta | None = None

    @classmethod
    def every(cls, value: object) -> Schedule:
        interval = to_timedelta(value, name="every", allow_zero=False)
        if to_milliseconds(interval) < 1:
            raise InvalidDurationError(f"Invalid every {shown(value)}: at least 1 ms.")
        return cls(ScheduleType.EVERY, interval=timedelta(milliseconds=to_milliseconds(interval)))

    @classmethod
    def parse(cls, schedule_type: str | ScheduleType, schedule: str, tz: str | None) -> Schedule:
        """The schedule a row holds; :class:`InvalidScheduleError` naming it if unreadable."""
        kind = ScheduleType(schedule_type)
        if kind is ScheduleType.CRON:
            validate_cron(schedule)
            zone(tz or "UTC")
            return cls(kind, cron=schedule, tz=tz or "UTC")
        if schedule.isdigit():
            return cls(kind, interval=timedelta(milliseconds=int(schedule)))
        # Rows written before the canonical form kept the text as given.
        try:
            return cls.every(_LEGACY_SECONDS.sub(_legacy_seconds, schedule))
        except QueueError:
            raise InvalidScheduleError(
                f"Invalid stored interval {schedule!r}: expected milliseconds."
            ) from None

    @classmethod
    def of(cls, job: Repeating) -> Schedule:
        """The schedule of a repeating job (see :meth:`parse`)."""
        if job.schedule_type is None or job.schedule is None:
            raise InvalidScheduleError(f"Job {job.id!r} does not repeat.")
        return cls.parse(job.schedule_type, job.schedule, job.tz)

    @property
    def stored(self) -> str:
        """The canonical ``schedule`` column value."""
        if self.type is ScheduleType.CRON:
            assert self.cron is not None
            return self.cron
        assert self.interval is not None
        return str(to_milliseconds(self.interval))

    def first(self, now: datetime, start: datetime | None) -> datetime:
        """The first run: ``start`` (delay/run_at) or now, then on the schedule.

        A cron runs at its next fire time at or after that; an interval runs
        at ``start``, or one interval from now (like ``setInterval``).
        """
        if self.type is ScheduleType.CRON:
            assert self.cron is not None
            return next_cron(self.cron, self.tz, start or now, inclusive=True)
        assert self.interval is not None
        return start or now + self.interval

    def after(self, occurrence: datetime, now: datetime) -> datetime:
        """The occurrence after ``occurrence`` (the slot that just ran, not the
        retry time it ran at), never in the past: missed slots are skipped."""
        if self.type is ScheduleType.CRON:
            assert self.cron is not None
            return next_cron(self.cron, self.tz, max(now, occurrence))
        assert self.interval is not None
        return next_every(occurrence, self.interval, now)

    def upcoming(self, start: datetime, count: int) -> list[datetime]:
        """``start`` and the occurrences after it: ``count`` in all."""
        if count <= 0:
            return []
        if self.type is ScheduleType.CRON:
            assert self.cron is not None
            return [start, *next_cron_times(self.cron, self.tz, start, count - 1)]
        assert self.interval is not None
        return [start + self.interval * i for i in range(count)]


# "1.0368e+06s": what an earlier release stored for a 12-day interval.
_LEGACY_SECONDS = re.compile(r"^(\d+(?:\.\d+)?e[+-]?\d+)s$", re.IGNORECASE)


def _legacy_seconds(match: re.Match[str]) -> str:
    return f"{float(match.group(1)) * 1000:.0f}"


def retry_delays(policy: object, *, name: str = "retry") -> list[timedelta]:
    """Normalise a retry policy to the list of delays between attempts.

    ``retry=3`` means up to three retries after the first failure (four runs), with
    the default exponential backoff; ``retry=["10s", "1m"]`` means two retries with
    those delays; ``retry=0`` or ``[]`` means none.
    """
    if isinstance(policy, bool):
        raise InvalidRetryError(
            f"Invalid {name} {shown(policy)}: use an int or a list of durations."
        )
    if isinstance(policy, int):
        if not 0 <= policy <= MAX_RETRIES:
            raise InvalidRetryError(
                f"Invalid {name} {shown(policy)}: must be between 0 and {MAX_RETRIES}."
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
    raise InvalidRetryError(f"Invalid {name} {shown(policy)}: use an int or a list of durations.")
