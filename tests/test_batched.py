"""The batched run path (issue 9): claims that start runs, outcomes written in
batches, and idle workers woken by PostgreSQL NOTIFY."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import Queue
from flask_queue import finisher as finisher_module
from flask_queue.finisher import Finisher
from flask_queue.runner import after_failure, after_success
from flask_queue.worker import work
from tests.conftest import AppFactory, Clock, Recorder, all_databases, server_databases

LEASE = timedelta(minutes=1)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@contextmanager
def statements(app: Flask) -> Iterator[list[str]]:
    """The SQL statements the app's engine runs meanwhile (executemany counts once)."""
    seen: list[str] = []
    engine = app.extensions["queue"].store.engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def due_jobs(app: Flask, queue: Queue, clock: Clock, name: str, payloads: list[Any]) -> None:
    queue.enqueue_many(name, payloads, delay="1s")
    clock.advance(1)


def rows(app: Flask) -> dict[Any, Any]:
    store = app.extensions["queue"].store
    with store.engine.connect() as c:
        return {r.id: r for r in c.execute(sa.select(store.table))}


@all_databases
def test_claim_started_claims_whole_jobs_in_one_statement(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    store = app.extensions["queue"].store
    due_jobs(app, queue, clock, "echo", [{"n": i} for i in range(5)])
    with statements(app) as seen:
        jobs = store.claim_started(10, LEASE)
    assert sorted(j.payload["n"] for j in jobs) == list(range(5))  # whole jobs, ready to run
    assert all(j.attempt == 1 for j in jobs)
    writes = [s for s in seen if f"UPDATE {store.table.name} SET" in s]
    assert len(writes) == 1  # one statement claims the batch
    for row in rows(app).values():
        # Claimed, not started: the runner marks each start when it begins.
        assert row.status == "RUNNING" and row.started_at is None
    assert store.claim_started(10, LEASE) == []
    store.mark_started([(j.id, j.attempt) for j in jobs[:2]])
    started = [r for r in rows(app).values() if r.started_at is not None]
    assert sorted(r.id for r in started) == sorted(j.id for j in jobs[:2])


@all_databases
def test_a_run_killed_before_its_handler_began_costs_no_attempt(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    # Claimed and queued in a process that died before a thread took it: the
    # job is claimed again after the lease, with no attempt used (retry=0
    # jobs must not end FAILED without having run).
    store = app.extensions["queue"].store
    queue.enqueue("flaky", "x", delay="1s", retry=0)
    clock.advance(1)
    (job,) = store.claim_started(1, LEASE)
    clock.advance(61)
    (again,) = store.claim_started(1, LEASE)
    assert again.id == job.id and again.attempt == 2 and again.errors == 0
    # Once its start is marked, a death counts (crash loops end FAILED).
    store.mark_started([(again.id, again.attempt)])
    clock.advance(61)
    (third,) = store.claim_started(1, LEASE)
    assert third.attempt == 3 and third.errors == 1


@all_databases
def test_finish_many_writes_each_kind_of_outcome_with_one_statement(
    make_app: AppFactory, queue: Queue, clock: Clock
) -> None:
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1h")
    store = app.extensions["queue"].store
    now = clock()
    with app.app_context():
        done = queue.enqueue_many("echo", ["d1", "d2", "d3"], delay="1s")
        retry = queue.enqueue_many("boom", ["r1", "r2"], delay="1s")
        final = queue.enqueue("echo", "f", delay="1s", retry=[])
        hourly = queue.enqueue("echo", "h", delay="1s", every="1h")
        lost = queue.enqueue("echo", "lost", delay="1s")
    clock.advance(1)
    now = clock()
    jobs = {j.payload: j for j in store.claim_started(20, LEASE)}
    assert len(jobs) == 8
    # "lost": its lease ran out and another runner took it over meanwhile.
    with store.engine.begin() as c:
        c.execute(sa.update(store.table).where(store.table.c.id == lost.id).values(attempt=5))
    keep = timedelta(hours=1)
    outcomes = [(jobs[p], after_success(jobs[p], keep, now)) for p in ("d1", "d2", "d3")]
    outcomes += [
        (jobs[p], after_failure(jobs[p], "boom", [timedelta(seconds=10)], now))
        for p in ("r1", "r2")
    ]
    outcomes.append((jobs["f"], after_failure(jobs["f"], "gave up", [], now)))
    outcomes.append((jobs["h"], after_success(jobs["h"], keep, now)))
    outcomes.append((jobs["lost"], after_success(jobs["lost"], keep, now)))

    with app.app_context(), statements(app) as seen:
        owned = store.finish_many(outcomes)
    assert owned == 7  # all but the run that lost its lease
    writes = [s for s in seen if s.split()[0] in ("UPDATE", "DELETE", "INSERT")]
    # COMPLETED (d1-d3, lost's attempt refused), SCHEDULED (r1, r2, h), FAILED (f);
    # then, as one run did not own its row, one that frees a row replaced while
    # that run went on (override; see _replace_live), if there were one.
    assert len(writes) == 4, writes
    assert "lease_until IS NOT NULL" in writes[-1]

    by_id = rows(app)
    for job in done:
        row = by_id[job.id]
        assert (row.status, row.count, row.live_custom_id) == ("COMPLETED", 1, None)
    for job in retry:
        row = by_id[job.id]
        assert row.status == "SCHEDULED" and row.errors == 1 and row.reason == "boom"
        assert row.started_at is None and row.attempt == 1
    assert by_id[final.id].status == "FAILED" and by_id[final.id].reason == "gave up"
    row = by_id[hourly.id]
    assert row.status == "SCHEDULED" and row.count == 1
    assert row.run_at.replace(tzinfo=None) == (hourly.run_at + timedelta(hours=1)).replace(
        tzinfo=None
    )
    assert by_id[lost.id].status == "RUNNING" and by_id[lost.id].attempt == 5  # untouched


@all_databases
def test_finisher_writes_a_batch_in_one_statement_and_chunks_by_size(
    app: Flask, queue: Queue, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No background writer: only flush() writes, so the statements are countable.
    monkeypatch.setattr(finisher_module.Finisher, "_loop", lambda self: None)
    state = app.extensions["queue"]
    store = state.store
    due_jobs(app, queue, clock, "echo", list(range(10)))
    jobs = store.claim_started(10, LEASE)
    finisher = Finisher(store, state.heartbeat, size=4)
    for job in jobs:
        state.heartbeat.add(job.id, job.attempt)
        finisher.add(job, after_success(job, timedelta(0), clock()))
    assert len(rows(app)) == 10  # nothing written yet
    with statements(app) as seen:
        finisher.flush()
    assert len([s for s in seen if s.startswith("DELETE")]) == 3  # 4 + 4 + 2
    assert rows(app) == {}
    assert state.heartbeat.running() == []  # out of the beat once written


@all_databases
def test_worker_writes_what_is_pending_before_it_stops(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A delay no run waits out: only the stop's flush can have written them.
    monkeypatch.setattr(finisher_module, "FLUSH_DELAY", 30.0)
    monkeypatch.setattr(finisher_module.Finisher, "_loop", lambda self: None)
    due_jobs(app, queue, clock, "echo", list(range(30)))
    ran = work(queue, concurrency=4, interval=0.05, max_jobs=30, report=lambda _: None)
    assert ran == 30
    assert sorted(recorder.payloads("echo")) == list(range(30))
    assert rows(app) == {}


@all_databases
def test_a_run_whose_batched_write_never_happened_runs_again_after_its_lease(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process dies after the handler returned and before its outcome was
    # written (at most FLUSH_DELAY): at-least-once, so the job runs again.
    state = app.extensions["queue"]
    due_jobs(app, queue, clock, "echo", ["once"])
    dropped: list[Any] = []
    monkeypatch.setattr(state.finisher, "add", lambda job, outcome: dropped.append(job))
    executor = __import__("flask_queue.executors", fromlist=["x"]).ThreadExecutor(state)
    assert queue.produce(executor=executor).claimed == 1
    executor._pool.shutdown(wait=True)  # type: ignore[union-attr]
    assert len(dropped) == 1 and recorder.payloads("echo") == ["once"]
    state.heartbeat.discard(dropped[0].id, dropped[0].attempt)  # the process is gone
    monkeypatch.undo()
    clock.advance(61)
    queue.produce()
    assert recorder.payloads("echo") == ["once", "once"]
    assert rows(app) == {}


# -- QUEUE_EXECUTOR="worker" and the NOTIFY wake-up ------------------------------------


@all_databases
def test_worker_executor_stores_and_runs_nothing_itself(
    make_app: AppFactory, queue: Queue, recorder: Recorder
) -> None:
    app = make_app(queue, QUEUE_EXECUTOR="worker")
    with app.app_context():
        job = queue.enqueue("echo", "due now")
        queue.enqueue_many("echo", ["a", "b"])
        result = queue.produce()
        assert result.claimed == 0 and not result.more
        assert recorder.calls == []
        stored = queue.get(job.id)
        assert stored is not None and stored.status.value == "SCHEDULED"
        ran = work(queue, concurrency=2, interval=0.05, max_jobs=3, report=lambda _: None)
    assert ran == 3
    assert sorted(recorder.payloads("echo")) == ["a", "b", "due now"]


@server_databases
def test_an_idle_worker_wakes_when_a_due_job_is_enqueued(
    make_app: AppFactory, queue: Queue, recorder: Recorder, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; MySQL workers poll")
    app = make_app(queue, QUEUE_EXECUTOR="worker")
    web = make_app(queue, QUEUE_EXECUTOR="worker", QUEUE_TABLE_NAME=app.config["QUEUE_TABLE_NAME"])
    stop = threading.Event()
    # An idle poll far longer than the test waits: only the NOTIFY can wake it.
    poll = 60.0

    def loop() -> None:
        with app.app_context():
            work(queue, concurrency=2, interval=poll, stop=stop, report=lambda _: None)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        store = web.extensions["queue"].store

        def listening() -> bool:
            with store.engine.connect() as c:
                query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE query = :q")
                return bool(c.execute(query, {"q": f'LISTEN "{store.channel}"'}).scalar())

        wait_until(listening, "the worker to LISTEN")
        for payload in ("one", "two"):
            with web.app_context():
                queue.enqueue("echo", payload)  # the NOTIFY rides in the INSERT
            wait_until(lambda p=payload: p in recorder.payloads("echo"), payload, timeout=10)
        with web.app_context():
            queue.enqueue_many("echo", ["three", "four"])  # a NOTIFY after the batch
        wait_until(lambda: len(recorder.payloads("echo")) == 4, "the batch", timeout=10)
    finally:
        # Stopping waits out the current idle wait: wake it one last time.
        stop.set()
        with web.app_context():
            web.extensions["queue"].store.notify()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert recorder.payloads("echo")[:2] == ["one", "two"]
    assert sorted(recorder.payloads("echo")[2:]) == ["four", "three"]


def test_a_driver_without_a_listen_timeout_makes_the_worker_poll() -> None:
    # psycopg 3.1: notifies() takes no timeout (its __kwdefaults__ is None).
    from flask_queue.store import Listener

    class Connection:
        def notifies(self) -> Any:
            raise AssertionError("not called")

    Connection.__module__ = "psycopg"
    assert Listener.open(Connection(), "channel") is None


@all_databases
def test_a_batch_that_cannot_all_be_handed_off_leaves_no_lease_kept_alive(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    state = app.extensions["queue"]
    due_jobs(app, queue, clock, "echo", [1, 2, 3])
    executor = __import__("flask_queue.executors", fromlist=["x"]).InlineExecutor(state)
    calls: list[Any] = []

    def submit(job: Any) -> None:
        calls.append(job)
        if len(calls) == 2:
            raise RuntimeError("the executor broke")
        executor.deliver(job)

    executor.submit = submit  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="the executor broke"):
        queue.produce(executor=executor)
    assert state.heartbeat.running() == []  # nothing claimed is kept alive by this process


@all_databases
def test_a_batch_cut_between_its_statements_writes_the_rest_and_warns_of_nothing(
    app: Flask, queue: Queue, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # Each kind of outcome commits on its own (no transaction holds one kind's
    # locks while waiting on another's, which deadlocked with the heartbeat);
    # an outage after the first leaves the retry to write only the rest, and
    # every run still owned its row, so none is reported as having lost it.
    state = app.extensions["queue"]
    store = state.store
    due_jobs(app, queue, clock, "echo", ["d1", "d2"])
    due_jobs(app, queue, clock, "boom", ["r1", "r2"])
    jobs = store.claim_started(10, LEASE)
    finisher = Finisher(store, state.heartbeat, size=10)
    for job in jobs:
        state.heartbeat.add(job.id, job.attempt)
        if job.queue == "echo":
            outcome = after_success(job, timedelta(0), clock())
        else:
            outcome = after_failure(job, "boom", [timedelta(seconds=10)], clock())
        finisher.add(job, outcome)
    engine = store.engine
    cut = {"left": 1}

    def cut_the_update(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().startswith("UPDATE") and cut["left"]:
            cut["left"] -= 1
            conn.invalidate()  # the connection dies under the second statement
            raise sa.exc.OperationalError(statement, {}, Exception("server closed the connection"))

    sa.event.listen(engine, "before_cursor_execute", cut_the_update)
    try:
        with caplog.at_level("WARNING", logger="flask_queue"), statements(app) as seen:
            finisher.flush()
    finally:
        sa.event.remove(engine, "before_cursor_execute", cut_the_update)
    assert cut["left"] == 0
    assert len([s for s in seen if s.startswith("DELETE")]) == 1  # written once, not again
    left = rows(app)
    assert sorted(r.status for r in left.values()) == ["SCHEDULED", "SCHEDULED"]
    assert all(r.errors == 1 for r in left.values())
    assert "lost their lease" not in caplog.text
    assert "retrying in" in caplog.text


@all_databases
def test_a_quick_runs_start_mark_waits_a_delay_and_is_skipped_when_its_row_goes(
    app: Flask, queue: Queue, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22: a start mark waits one FLUSH_DELAY; a run whose outcome deletes
    its row within it is never marked (one statement per batch fewer), a kept
    outcome's start is still written, and an old start is written on its own."""
    monkeypatch.setattr(finisher_module.Finisher, "_loop", lambda self: None)
    state = app.extensions["queue"]
    store = state.store
    due_jobs(app, queue, clock, "echo", list(range(3)))
    deleted, kept, running = store.claim_started(3, LEASE)
    finisher = Finisher(store, state.heartbeat, size=10)
    for job in (deleted, kept, running):
        state.heartbeat.add(job.id, job.attempt)
        finisher.started(job)
    finisher.add(deleted, after_success(deleted, timedelta(0), clock()))
    finisher.add(kept, after_success(kept, timedelta(hours=1), clock()))

    def marks(seen: list[str]) -> list[str]:
        return [s for s in seen if s.startswith("UPDATE") and "SET started_at" in s]

    with statements(app) as seen:
        assert finisher._write_some()  # the two outcomes; `running`'s start is young
    assert len(marks(seen)) == 1  # `kept`'s start only
    after = rows(app)
    assert deleted.id not in after
    assert after[kept.id].started_at is not None
    assert after[running.id].started_at is None
    time.sleep(finisher_module.FLUSH_DELAY)
    with statements(app) as seen:
        assert finisher._write_some()  # now a whole delay old
    assert len(marks(seen)) == 1
    assert rows(app)[running.id].started_at is not None
