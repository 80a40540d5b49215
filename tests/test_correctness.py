"""Run-path correctness (issue 7): each test names the defect it guards against.

Each defect's test failed on the code before its fix, on the database where the
defect lives (items 10 and 11 on MariaDB, 13 on SQLite); a few guards pass on the
old code by design (they keep a fix from overreaching: the hourly cron over a
fall-back, a runner clock behind the claimer's). Storage behaviours run on every
configured database.
"""

from __future__ import annotations

import logging
import threading
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import (
    ConfigError,
    InvalidOptionError,
    InvalidScheduleError,
    InvalidStatusError,
    Job,
    JobStatus,
    Queue,
    QueueError,
    ScheduleType,
    StorageError,
)
from flask_queue.scheduling import next_cron, next_cron_times
from tests.conftest import Clock, Recorder, all_databases, row_snapshot, server_databases

UTC = timezone.utc
LEASE = timedelta(minutes=1)


def _store(app: Flask) -> Any:
    return app.extensions["queue"].store


def _set_columns(app: Flask, job_id: str, **values: Any) -> None:
    """Write a row the way an older release (or a hand edit) might have left it."""
    store = _store(app)
    with store.engine.begin() as conn:
        conn.execute(sa.update(store.table).where(store.table.c.id == job_id).values(**values))


def _job_page(app: Flask, job_id: str) -> int:
    app.debug = True  # the dashboard opens without a guard in debug mode
    return int(app.test_client().get(f"/_queue/job/{job_id}").status_code)


# -- 1. one "due" predicate for every claim path ---------------------------------


