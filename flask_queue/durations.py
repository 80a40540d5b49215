"""Durations in the forms every ``delay``-like option and config key accepts.

A ``timedelta``; a number of seconds (``int``/``float``); or a string in the grammar
of the ``ms`` npm package that the seed (and Quirrel, Vercel) used: ``"10s"``,
``"5 minutes"``, ``"1.5h"``, ``"2 days"``. As in ``ms``, a bare ``"100"`` is 100
*milliseconds* — unlike a bare Python number, which is seconds. That asymmetry is
``ms``'s and users porting from it rely on it, so it is kept and documented.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import timedelta
from typing import Union

from .errors import InvalidDurationError, shown

Duration = Union[timedelta, int, float, str]

#: The longest duration any option takes. A bound exists so that ``now + delay``
#: (and a retry's or an interval's next time) can never overflow a ``datetime``
#: inside the runner, where an exception would leave the job RUNNING; a century
#: is far beyond any real schedule and far inside year 9999.
MAX_DURATION = timedelta(days=36_525)
_MAX_MS = MAX_DURATION / timedelta(milliseconds=1)

_MS_PER_UNIT = {
    "ms": 1.0,
    "s": 1000.0,
    "m": 60_000.0,
    "h": 3_600_000.0,
    "d": 86_400_000.0,
    "w": 604_800_000.0,
    "y": 31_557_600_000.0,  # 365.25 days, as in ms
}

_UNIT_ALIASES = {
    **dict.fromkeys(("milliseconds", "millisecond", "msecs", "msec", "ms"), "ms"),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), "s"),
    **dict.fromkeys(("minutes", "minute", "mins", "min", "m"), "m"),
    **dict.fromkeys(("hours", "hour", "hrs", "hr", "h"), "h"),
    **dict.fromkeys(("days", "day", "d"), "d"),
    **dict.fromkeys(("weeks", "week", "w"), "w"),
    **dict.fromkeys(("years", "year", "yrs", "yr", "y"), "y"),
}

# ms's own pattern: optional sign, digits with an optional decimal part (".5" too),
# optional spaces, optional unit. ms caps input at 100 characters; so do we.
_PATTERN = re.compile(r"^(?P<num>-?(?:\d+)?\.?\d+) *(?P<unit>[a-z]+)?$", re.IGNORECASE)


#: How a string that is not a duration is answered.
_FORMS = "use a form like '10s', '5 minutes', '1.5h' or '2 days'"
_TOO_LARGE = "too large (at most 100 years)"


class _Refused(Exception):
    """Why a value is not a duration, worded to end a sentence that names it."""


def _refusal(name: str, value: object, reason: str) -> InvalidDurationError:
    # One sentence naming the option and the value once: the reason never
    # repeats them, so wrapping it cannot say "Invalid x: Invalid duration ...".
    error = InvalidDurationError(f"Invalid {name} {shown(value)}: {reason}.")
    error.reason = reason
    return error


@functools.lru_cache(maxsize=256)
def _ms(text: str) -> float:
    stripped = text.strip()
    match = _PATTERN.match(stripped) if len(stripped) <= 100 else None
    if match is None:
        raise _Refused(_FORMS)
    unit = (match.group("unit") or "ms").lower()
    canonical = _UNIT_ALIASES.get(unit)
    if canonical is None:
        raise _Refused(f"unknown unit {unit!r} (use ms, s, m, h, d, w, y or their long forms)")
    return float(match.group("num")) * _MS_PER_UNIT[canonical]


def parse_ms(text: str) -> float:
    """Return the milliseconds an ``ms``-style string stands for.

    Raises :class:`InvalidDurationError` naming the text when it does not parse.
    """
    try:
        return _ms(text)
    except _Refused as why:
        raise _refusal("duration", text, str(why)) from None


def to_timedelta(value: object, *, name: str = "duration", allow_zero: bool = True) -> timedelta:
    """Turn any accepted duration form into a non-negative ``timedelta``.

    ``name`` is the option or config key, so the error says which one was wrong.
    """
    try:
        return _timedelta(value, allow_zero)
    except _Refused as why:
        raise _refusal(name, value, str(why)) from None


def _timedelta(value: object, allow_zero: bool) -> timedelta:
    bound = "positive" if not allow_zero else "zero or positive"
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        # bool is an int subclass; True seconds is never what anybody meant.
        raise _Refused("expected a duration, not a bool")
    elif isinstance(value, (int, float)):
        # An int is compared as it is: turned into a float first, one past
        # 1e308 would raise OverflowError instead of being refused.
        if isinstance(value, float) and not math.isfinite(value):
            raise _Refused("must be finite")
        if value < 0:
            raise _Refused(f"must be {bound}")
        if value * 1000 > _MAX_MS:
            raise _Refused(_TOO_LARGE)
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        ms = _ms(value)
        if not math.isfinite(ms) or abs(ms) > _MAX_MS:
            raise _Refused(_TOO_LARGE)
        result = timedelta(milliseconds=ms)
    else:
        raise _Refused("expected a timedelta, seconds, or a string like '10s'")
    if result > MAX_DURATION:
        raise _Refused(_TOO_LARGE)
    if result < timedelta(0) or (not allow_zero and result == timedelta(0)):
        raise _Refused(f"must be {bound}")
    return result


def to_milliseconds(interval: timedelta) -> int:
    """An interval as the whole number of milliseconds it is stored as (rounded)."""
    return round(interval / timedelta(milliseconds=1))
