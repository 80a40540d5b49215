"""Enqueue with every option, on every configured database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import (
    InvalidDurationError,
    InvalidOptionError,
    InvalidPayloadError,
    InvalidRetryError,
    InvalidScheduleError,
    JobStatus,
    Queue,
    QueueError,
    ScheduleType,
    UnknownQueueError,
)
from tests.conftest import Clock, Recorder, all_databases, row_snapshot

UTC = timezone.utc


@pytest.fixture
def app(make_app: Any, queue: Queue) -> Any:
    # Enqueue tests look at stored rows, so nothing runs at enqueue: the thread
    # executor would race the assertions, "inline" would delete immediate jobs.
    app = make_app(queue, QUEUE_EXECUTOR="thread")
    app.extensions["queue"].executor.dispatch = lambda job_id: None
    with app.app_context():
        yield app


@all_databases
def test_delay_forms(app: Flask, queue: Queue, clock: Clock) -> None:
    now = clock()
    for delay, expected in [
        ("10s", timedelta(seconds=10)),
        ("5 minutes", timedelta(minutes=5)),
        ("1.5h", timedelta(hours=1.5)),
        ("2 days", timedelta(days=2)),
        ("100", timedelta(milliseconds=100)),
        (30, timedelta(seconds=30)),
        (0.5, timedelta(milliseconds=500)),
        (timedelta(hours=3), timedelta(hours=3)),
    ]:
        job = queue.enqueue("echo", {"d": str(delay)}, delay=delay)
        assert job.status is JobStatus.SCHEDULED
        stored = queue.get(job.id)
        assert stored is not None
        assert stored.run_at == now + expected, delay
        assert stored.payload == {"d": str(delay)}


@all_databases
def test_run_at_naive_is_utc_and_aware_is_converted(app: Flask, queue: Queue) -> None:
    naive = queue.enqueue("echo", 1, run_at=datetime(2030, 5, 1, 8, 30))
    paris = queue.enqueue(
        "echo", 2, run_at=datetime(2030, 5, 1, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    )
    assert queue.get(naive.id).run_at == datetime(2030, 5, 1, 8, 30, tzinfo=UTC)  # type: ignore[union-attr]
    assert queue.get(paris.id).run_at == datetime(2030, 5, 1, 8, 30, tzinfo=UTC)  # type: ignore[union-attr]


@all_databases
def test_immediate_job_is_due_and_dispatched(make_app: Any, queue: Queue, clock: Clock) -> None:
    app = make_app(queue, QUEUE_EXECUTOR="thread")
    sent: list[str] = []
    app.extensions["queue"].executor.dispatch = sent.append
    with app.app_context():
        job = queue.enqueue("echo", {"now": True})
        later = queue.enqueue("echo", {"now": False}, delay="1s")
        assert sent == [job.id]  # only the job due now, handed over by id
        stored = queue.get(job.id)
        assert stored is not None
        # Stored as a plain due job: the dispatch claims it.
        assert (stored.status, stored.attempt, stored.run_at) == (JobStatus.SCHEDULED, 0, clock())
        assert queue.get(later.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]


@all_databases
def test_lost_dispatch_is_taken_by_the_next_produce(
    make_app: Any, queue: Queue, recorder: Recorder
) -> None:
    app = make_app(queue, QUEUE_EXECUTOR="inline")
    executor = app.extensions["queue"].executor
    executor.dispatch = lambda job_id: None  # the process froze before dispatching
    with app.app_context():
        job = queue.enqueue("echo", "lost")
        assert recorder.calls == []
        # No lease to wait for: the job is due, the next produce runs it.
        assert queue.produce().claimed == 1
        assert recorder.calls == [("echo", "lost")]
        assert queue.get(job.id) is None


@all_databases
def test_dispatch_after_a_producer_claimed_runs_nothing(
    make_app: Any, queue: Queue, recorder: Recorder
) -> None:
    app = make_app(queue, QUEUE_EXECUTOR="inline")
    state = app.extensions["queue"]
    pending: list[str] = []
    state.executor.dispatch = pending.append
    with app.app_context():
        job = queue.enqueue("echo", "raced")
        (claimed,) = state.store.claim(10, state.config.lease)  # a producer won
        assert claimed.id == job.id
        before = row_snapshot(app)
        del state.executor.dispatch  # back to the real one
        state.executor.dispatch(pending[0])
        assert recorder.calls == []
        assert row_snapshot(app) == before


@all_databases
def test_custom_id_keeps_existing_unless_override(app: Flask, queue: Queue) -> None:
    first = queue.enqueue("echo", "a", id="booking-1", delay="1h")
    again = queue.enqueue("echo", "b", id="booking-1", delay="2h")
    assert again.id == first.id
    assert again.payload == "a"
    replaced = queue.enqueue("echo", "c", id="booking-1", delay="3h", override=True)
    # Replaced in place: same job id, new content (an atomic update, not delete+insert).
    assert (replaced.id, replaced.payload) == (first.id, "c")
    assert replaced.run_at == first.run_at + timedelta(hours=2)
    found = queue.get_by_custom_id("booking-1")
    assert found is not None
    assert (found.id, found.payload) == (replaced.id, "c")
    assert len(list(queue.jobs())) == 1


@all_databases
def test_completed_history_row_is_not_live(make_app: Any, queue: Queue) -> None:
    app = make_app(queue, QUEUE_EXECUTOR="inline", QUEUE_KEEP_COMPLETED="1 day")
    with app.app_context():
        done = queue.enqueue("echo", "first", id="report")
        assert queue.get(done.id).status is JobStatus.COMPLETED  # type: ignore[union-attr]
        fresh = queue.enqueue("echo", "second", id="report", delay="1h")
        assert fresh.id != done.id
        assert queue.get_by_custom_id("report").id == fresh.id  # type: ignore[union-attr]
        # The history row keeps its custom id for search; it just holds it no more.
        assert queue.get(done.id).custom_id == "report"  # type: ignore[union-attr]


@all_databases
def test_cron_job_first_run_in_its_timezone(app: Flask, queue: Queue, clock: Clock) -> None:
    # 2026-03-01 12:00 UTC is 07:00 in New York: the 09:00 run is at 14:00 UTC.
    job = queue.enqueue("echo", None, cron="0 9 * * *", tz="America/New_York", times=3)
    stored = queue.get(job.id)
    assert stored is not None
    assert stored.run_at == datetime(2026, 3, 1, 14, 0, tzinfo=UTC)
    assert (stored.schedule_type, stored.schedule, stored.tz, stored.count_limit) == (
        ScheduleType.CRON,
        "0 9 * * *",
        "America/New_York",
        3,
    )


@all_databases
def test_every_first_run_one_interval_out_unless_delayed(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    plain = queue.enqueue("echo", None, every="5 minutes")
    delayed = queue.enqueue("echo", None, every="1h", delay="10s")
    assert queue.get(plain.id).run_at == clock() + timedelta(minutes=5)  # type: ignore[union-attr]
    assert queue.get(delayed.id).run_at == clock() + timedelta(seconds=10)  # type: ignore[union-attr]
    # Stored canonically as whole milliseconds, whatever form it was given in.
    assert queue.get(plain.id).schedule == "300000"  # type: ignore[union-attr]
    assert queue.get(plain.id).interval == timedelta(minutes=5)  # type: ignore[union-attr]
    seconds = queue.enqueue("echo", None, every=90)
    assert queue.get(seconds.id).schedule == "90000"  # type: ignore[union-attr]


@all_databases
def test_retry_option_is_stored(app: Flask, queue: Queue) -> None:
    job = queue.enqueue("echo", None, delay="1h", retry=["10s", "1m"])
    assert queue.get(job.id).retry == [10.0, 60.0]  # type: ignore[union-attr]
    job = queue.enqueue("echo", None, delay="1h", retry=2)
    assert queue.get(job.id).retry == [10.0, 20.0]  # type: ignore[union-attr]


@all_databases
def test_typed_handle_enqueue_and_call(app: Flask, queue: Queue, recorder: Recorder) -> None:
    handle = queue.handlers["echo"]
    job = handle.enqueue({"x": 1}, delay="1m")
    assert job.queue == "echo"
    handle(job)
    assert recorder.calls == [("echo", {"x": 1})]


@all_databases
def test_enqueue_many_is_one_statement(app: Flask, queue: Queue) -> None:
    engine = app.extensions["queue"].store.engine
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        jobs = queue.enqueue_many("echo", [{"n": i} for i in range(300)], delay="1m")
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1
    assert len(jobs) == 300
    assert len({j.id for j in jobs}) == 300
    stored = list(queue.jobs())
    assert sorted(j.payload["n"] for j in stored) == list(range(300))


@all_databases
def test_get_delete_and_jobs_filters(app: Flask, queue: Queue) -> None:
    a = queue.enqueue("echo", "a", delay="1m")
    b = queue.enqueue("boom", "b", delay="2m")
    assert {j.id for j in queue.jobs(queue="echo")} == {a.id}
    assert {j.id for j in queue.jobs(status="SCHEDULED")} == {a.id, b.id}
    assert {j.id for j in queue.jobs(status=JobStatus.SCHEDULED, queue="boom")} == {b.id}
    assert list(queue.jobs(status="failed")) == []
    assert [j.id for j in queue.jobs(limit=1)] == [a.id]
    assert queue.delete(a.id) is True
    assert queue.delete(a.id) is False
    assert queue.get(a.id) is None
    with pytest.raises(InvalidOptionError, match="'DONE'"):
        queue.jobs(status="DONE")


BAD_INPUT: list[tuple[str, dict[str, Any], type[QueueError], str]] = [
    ("nope", {}, UnknownQueueError, "'nope'"),
    ("echo", {"payload": {1, 2}}, InvalidPayloadError, "{1, 2}"),
    ("echo", {"payload": (1, 2)}, InvalidPayloadError, "(1, 2)"),
    ("echo", {"payload": {1: "int key"}}, InvalidPayloadError, "{1: 'int key'}"),
    ("echo", {"payload": float("nan")}, InvalidPayloadError, "nan"),
    ("echo", {"payload": datetime(2020, 1, 1)}, InvalidPayloadError, "datetime"),
    ("echo", {"cron": "61 * * * *"}, InvalidScheduleError, "'61 * * * *'"),
    ("echo", {"cron": "every day"}, InvalidScheduleError, "'every day'"),
    ("echo", {"cron": "0 9 * * *", "tz": "Mars/Base"}, InvalidScheduleError, "'Mars/Base'"),
    ("echo", {"delay": "soon"}, InvalidDurationError, "'soon'"),
    ("echo", {"delay": "-5s"}, InvalidDurationError, "'-5s'"),
    ("echo", {"delay": -3}, InvalidDurationError, "-3"),
    ("echo", {"every": "0s"}, InvalidDurationError, "'0s'"),
    ("echo", {"every": "fortnightly"}, InvalidDurationError, "'fortnightly'"),
    ("echo", {"cron": "0 9 * * *", "every": "1h"}, InvalidOptionError, "'0 9 * * *'"),
    ("echo", {"every": "1h", "times": 0}, InvalidScheduleError, "times 0"),
    ("echo", {"every": "1h", "times": -2}, InvalidScheduleError, "times -2"),
    ("echo", {"times": 3}, InvalidOptionError, "times=3"),
    ("echo", {"tz": "Europe/Paris"}, InvalidOptionError, "'Europe/Paris'"),
    ("echo", {"delay": "1s", "run_at": datetime(2030, 1, 1)}, InvalidOptionError, "delay"),
    ("echo", {"run_at": "tomorrow"}, InvalidOptionError, "'tomorrow'"),
    ("echo", {"retry": ["10s", "later"]}, InvalidRetryError, "'later'"),
    ("echo", {"retry": -1}, InvalidRetryError, "-1"),
    ("echo", {"id": ""}, InvalidOptionError, "''"),
    ("echo", {"override": True}, InvalidOptionError, "override"),
]


@all_databases
@pytest.mark.parametrize(("name", "options", "error", "named"), BAD_INPUT)
def test_bad_input_is_refused_and_stores_nothing(
    app: Flask,
    queue: Queue,
    name: str,
    options: dict[str, Any],
    error: type[QueueError],
    named: str,
) -> None:
    queue.enqueue("echo", "existing", id="keep-me", delay="1h")
    before = row_snapshot(app)
    options = dict(options)
    payload = options.pop("payload", {"ok": True})
    with pytest.raises(error) as info:
        queue.enqueue(name, payload, **options)
    assert named in str(info.value)
    assert isinstance(info.value, QueueError)
    assert row_snapshot(app) == before
    if "id" not in options and "override" not in options:
        # enqueue_many validates every row before it writes any.
        with pytest.raises(error):
            queue.enqueue_many(name, [{"ok": 1}, payload], **options)
        assert row_snapshot(app) == before


@all_databases
def test_enqueue_many_refuses_custom_id(app: Flask, queue: Queue) -> None:
    before = row_snapshot(app)
    with pytest.raises(InvalidOptionError, match="'id'"):
        queue.enqueue_many("echo", [1, 2], id="x")
    assert row_snapshot(app) == before
