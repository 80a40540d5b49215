"""Durable steps and sleeps (issue 20, items 1, 2 and 7): ``job.step`` is
memoized per job in ``<table>_steps``, ``session=`` commits a step's writes
with its record, ``job.sleep`` ends the run and the next run replays past it."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import InvalidStepError, Job, JobStatus, Queue
from flask_queue.errors import InvalidDurationError, InvalidOptionError
from tests.conftest import AppFactory, Clock, all_databases, server_databases

calls: list[str] = []


def step_rows(app: Flask) -> list[Any]:
    store = app.extensions["queue"].store
    s = store.core.steps
    with store.engine.connect() as c:
        return list(c.execute(sa.select(s).order_by(s.c.finished_at)))


def names(rows: list[Any]) -> list[str]:
    return [r.name.decode() if isinstance(r.name, bytes) else r.name for r in rows]


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


def booking_queue(clock: Clock, *, fail_after_charge: list[int] | None = None) -> Queue:
    queue = Queue(clock=clock)

    def charge(amount: int) -> dict[str, Any]:
        calls.append("charge")
        return {"charged": amount}

    @queue.handler("booking", retry=["1s", "1s"])
    def booking(job: Job[Any]) -> Any:
        paid = job.step("charge", charge, job.payload["amount"])
        if fail_after_charge:
            fail_after_charge.pop()
            raise RuntimeError("the mail server is down")
        job.sleep("until-reminder", "1d")
        mail = job.step("remind", lambda: calls.append("remind") or "sent")
        return {"paid": paid, "mail": mail}

    return queue


@all_databases
def test_a_retry_skips_the_steps_that_completed(make_app: AppFactory, clock: Clock) -> None:
    queue = booking_queue(clock, fail_after_charge=[1])
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d", QUEUE_RETRY=["1s"])
    with app.app_context():
        job = queue.enqueue("booking", {"amount": 30})
        assert queue.get(job.id).status is JobStatus.SCHEDULED  # failed once, retrying
        assert calls == ["charge"]
        clock.advance(2)
        queue.produce()
        # The retry replayed the charge from its record, then slept.
        assert calls == ["charge"]
        assert names(step_rows(app)) == ["charge", "until-reminder"]


@all_databases
def test_a_sleep_ends_the_run_and_the_next_run_goes_on_after_it(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        start = clock()
        job = queue.enqueue("booking", {"amount": 30})
        slept = queue.get(job.id)
        assert slept.status is JobStatus.SCHEDULED
        assert slept.run_at == start + timedelta(days=1)
        assert slept.errors == 0 and slept.error is None
        assert slept.history is not None and slept.history[-1]["outcome"] == "slept"
        assert slept.lease_until is None
        clock.advance(hours=23)
        queue.produce()
        assert queue.get(job.id).status is JobStatus.SCHEDULED  # not before its time
        clock.advance(hours=1)
        queue.produce()
        done = queue.get(job.id)
        assert done.status is JobStatus.COMPLETED
        assert done.result == {"paid": {"charged": 30}, "mail": "sent"}
        assert calls == ["charge", "remind"]  # each step ran once
        assert [h["outcome"] for h in done.history or []] == ["slept", "succeeded"]


@all_databases
def test_a_replay_reads_the_steps_once_not_once_per_step(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)

    @queue.handler("ten")
    def ten(job: Job[Any]) -> int:
        total = sum(job.step(f"s{i}", lambda i=i: i) for i in range(10))
        job.sleep("pause", "1h")
        return total

    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        job = queue.enqueue("ten", None)
        store = app.extensions["queue"].store
        steps_table = store.core.steps.name
        reads: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT") and steps_table in statement:
                reads.append(statement)

        sa.event.listen(store.engine, "before_cursor_execute", count)
        try:
            clock.advance(hours=1)
            queue.produce()
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", count)
        assert queue.get(job.id).result == 45
        assert len(reads) == 1


@all_databases
def test_a_database_step_commits_its_writes_with_its_record(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)
    box: dict[str, Any] = {}

    @queue.handler("ledger", retry=["1s"])
    def ledger(job: Job[Any]) -> None:
        db: SQLAlchemy = box["db"]

        def book() -> int:
            calls.append("book")
            db.session.execute(sa.text(f"INSERT INTO {box['t']} (n) VALUES (7)"))
            return 7

        job.step("book", book, session=db.session)
        if job.errors == 0:  # the first run fails after its step
            raise RuntimeError("after the step")

    app = make_app(queue, QUEUE_RETRY=["1s"])
    db = app.extensions["sqlalchemy"]
    box["db"], box["t"] = db, f"ledger_{app.config['QUEUE_TABLE_NAME']}"
    with app.app_context():
        with db.engine.begin() as c:
            c.execute(sa.text(f"CREATE TABLE {box['t']} (n INTEGER)"))
        try:
            job = queue.enqueue("ledger", None)
            clock.advance(2)
            queue.produce()
            assert queue.get(job.id) is None  # completed, not kept
            with db.engine.connect() as c:
                assert c.execute(sa.text(f"SELECT n FROM {box['t']}")).scalars().all() == [7]
            assert calls == ["book"]
        finally:
            with db.engine.begin() as c:
                c.execute(sa.text(f"DROP TABLE {box['t']}"))


@server_databases  # SQLite has one writer: the other run could not write meanwhile
def test_a_database_step_that_lost_the_race_rolls_its_writes_back(
    make_app: AppFactory, clock: Clock
) -> None:
    # Two runs of one job (a lease that expired while its run went on): the
    # step's record is taken by the other run between this run's read and
    # its write; this run's writes must not commit.
    queue = Queue(clock=clock)
    box: dict[str, Any] = {}

    @queue.handler("ledger")
    def ledger(job: Job[Any]) -> Any:
        db: SQLAlchemy = box["db"]

        def book() -> int:
            db.session.execute(sa.text(f"INSERT INTO {box['t']} (n) VALUES (1)"))
            # The other run records the step first.
            other = threading.Thread(target=box["other"], args=(job.id, job.count))
            other.start()
            other.join(10)
            return 1

        return job.step("book", book, session=db.session)

    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    db = app.extensions["sqlalchemy"]
    box["db"], box["t"] = db, f"ledger_{app.config['QUEUE_TABLE_NAME']}"
    store = app.extensions["queue"].store

    def other(job_id: str, occurrence: int) -> None:
        from flask_queue.store import StepRecord

        record = StepRecord("book", "step", "2", 1, clock(), 0)
        store.step_records.record(job_id, occurrence, record)

    box["other"] = other
    with app.app_context():
        with db.engine.begin() as c:
            c.execute(sa.text(f"CREATE TABLE {box['t']} (n INTEGER)"))
        try:
            job = queue.enqueue("ledger", None)
            assert queue.get(job.id).result == 2  # the record that won
            with db.engine.connect() as c:
                assert c.execute(sa.text(f"SELECT n FROM {box['t']}")).scalars().all() == []
        finally:
            db.session.remove()
            with db.engine.begin() as c:
                c.execute(sa.text(f"DROP TABLE {box['t']}"))


@all_databases
def test_a_name_used_twice_or_a_result_that_is_not_json_fails_the_run(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)

    @queue.handler("twice", retry=0)
    def twice(job: Job[Any]) -> None:
        job.step("a", lambda: 1)
        job.step("a", lambda: 2)

    @queue.handler("not_json", retry=0)
    def not_json(job: Job[Any]) -> None:
        job.step("when", lambda: {1, 2})

    @queue.handler("bad_name", retry=0)
    def bad_name(job: Job[Any]) -> None:
        job.step("", lambda: 1)

    app = make_app(queue)
    with app.app_context():
        one = queue.get(queue.enqueue("twice", None).id)
        assert one.status is JobStatus.FAILED
        assert InvalidStepError.__name__ in (one.error or "")
        assert "'a' is used twice" in (one.reason or "")
        two = queue.get(queue.enqueue("not_json", None).id)
        assert two.status is JobStatus.FAILED
        assert InvalidStepError.__name__ in (two.error or "") and "{1, 2}" in (two.reason or "")
        three = queue.get(queue.enqueue("bad_name", None).id)
        assert "got the name ''" in three.reason
        # Only the first "a" was stored; the refused ones wrote nothing.
        assert names(step_rows(app)) == ["a"]


@all_databases
def test_bad_sleeps_are_refused_and_nothing_is_recorded(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)
    seen: list[BaseException] = []

    @queue.handler("sleepy", retry=0)
    def sleepy(job: Job[Any]) -> None:
        for bad in [lambda: job.sleep("s1", "-1h"), lambda: job.sleep_until("s2", "tomorrow")]:
            try:
                bad()
            except (InvalidDurationError, InvalidOptionError) as exc:
                seen.append(exc)

    app = make_app(queue)
    with app.app_context():
        queue.enqueue("sleepy", None)
        assert "'-1h'" in str(seen[0])
        assert "'tomorrow'" in str(seen[1]) and "timezone-aware" in str(seen[1])
        assert step_rows(app) == []


def test_steps_work_only_inside_a_handler(app: Flask, queue: Queue) -> None:
    job = queue.enqueue("echo", "x", delay="1h")
    with pytest.raises(Exception, match=r"job.step\(\) works inside the job's handler only"):
        job.step("a", lambda: 1)


@all_databases
def test_an_async_handler_sleeps_and_resumes(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)

    @queue.handler("async_flow")
    async def flow(job: Job[Any]) -> str:
        first = job.step("first", lambda: calls.append("first") or "one")
        await asyncio.sleep(0)
        try:
            job.sleep("nap", "10m")
        except Exception:  # noqa: BLE001 - a handler's broad except must not swallow the pause
            calls.append("swallowed")
        return first + "+two"

    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        job = queue.enqueue("async_flow", None)
        assert queue.get(job.id).status is JobStatus.SCHEDULED
        clock.advance(minutes=10)
        queue.produce()
        assert queue.get(job.id).result == "one+two"
        assert calls == ["first"]


@all_databases
def test_a_repeating_jobs_next_occurrence_starts_with_no_steps(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)

    @queue.handler("daily")
    def daily(job: Job[Any]) -> None:
        job.step("report", lambda: calls.append("report"))

    app = make_app(queue)
    with app.app_context():
        queue.enqueue("daily", None, every="1h", delay="1h")
        for _ in range(3):
            clock.advance(hours=1)
            queue.produce()
        assert calls == ["report"] * 3  # each occurrence ran its step
        # Each produce's purge removed the records of the occurrences before
        # its claim: the third run's is left, until the next purge.
        assert [r.occurrence for r in step_rows(app)] == [2]
        queue.produce()
        assert step_rows(app) == []


@all_databases
def test_the_purge_removes_the_steps_of_deleted_jobs(make_app: AppFactory, clock: Clock) -> None:
    queue = booking_queue(clock)
    app = make_app(queue)
    with app.app_context():
        job = queue.enqueue("booking", {"amount": 5})
        assert len(step_rows(app)) == 2
        queue.delete(job.id)
        queue.produce()
        assert step_rows(app) == []


@server_databases
def test_steps_with_the_worker_executor_across_a_sleep(make_app: AppFactory, clock: Clock) -> None:
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        job = queue.enqueue("booking", {"amount": 9})
        state = app.extensions["queue"]
        state.executor.shutdown(wait=True)
        assert queue.get(job.id).status is JobStatus.SCHEDULED
        clock.advance(days=1)
        queue.produce()
        state.executor.shutdown(wait=True)
        assert queue.get(job.id).result == {"paid": {"charged": 9}, "mail": "sent"}
        assert calls == ["charge", "remind"]


@all_databases
def test_the_job_page_shows_the_steps_and_the_sleep(make_app: AppFactory, clock: Clock) -> None:
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    app.debug = True  # the dashboard is open
    client = app.test_client()
    with app.app_context():
        job = queue.enqueue("booking", {"amount": 12})
        page = client.get(f"/_queue/job/{job.id}").get_data(as_text=True)
        assert "<h2>Steps</h2>" in page
        assert "Sleeping at <code>until-<wbr>reminder</code>" in page
        assert "{&#34;charged&#34;: 12}" in page
        clock.advance(days=1)
        queue.produce()
        done = client.get(f"/_queue/job/{job.id}").get_data(as_text=True)
        assert "Sleeping at" not in done
        assert "&#34;sent&#34;" in done and "until 2026-03-02 12:00:00 UTC" in done


@all_databases
def test_a_failed_job_retried_keeps_its_completed_steps(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)
    broken = [True]

    @queue.handler("flow", retry=0)
    def flow(job: Job[Any]) -> str:
        made = job.step("make", lambda: calls.append("make") or "made")
        if broken[0]:
            raise RuntimeError("the second step's service is down")
        return made + " and shipped"

    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        job = queue.enqueue("flow", None)
        assert queue.get(job.id).status is JobStatus.FAILED
        broken[0] = False
        queue.retry(job.id)
        queue.produce()
        assert queue.get(job.id).result == "made and shipped"
        assert calls == ["make"]
