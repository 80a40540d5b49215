import itertools
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from flask_queue import InvalidRetryError, InvalidScheduleError
from flask_queue.scheduling import (
    next_cron,
    next_cron_times,
    next_every,
    retry_delays,
    validate_cron,
    zone,
)

UTC = timezone.utc
NY = ZoneInfo("America/New_York")


def test_cron_in_timezone() -> None:
    after = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)  # 07:00 in New York
    assert next_cron("0 9 * * *", "America/New_York", after) == datetime(
        2026, 1, 10, 14, 0, tzinfo=UTC
    )
    assert next_cron("0 9 * * *", "UTC", after) == datetime(2026, 1, 11, 9, 0, tzinfo=UTC)


def test_cron_across_spring_forward() -> None:
    # US clocks jump 02:00 -> 03:00 on 2026-03-08: 09:00 local moves from 14:00 to 13:00 UTC.
    before = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)
    fires = next_cron_times("0 9 * * *", "America/New_York", before, 2)
    assert fires == [
        datetime(2026, 3, 8, 13, 0, tzinfo=UTC),
        datetime(2026, 3, 9, 13, 0, tzinfo=UTC),
    ]
    assert all(f.astimezone(NY).hour == 9 for f in fires)


def test_cron_across_fall_back() -> None:
    # US clocks fall back 02:00 -> 01:00 on 2026-11-01: 09:00 local moves from 13:00 to 14:00 UTC.
    before = datetime(2026, 10, 31, 14, 0, tzinfo=UTC)
    fires = next_cron_times("0 9 * * *", "America/New_York", before, 2)
    assert fires == [
        datetime(2026, 11, 1, 14, 0, tzinfo=UTC),
        datetime(2026, 11, 2, 14, 0, tzinfo=UTC),
    ]


def test_hourly_cron_over_fall_back_hour_is_monotonic() -> None:
    start = datetime(2026, 11, 1, 4, 30, tzinfo=UTC)
    fires = next_cron_times("0 * * * *", "America/New_York", start, 4)
    assert fires == sorted(set(fires))
    assert all(b > a for a, b in itertools.pairwise(fires))


@pytest.mark.parametrize("expr", ["* * *", "61 * * * *", "not a cron", "* * * * * *", 5, None])
def test_invalid_cron(expr: object) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        validate_cron(expr)
    assert repr(expr) in str(info.value)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd"])
def test_invalid_timezone(name: str) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        zone(name)
    assert repr(name) in str(info.value)


def test_every_keeps_cadence_and_skips_missed_slots() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert next_every(start, hour, start + timedelta(minutes=5)) == start + hour
    # Producer down for 3.5 hours: one run now-ish, not three catch-up runs.
    assert next_every(start, hour, start + timedelta(hours=3, minutes=30)) == start + 4 * hour


def test_retry_policies() -> None:
    assert retry_delays(0) == []
    assert retry_delays(3) == [timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=40)]
    assert retry_delays(["10s", 60, timedelta(minutes=10)]) == [
        timedelta(seconds=10),
        timedelta(minutes=1),
        timedelta(minutes=10),
    ]
    assert max(retry_delays(100)) == timedelta(days=1)


@pytest.mark.parametrize("policy", [-1, 101, True, "3", ["10s", "soon"], 1.5])
def test_invalid_retry(policy: object) -> None:
    with pytest.raises(InvalidRetryError) as info:
        retry_delays(policy)
    assert ("soon" if isinstance(policy, list) else repr(policy)) in str(info.value)
