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

from .errors import InvalidDurationError

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


@functools.lru_cache(maxsize=256)
def parse_ms(text: str) -> float:
    """Return the milliseconds an ``ms``-style string stands for.

    Raises :class:`InvalidDurationError` naming the text when it does not parse.
    """
    stripped = text.strip()
    match = _PATTERN.match(stripped) if len(stripped) <= 100 else None
    if match is None:
        raise InvalidDurationError(
            f"Invalid duration {text!r}: use a form like '10s', '5 minutes', '1.5h' or '2 days'."
        )
    unit = (match.group("unit") or "ms").lower()
    canonical = _UNIT_ALIASES.get(unit)
    if canonical is None:
        raise InvalidDurationError(
            f"Invalid duration {text!r}: unknown unit {unit!r}"
            " (use ms, s, m, h, d, w, y or their long forms)."
        )
    return float(match.group("num")) * _MS_PER_UNIT[canonical]


def to_timedelta(value: object, *, name: str = "duration", allow_zero: bool = True) -> timedelta:
    """Turn any accepted duration form into a non-negative ``timedelta``.

    ``name`` is the option or config key, so the error says which one was wrong.
    """
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        # bool is an int subclass; True seconds is never what anybody meant.
        raise InvalidDurationError(f"Invalid {name} {value!r}: expected a duration, not a bool.")
    elif isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidDurationError(f"Invalid {name} {value!r}: must be finite.")
        if abs(value) * 1000 > _MAX_MS:
            raise _too_large(name, value)
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        try:
            ms = parse_ms(value)
        except InvalidDurationError as exc:
            raise InvalidDurationError(f"Invalid {name}: {exc}") from None
        if not math.isfinite(ms) or abs(ms) > _MAX_MS:
            raise _too_large(name, value)
        result = timedelta(milliseconds=ms)
    else:
        raise InvalidDurationError(
            f"Invalid {name} {value!r}: expected a timedelta, seconds, or a string like '10s'."
        )
    if result > MAX_DURATION:
        raise _too_large(name, value)
    if result < timedelta(0) or (not allow_zero and result == timedelta(0)):
        bound = "positive" if not allow_zero else "zero or positive"
        raise InvalidDurationError(f"Invalid {name} {value!r}: must be {bound}.")
    return result


def _too_large(name: str, value: object) -> InvalidDurationError:
    return InvalidDurationError(f"Invalid {name} {value!r}: too large (at most 100 years).")


def to_milliseconds(interval: timedelta) -> int:
    """An interval as the whole number of milliseconds it is stored as (rounded)."""
    return round(interval / timedelta(milliseconds=1))
