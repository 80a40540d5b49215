from datetime import timedelta

import pytest

from flask_queue import InvalidDurationError
from flask_queue.durations import parse_ms, to_timedelta


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("100", 100),
        ("1.5", 1.5),
        (".5ms", 0.5),
        ("10ms", 10),
        ("1 millisecond", 1),
        ("2 milliseconds", 2),
        ("3 msecs", 3),
        ("3 msec", 3),
        ("10s", 10_000),
        ("1 sec", 1_000),
        ("2 secs", 2_000),
        ("1 second", 1_000),
        ("5 seconds", 5_000),
        ("1m", 60_000),
        ("1 min", 60_000),
        ("2 mins", 120_000),
        ("1 minute", 60_000),
        ("5 minutes", 300_000),
        ("1.5h", 5_400_000),
        ("1 hr", 3_600_000),
        ("2 hrs", 7_200_000),
        ("1 hour", 3_600_000),
        ("3 hours", 10_800_000),
        ("1d", 86_400_000),
        ("1 day", 86_400_000),
        ("2 days", 172_800_000),
        ("1w", 604_800_000),
        ("1 week", 604_800_000),
        ("2 weeks", 1_209_600_000),
        ("1y", 31_557_600_000),
        ("1 yr", 31_557_600_000),
        ("2 yrs", 63_115_200_000),
        ("1 year", 31_557_600_000),
        ("1 years", 31_557_600_000),
        ("10 S", 10_000),
        ("5 MINUTES", 300_000),
        ("1.5H", 5_400_000),
        ("  10s  ", 10_000),
        ("10    s", 10_000),
        ("-1s", -1_000),
    ],
)
def test_ms_grammar(text: str, ms: float) -> None:
    assert parse_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize(
    "text", ["", "s", "10 parsecs", "1.2.3s", "ten seconds", "10s ago", "1" * 101]
)
def test_ms_rejects_and_names_the_text(text: str) -> None:
    with pytest.raises(InvalidDurationError) as info:
        parse_ms(text)
    assert repr(text.strip())[:40].rstrip("'") in str(info.value) or text == ""


def test_timedelta_forms() -> None:
    assert to_timedelta(timedelta(minutes=2)) == timedelta(minutes=2)
    assert to_timedelta(30) == timedelta(seconds=30)
    assert to_timedelta(0.25) == timedelta(milliseconds=250)
    assert to_timedelta("100") == timedelta(milliseconds=100)
    assert to_timedelta("2 days") == timedelta(days=2)


@pytest.mark.parametrize(
    "value", [-1, "-5s", timedelta(seconds=-1), float("inf"), float("nan"), True, None, [1], "abc"]
)
def test_timedelta_rejects_with_name(value: object) -> None:
    with pytest.raises(InvalidDurationError) as info:
        to_timedelta(value, name="delay")
    assert "delay" in str(info.value)


def test_zero_refused_when_not_allowed() -> None:
    with pytest.raises(InvalidDurationError, match="every '0s'"):
        to_timedelta("0s", name="every", allow_zero=False)
