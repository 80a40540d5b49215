from datetime import datetime, timedelta, timezone

from flask_queue import Job, JobStatus, ScheduleType
from flask_queue.present import (
    MASK,
    capped,
    error_summary,
    error_type,
    mask,
    next_runs,
    relative,
    schedule_words,
)

UTC = timezone.utc
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _job(**kw: object) -> Job[object]:
    return Job(id="j", queue="q", payload=None, run_at=NOW, status=JobStatus.SCHEDULED, **kw)  # type: ignore[arg-type]


def test_schedule_words() -> None:
    cron = _job(schedule_type=ScheduleType.CRON, schedule="0 9 * * 1-5", tz="Europe/Paris")
    assert schedule_words(cron) == "At 09:00 AM, Monday through Friday (Europe/Paris)"
    assert (
        schedule_words(_job(schedule_type=ScheduleType.EVERY, schedule="5 minutes"))
        == "every 5 minutes"
    )
    assert schedule_words(_job()) == ""


def test_next_runs_respect_times() -> None:
    every = _job(schedule_type=ScheduleType.EVERY, schedule="1h", count=1, count_limit=3)
    assert next_runs(every) == [NOW, NOW + timedelta(hours=1)]
    cron = _job(schedule_type=ScheduleType.CRON, schedule="0 * * * *", tz="UTC")
    assert next_runs(cron, 3) == [NOW, NOW + timedelta(hours=1), NOW + timedelta(hours=2)]


def test_relative() -> None:
    assert relative(NOW + timedelta(minutes=5, seconds=3), NOW) == "in 5 min"
    assert relative(NOW - timedelta(hours=3), NOW) == "3 h ago"
    assert relative(NOW, NOW) == "just now"
    assert relative(None, NOW) == "—"


def test_error_type_and_summary() -> None:
    reason = 'Traceback (most recent call last):\n  File "x.py", line 1\n    boom()\nmod.BoomError: it broke\n'
    assert error_type(reason) == "mod.BoomError"
    assert error_summary(reason) == "mod.BoomError: it broke"
    assert error_type(None) == "unknown"


def test_mask_and_capped() -> None:
    assert mask({"user": "ada", "password": "x", "nested": [{"api_key": "k"}]}) == {
        "user": "ada",
        "password": MASK,
        "nested": [{"api_key": MASK}],
    }
    assert capped(10_001, 10_000) == "10,000+"
    assert capped(42, 10_000) == "42"