@all_databases
def test_late_dispatch_does_not_claim_the_next_occurrence(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    job = queue.enqueue("echo", "tick", every="1h", delay="1s")
    clock.advance(2)
    queue.produce()  # another producer ran this occurrence
    assert recorder.payloads("echo") == ["tick"]
    assert _store(app).claim_one(job.id, LEASE) is None  # the late dispatch
    stored = queue.get(job.id)
    assert stored is not None and stored.status is JobStatus.SCHEDULED


@all_databases
def test_late_dispatch_does_not_claim_a_retry_before_its_backoff(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    job = queue.enqueue("boom", "x", delay="1s")
    clock.advance(2)
    queue.produce()  # fails; retry due in 10 s
    assert _store(app).claim_one(job.id, LEASE) is None
    clock.advance(10)
    claimed = _store(app).claim_one(job.id, LEASE)
    assert claimed is not None and claimed.id == job.id


# -- 2. a cron's first run is on its schedule, at or after delay/run_at ------------


@all_databases
def test_cron_with_delay_first_runs_at_the_next_cron_time(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    clock.now = datetime(2026, 3, 1, 12, 23, tzinfo=UTC)
    job = queue.enqueue("echo", None, cron="0 9 * * *", delay="1h")
    assert job.run_at == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    stored = queue.get(job.id)
    assert stored is not None and stored.run_at == job.run_at
    # run_at exactly on a fire time is that fire time (at or after).
    exact = queue.enqueue("echo", None, cron="0 9 * * *", run_at=datetime(2026, 3, 5, 9, 0))
    assert exact.run_at == datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
    later = queue.enqueue("echo", None, cron="0 9 * * *", run_at=datetime(2026, 3, 5, 9, 0, 1))
    assert later.run_at == datetime(2026, 3, 6, 9, 0, tzinfo=UTC)


# -- 3. DST fall-back: a fixed-time daily cron runs once ----------------------------


def test_daily_cron_in_repeated_fall_back_hour_runs_once() -> None:
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert next_cron("30 2 * * *", "Europe/Paris", first) == datetime(
        2026, 10, 26, 1, 30, tzinfo=UTC
    )
    fires = next_cron_times("30 2 * * *", "Europe/Paris", datetime(2026, 10, 24, tzinfo=UTC), 3)
    assert [f.date().isoformat() for f in fires] == ["2026-10-24", "2026-10-25", "2026-10-26"]


def test_hourly_cron_still_runs_every_real_hour_over_fall_back() -> None:
    # As cron does: only fixed-time entries are deduplicated; '0 * * * *' runs in
    # both 02:00s (25 runs that day).
    start = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # 00:00 CEST on the 25th
    fires = next_cron_times("0 * * * *", "Europe/Paris", start - timedelta(seconds=1), 25)
    assert fires == [start + timedelta(hours=h) for h in range(25)]


@all_databases
def test_declared_style_daily_cron_runs_once_on_fall_back_day(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    clock.now = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    job = queue.enqueue("echo", "dst", cron="30 2 * * *", tz="Europe/Paris")
    runs: list[datetime] = []
    for _ in range(48 * 6):  # two days in 10-minute steps
        clock.advance(minutes=10)
        before = len(recorder.calls)
        queue.produce()
        if len(recorder.calls) > before:
            runs.append(clock())
    stored = queue.get(job.id)
    assert stored is not None
    on_the_25th = [r for r in runs if r.date() == datetime(2026, 10, 25).date()]
    assert len(on_the_25th) == 1, runs


# -- 4. every keeps its cadence after a retry ----------------------------------------


@all_databases
def test_every_keeps_cadence_after_a_retry(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    start = clock()
    job = queue.enqueue("flaky", "x", every="1h")
    recorder.fail_next = 1
    clock.now = start + timedelta(hours=1)
    queue.produce()  # fails; retry 10 s later
    retrying = queue.get(job.id)
    assert retrying is not None and retrying.run_at == clock() + timedelta(seconds=10)
    clock.advance(10)
    queue.produce()  # succeeds
    after = queue.get(job.id)
    assert after is not None
    assert after.run_at == start + timedelta(hours=2)  # 14:00, not 14:00:10
    clock.now = after.run_at
    queue.produce()
    again = queue.get(job.id)
    assert again is not None and again.run_at == start + timedelta(hours=3)


# -- 5. every stored exactly; a schedule that cannot be read never loops ----------


@all_databases
@pytest.mark.parametrize("every", [timedelta(days=12), 1_036_800, 1_036_800.0, "12 days"])
def test_every_of_any_form_repeats(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder, every: Any
) -> None:
    job = queue.enqueue("echo", "long", every=every)
    clock.advance(days=12)
    queue.produce()
    stored = queue.get(job.id)
    assert stored is not None
    assert (stored.status, stored.count) == (JobStatus.SCHEDULED, 1)
    assert stored.run_at == clock() + timedelta(days=12)
    assert stored.interval == timedelta(days=12)
    assert _job_page(app, job.id) == 200


@all_databases
def test_unreadable_schedule_fails_the_job_instead_of_looping(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    job = queue.enqueue("echo", "x", every="1h")
    other = queue.enqueue("echo", "other", delay="1h")
    _set_columns(app, job.id, schedule="every so often")
    clock.advance(hours=1)
    queue.produce()
    stored = queue.get(job.id)
    assert stored is not None and stored.status is JobStatus.FAILED
    assert "every so often" in (stored.reason or "")
    assert queue.get(other.id) is None  # the other due job still ran
    assert sorted(recorder.payloads("echo")) == ["other", "x"]
    assert _job_page(app, job.id) == 200


# -- 6. a failed run's record is a plain one-off row -----------------------------------


@all_databases
def test_retrying_a_repeating_jobs_failed_record_starts_no_second_schedule(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    job = queue.enqueue("boom", "r", every="1h", times=5)
    clock.advance(hours=1)
    for step in (0, 10, 60):  # first run, then the two retries
        clock.advance(step)
        queue.produce()
    (record,) = list(queue.jobs(status="FAILED"))
    assert record.id != job.id
    assert (record.schedule_type, record.schedule, record.count_limit) == (None, None, None)
    queue.retry(record.id)
    queue.produce()
    repeating = [j for j in queue.jobs() if j.schedule_type is not None]
    assert [j.id for j in repeating] == [job.id]


@all_databases
@pytest.mark.parametrize("action", ["run_now", "retry_all"])
def test_run_now_or_retry_all_of_a_repeating_jobs_failed_record_runs_it_once(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder, action: str
) -> None:
    job = queue.enqueue("boom", "r", every="1h", times=5, retry=[])
    clock.advance(hours=1)
    queue.produce()  # fails with no retries: a FAILED record, the schedule goes on
    (record,) = list(queue.jobs(status="FAILED"))
    if action == "run_now":
        queue.run_now(record.id)
    else:
        assert _store(app).retry_failed() == 1
    queue.produce()
    assert recorder.payloads("boom") == ["r", "r"]  # the schedule's run, then the record's
    for _ in range(3):  # nothing of the record repeats
        clock.advance(minutes=10)
        queue.produce()
    assert recorder.payloads("boom") == ["r", "r"]
    repeating = [j for j in queue.jobs() if j.schedule_type is not None]
    assert [j.id for j in repeating] == [job.id]


# -- 7. a retry delay that cannot be added to now --------------------------------------


@all_databases
def test_retry_delay_out_of_range_in_a_stored_row_fails_the_job(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    job = queue.enqueue("boom", "x", delay="1s")
    _set_columns(app, job.id, retry="[1e12]")  # written before limits existed
    clock.advance(2)
    queue.produce()
    stored = queue.get(job.id)
    assert stored is not None and stored.status is JobStatus.FAILED


# -- 8. a bad cron never stops the queue -----------------------------------------------


def test_cron_that_never_fires_is_refused_at_declaration(queue: Queue) -> None:
    with pytest.raises(InvalidScheduleError, match=r"'0 0 31 2 \*'"):
        queue.cron("0 0 31 2 *", name="never")
    assert "never" not in queue.handlers


def test_cron_name_too_long_is_refused_at_declaration(queue: Queue) -> None:
    name = "n" * 250
    with pytest.raises(InvalidOptionError, match="n" * 20):

        @queue.cron("0 9 * * *", name=name)
        def long_named(job: Job[None]) -> None: ...

    assert name not in queue.handlers


@all_databases
def test_one_bad_cron_is_skipped_and_other_jobs_run(
    make_app: Any, queue: Queue, clock: Clock, recorder: Recorder, caplog: Any
) -> None:
    @queue.cron("* * * * *", name="good")
    def good(job: Job[None]) -> None:
        recorder.calls.append(("good", None))

    app = make_app(queue)
    with app.app_context():
        # A declaration that slipped past validation (or a row another release wrote).
        queue.crons["good"] = type(queue.crons["good"])("good", "0 0 31 2 *", "UTC", None)
        due = queue.enqueue("echo", "still runs", delay="1s")
        clock.advance(2)
        with caplog.at_level(logging.ERROR, logger="flask_queue"):
            result = queue.produce()
        assert result.claimed == 1
        assert queue.get(due.id) is None
        assert recorder.payloads("echo") == ["still runs"]
        assert "good" in caplog.text


# -- 9-13. custom ids ----------------------------------------------------------------


@all_databases
def test_override_under_concurrency_keeps_exactly_one_row(app: Flask, queue: Queue) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def hammer(n: int) -> None:
        with app.app_context():
            barrier.wait()
            for i in range(40):
                try:
                    queue.enqueue("echo", {"n": n, "i": i}, id="same", override=True, delay="1h")
                except BaseException as exc:  # noqa: BLE001 - counted below
                    errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = [j for j in queue.jobs() if j.custom_id == "same"]
    assert len(rows) == 1


@all_databases
def test_custom_ids_compare_byte_for_byte(app: Flask, queue: Queue) -> None:
    ids = ["invoice-7", "Invoice-7", "invoice-7 ", "invoïce-7", "invoi\u0301ce-7"]
    jobs = [queue.enqueue("echo", cid, id=cid, delay="1h") for cid in ids]
    assert len({j.id for j in jobs}) == len(ids)
    for cid, job in zip(ids, jobs, strict=True):
        found = queue.get_by_custom_id(cid)
        assert found is not None and (found.id, found.custom_id) == (job.id, cid)


@server_databases
def test_session_enqueue_returns_the_job_a_concurrent_transaction_committed(
    app: Flask, queue: Queue
) -> None:
    store = _store(app)
    with store.engine.connect() as conn:
        txn = conn.begin()
        conn.execute(sa.select(sa.func.count()).select_from(store.table)).scalar_one()  # snapshot
        other = queue.enqueue("echo", "first", id="race", delay="1h")  # another connection
        job, created = store.insert_unique(
            store.new_row(custom_id="race", queue="echo", payload='"second"', **_due_later(app)),
            override=False,
            conn=conn,
        )
        txn.commit()
    assert (job.id, created) == (other.id, False)


def _due_later(app: Flask) -> dict[str, Any]:
    return {"run_at": _store(app).clock() + timedelta(hours=1), "status": "SCHEDULED"}


@all_databases
def test_failed_job_releases_its_custom_id(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    failed = queue.enqueue("boom", "once", id="invoice-9", delay="1s", retry=0)
    clock.advance(2)
    queue.produce()
    record = queue.get(failed.id)
    assert record is not None and record.status is JobStatus.FAILED
    fresh = queue.enqueue("echo", "again", id="invoice-9", delay="1h")
    assert fresh.id != failed.id and fresh.status is JobStatus.SCHEDULED
    assert queue.get_by_custom_id("invoice-9").id == fresh.id  # type: ignore[union-attr]
    kept = queue.get(failed.id)
    assert kept is not None and kept.status is JobStatus.FAILED
    assert kept.custom_id == "invoice-9"  # still there for inspection


@all_databases
def test_rolled_back_session_enqueue_with_custom_id_keeps_nothing(
    db_url: str, clock: Clock, tmp_path: Path
) -> None:
    import uuid

    db = SQLAlchemy()
    queue = Queue(clock=clock)

    @queue.handler("echo")
    def echo(job: Job[Any]) -> None: ...

    app = Flask("rollback")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=db_url,
        SECRET_KEY="k",
        QUEUE_EXECUTOR="inline",
        QUEUE_TABLE_NAME=f"qj_{uuid.uuid4().hex[:10]}",
    )
    db.init_app(app)
    queue.init_app(app)
    with app.app_context():
        db.create_all()
        try:
            queue.enqueue("echo", "x", id="rolled-back", delay="1h", session=db.session)
            db.session.rollback()
            assert queue.get_by_custom_id("rolled-back") is None
            assert list(queue.jobs()) == []
        finally:
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


# -- bad input names the value and stores nothing -------------------------------------

OUT_OF_RANGE: list[tuple[dict[str, Any], str]] = [
    ({"delay": "9000y"}, "'9000y'"),
    ({"delay": 1e12}, "1000000000000.0"),
    ({"delay": 1e15}, repr(1e15)),
    ({"delay": timedelta(days=999_999)}, repr(timedelta(days=999_999))),
    ({"every": "9000 years"}, "'9000 years'"),
    ({"retry": [1e15]}, repr(1e15)),
    ({"retry": [1e12]}, "1000000000000.0"),
    ({"every": "1h", "times": 2**40}, str(2**40)),
    ({"cron": "0 9 31 2 *"}, "'0 9 31 2 *'"),
    ({"run_at": datetime(9999, 12, 31)}, "9999-12-31"),
    ({"cron": "0 9 * * *", "run_at": datetime(9999, 12, 31, 23)}, "9999-12-31"),
    ({"id": "nul\x00byte"}, "nul\\x00byte"),
]


@all_databases
@pytest.mark.parametrize(("options", "named"), OUT_OF_RANGE)
def test_out_of_range_input_is_refused_and_stores_nothing(
    app: Flask, queue: Queue, options: dict[str, Any], named: str
) -> None:
    queue.enqueue("echo", "existing", id="keep-me", delay="1h")
    before = row_snapshot(app)
    with pytest.raises(QueueError) as info:
        queue.enqueue("echo", {"ok": True}, **options)
    assert named in str(info.value)
    assert row_snapshot(app) == before


def test_handler_and_config_retry_out_of_range_are_refused(queue: Queue) -> None:
    with pytest.raises(QueueError, match=repr(1e12)):
        queue.handler("huge", retry=[1e12])
    app = Flask("cfg")
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", SECRET_KEY="k", QUEUE_RETRY=[1e15])
    SQLAlchemy().init_app(app)
    with pytest.raises(ConfigError, match="QUEUE_RETRY"):
        queue.init_app(app)


# -- 14. jobs() returns every match ------------------------------------------------------


@all_databases
def test_jobs_returns_every_matching_job(app: Flask, queue: Queue) -> None:
    queue.enqueue_many("echo", list(range(250)), delay="1h")
    queue.enqueue_many("boom", list(range(3)), delay="1h")
    jobs = list(queue.jobs(queue="echo"))
    assert sorted(j.payload for j in jobs) == list(range(250))
    assert len(list(queue.jobs(queue="echo", limit=120))) == 120
    assert len(list(queue.jobs())) == 253


# -- 15. each app its own Flask-SQLAlchemy --------------------------------------------


def test_one_queue_two_apps_each_uses_its_own_db(tmp_path: Path, clock: Clock) -> None:
    apps = []
    dbs = []
    for n in (1, 2):
        app = Flask(f"app{n}")
        app.config.update(
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / f'{n}.db'}",
            SECRET_KEY="k",
            QUEUE_EXECUTOR="inline",
        )
        db = SQLAlchemy()
        db.init_app(app)
        apps.append(app)
        dbs.append(db)
    queue = Queue(apps[0], db=dbs[0], clock=clock)

    @queue.handler("echo")
    def echo(job: Job[Any]) -> None: ...

    queue.init_app(apps[1])
    for app, db in zip(apps, dbs, strict=True):
        with app.app_context():
            assert app.extensions["queue"].db is db
            db.create_all()
            queue.enqueue("echo", app.name, delay="1h")
            assert [j.payload for j in queue.jobs()] == [app.name]
            db.engine.dispose()


# -- 16. the dashboard needs SECRET_KEY ---------------------------------------------------


def test_dashboard_without_secret_key_is_a_config_error(queue: Queue) -> None:
    app = Flask("nokey")
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", QUEUE_SECRET="only-the-queue-secret")
    SQLAlchemy().init_app(app)
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        queue.init_app(app)
    assert "queue" not in app.extensions


# -- 19. storage errors never carry the statement's parameters ---------------------------


@all_databases
def test_storage_error_does_not_leak_payload_values(app: Flask, queue: Queue) -> None:
    store = _store(app)
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {store.table.name}"))
    secret = "-".join(["hunter2", "s3cret"])  # not spelled out in this source line
    try:
        with pytest.raises(StorageError) as info:
            queue.enqueue("echo", {"password": secret}, delay="1h")
        told = "".join(traceback.format_exception(info.value))
        assert secret not in told
        assert "enqueue" in str(info.value) or "insert" in str(info.value)
    finally:
        store.table.create(store.engine)


# -- 20. purging kept history is an index range ------------------------------------------


def test_purge_completed_uses_the_status_run_at_index(make_app: Any, queue: Queue) -> None:
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1h")
    store = _store(app)
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            seen.append((statement, params))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    with app.app_context():
        store.purge_completed(store.clock())
    sa.event.remove(store.engine, "before_cursor_execute", capture)
    assert seen  # the range of COMPLETED, and (issue 19) that of deleted CANCELLED rows
    for statement, params in seen:
        with store.engine.connect() as conn:
            plan = " ".join(
                str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
            )
        # A range of an index led by status (SQLite may pick the claim's for the
        # CANCELLED one), never a scan of the table.
        assert "SEARCH" in plan and f"USING INDEX ix_{store.table.name}_" in plan, plan
        assert "SCAN" not in plan, plan


# -- 22. a failing attempt's log line -------------------------------------------------------


@all_databases
def test_failure_log_line_names_attempt_and_what_happens_next(
    app: Flask, queue: Queue, clock: Clock, caplog: Any
) -> None:
    job = queue.enqueue("boom", "x", delay="1s", retry=["10s"])
    clock.advance(2)
    with caplog.at_level(logging.WARNING, logger="flask_queue"):
        queue.produce()
        clock.advance(10)
        queue.produce()
    lines = [r.getMessage() for r in caplog.records if job.id in r.getMessage()]
    assert any("attempt 1" in line and "retrying at" in line for line in lines), lines
    assert any("attempt 2" in line and "giving up" in line for line in lines), lines


def test_job_interval_property_for_one_off_and_cron() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    one_off = Job(id="a", queue="q", payload=None, run_at=now, status=JobStatus.SCHEDULED)
    cron = Job(
        id="b",
        queue="q",
        payload=None,
        run_at=now,
        status=JobStatus.SCHEDULED,
        schedule_type=ScheduleType.CRON,
        schedule="0 9 * * *",
    )
    assert one_off.interval is None and cron.interval is None


@all_databases
def test_run_now_of_a_repeating_job_is_an_extra_run_and_keeps_the_slot(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    start = clock()
    job = queue.enqueue("echo", "r", every="1h")
    clock.advance(minutes=10)
    queue.run_now(job.id)
    queue.produce()
    assert recorder.payloads("echo") == ["r"]
    after = queue.get(job.id)
    assert after is not None and after.run_at == start + timedelta(hours=1)


# -- issue 8: heartbeats keep a long handler's short lease ---------------------------------


@all_databases
def test_heartbeat_keeps_a_long_run_to_one_run_and_releases_a_dead_one(make_app: Any) -> None:
    # Real clock: the lease is 1 s, the handler runs 3 s, and producers keep
    # claiming all along. Without heartbeats the job would be claimed and run again.
    # (A 0.3 s lease, beats every 0.1 s, failed twice on a loaded 2-core machine:
    # a beat more than 0.2 s late is a scheduling delay, not a heartbeat defect.)
    queue = Queue()
    started = threading.Event()
    release = threading.Event()
    runs: list[str] = []

    @queue.handler("slow")
    def slow(job: Job[Any]) -> None:
        runs.append(job.id)
        started.set()
        release.wait(10)

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="1s")
    with app.app_context():
        store = _store(app)
        job = queue.enqueue("slow", None)
        assert started.wait(5)
        deadline = threading.Event()
        for _ in range(60):  # 3 s of claims by other producers
            assert store.claim(10, timedelta(seconds=1)) == []
            deadline.wait(0.05)
        release.set()
        app.extensions["queue"].executor.shutdown(wait=True)
        assert runs == [job.id]
        assert queue.get(job.id) is None
        # A run whose process died has no heartbeat: its lease runs out and the
        # job is claimed again within about one lease.
        dead = queue.enqueue("slow", "dead", delay="50ms")  # not dispatched at enqueue
        deadline.wait(0.1)
        (stuck,) = store.claim(1, timedelta(seconds=1))
        store.start(stuck.id, stuck.attempt, timedelta(seconds=1))  # then "dies"
        again: list[Any] = []
        for _ in range(80):
            again = store.claim(1, timedelta(seconds=1))
            if again:
                break
            deadline.wait(0.05)
        assert [(c.id, c.attempt) for c in again] == [(dead.id, stuck.attempt + 1)]


@pytest.mark.parametrize("path", ["worker", "invoke"])
def test_heartbeats_keep_long_runs_once_on_the_worker_and_invoke_paths_in_one_statement_a_beat(
    make_app: Any, path: str
) -> None:
    # Real clock: the lease is 300 ms and five handlers run 1.2 s each while
    # other producers claim all along. The worker (flask queue work) and the
    # invoke endpoint's run_job share the heartbeat: each beat extends every
    # run in flight with one statement, not one per job.
    from flask_queue.runner import run_job
    from flask_queue.worker import work

    queue = Queue()
    runs: list[Any] = []
    lock = threading.Lock()

    @queue.handler("slow")
    def slow(job: Job[Any]) -> None:
        with lock:
            runs.append(job.id)
        threading.Event().wait(1.2)

    app = make_app(queue, QUEUE_EXECUTOR="worker", QUEUE_LEASE="300ms")
    store = _store(app)
    lease = timedelta(milliseconds=300)
    beats: list[int] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().startswith("UPDATE") and "SET lease_until" in statement:
            beats.append(len(params) if isinstance(params, (list, tuple, dict)) else 0)

    with app.app_context():
        jobs = queue.enqueue_many("slow", list(range(5)))
        sa.event.listen(store.engine, "before_cursor_execute", record)
        threads: list[threading.Thread] = []
        try:
            if path == "worker":
                stop = threading.Event()

                def serve() -> None:
                    with app.app_context():
                        work(queue, concurrency=5, interval=0.05, stop=stop, report=lambda _: None)

                threads.append(threading.Thread(target=serve))
            else:
                claimed = store.claim(5, lease)
                assert len(claimed) == 5
                state = app.extensions["queue"]
                for c in claimed:
                    threads.append(threading.Thread(target=run_job, args=(state, c.id, c.attempt)))
            for t in threads:
                t.start()
            waited = threading.Event()
            for _ in range(100):
                if len(runs) == 5:
                    break
                waited.wait(0.02)
            for _ in range(24):  # 1.2 s of claims by other producers
                assert store.claim(10, lease) == []
                waited.wait(0.05)
            if path == "worker":
                deadline = 50
                while any(queue.get(j.id) is not None for j in jobs) and deadline:
                    waited.wait(0.1)
                    deadline -= 1
                stop.set()
            for t in threads:
                t.join(10)
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", record)
        assert sorted(runs) == sorted(j.id for j in jobs)  # each once
        assert all(queue.get(j.id) is None for j in jobs)
    # One statement per beat (every 100 ms over about 1.2 s), not one per job per beat.
    assert 3 <= len(beats) <= 30, beats


# -- review findings (issue 7/8 follow-ups) ------------------------------------------------


@all_databases
def test_retrying_a_failed_declared_cron_row_never_makes_a_second_schedule(
    make_app: Any, queue: Queue, clock: Clock
) -> None:
    @queue.cron("*/5 * * * *", name="tick")
    def tick(job: Job[None]) -> None: ...

    app = make_app(queue, QUEUE_HANDLER_GRACE=0)
    with app.app_context():
        queue.produce()
        (row,) = [j for j in queue.jobs() if j.custom_id]
        handler = queue.handlers.pop("tick")  # a release without it: the row fails
        clock.now = row.run_at
        queue.produce()
        assert queue.get(row.id).status is JobStatus.FAILED  # type: ignore[union-attr]
        queue.handlers["tick"] = handler  # the handler is back...
        queue.produce()  # ...and the sync has put a new live row in the old one's place
        with pytest.raises(InvalidStatusError, match="held by live job"):
            queue.retry(row.id)
        assert app.extensions["queue"].store.retry_failed() == 0
        live = [j for j in queue.jobs(status="SCHEDULED") if j.schedule_type]
        assert len(live) == 1


@all_databases
def test_a_runner_clock_slightly_behind_the_claimer_does_not_rerun_the_slot(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    from flask_queue.runner import run_job

    state = app.extensions["queue"]
    job = queue.enqueue("echo", "x", every="1h")
    clock.advance(hours=1)
    (claimed,) = state.store.claim(1, LEASE)
    clock.advance(-0.2)  # the runner's clock lags the producer's by 200 ms
    assert run_job(state, claimed.id, claimed.attempt).outcome == "rescheduled"
    after = queue.get(job.id)
    assert after is not None and after.run_at == job.run_at + timedelta(hours=1)


@all_databases
def test_an_error_message_the_database_cannot_store_still_finishes_the_run(
    make_app: Any, queue: Queue, clock: Clock
) -> None:
    @queue.handler("nasty", retry=0)
    def nasty(job: Job[Any]) -> None:
        raise ValueError("nul \x00 and a lone surrogate \ud800")

    app = make_app(queue)
    with app.app_context():
        job = queue.enqueue("nasty", None, delay="1s")
        clock.advance(1)
        queue.produce()
        failed = queue.get(job.id)
        assert failed is not None and failed.status is JobStatus.FAILED
        assert "\\x00" in (failed.reason or "") and "\\ud800" in (failed.reason or "")


@server_databases
def test_a_schema_error_is_not_an_outage(app: Flask, queue: Queue) -> None:
    job = queue.enqueue("echo", "x", delay="1h")
    store = _store(app)
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {store.table.name} DROP COLUMN occurrence_at"))
    with pytest.raises(StorageError) as info:
        queue.get(job.id)
    assert info.value.transient is False  # migrations not run: retrying will not help


@all_databases
def test_handler_grace_counts_from_when_a_delayed_job_became_due(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    job = queue.enqueue("echo", "later", delay="1h")
    del queue.handlers["echo"]
    clock.advance(hours=1)
    queue.produce()
    waiting = queue.get(job.id)
    assert waiting is not None and waiting.status is JobStatus.SCHEDULED
    clock.advance(minutes=16)
    queue.produce()
    failed = queue.get(job.id)
    assert failed is not None and failed.status is JobStatus.FAILED


@all_databases
def test_a_beat_racing_a_finish_is_not_a_lost_lease(
    app: Flask, queue: Queue, clock: Clock, caplog: Any
) -> None:
    state = app.extensions["queue"]
    job = queue.enqueue("echo", "x", delay="1s")
    clock.advance(1)
    (claimed,) = state.store.claim(1, LEASE)
    started, _ = state.store.start(claimed.id, claimed.attempt, LEASE)
    beat = state.heartbeat
    beat.add(job.id, claimed.attempt)
    try:
        with state.store.engine.begin() as conn:  # another runner took it over
            conn.execute(
                sa.update(state.store.table)
                .where(state.store.table.c.id == job.id)
                .values(attempt=claimed.attempt + 1)
            )
        with caplog.at_level(logging.WARNING, logger="flask_queue"):
            assert beat.beat() == {(job.id, claimed.attempt)}  # a real loss is told
        assert "lost its lease" in caplog.text
        beat.add(job.id, claimed.attempt)
        beat.finishing(job.id, claimed.attempt)  # its finish is being written
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="flask_queue"):
            assert beat.beat() == set()
        assert "lost its lease" not in caplog.text
    finally:
        beat.discard(job.id, claimed.attempt)
    assert started is not None


@all_databases
def test_produce_without_declared_crons_does_not_query_for_them(app: Flask, queue: Queue) -> None:
    store = _store(app)
    seen: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        queue.produce()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    assert not [s for s in seen if "schedule_type" in s and s.lstrip().upper().startswith("SELECT")]
