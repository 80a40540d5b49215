"""Regression tests for the run-path defects of the third review (issue 17,
"Found by the review"). Each failed on main at 5251263 before its fix; the
docstring of each says how."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import Job, JobStatus, Queue
from tests.conftest import AppFactory, Clock, Recorder, all_databases, server_databases
from tests.test_flow_control import all_rows, produce_until, sharing_apps, wait_until

LEASE = timedelta(minutes=1)


def _store(app: Flask) -> Any:
    return app.extensions["queue"].store


# -- 1: the rate log cannot outgrow anything, nor stop other queues ----------------------


@all_databases
def test_a_long_rate_log_never_breaks_a_claim(make_app: AppFactory, queue: Queue) -> None:
    """Before: on MariaDB the JSON start log outgrew the queue row's 64 KiB TEXT
    after ~3,000 starts in one window, and every claim failed from then on."""

    @queue.handler("api", rate="10000/h")
    def api(job: Job[int]) -> None:
        return None

    app = make_app(queue, QUEUE_EXECUTOR="thread")
    store = _store(app)
    with app.app_context():
        queue.enqueue_many("api", list(range(4000)), delay="1s")
        queue.enqueue_many("echo", list(range(10)), delay="1s")
        queue.produce(executor=None, limit=0)  # stores the declared limits
    store.clock = lambda: queue.clock() + timedelta(seconds=2)
    taken = 0
    with app.app_context():
        while got := store.claim(100, LEASE):
            taken += len(got)
            store.mark_started([(c.id, c.attempt) for c in got])
    assert taken == 4010


@all_databases
def test_a_limited_claim_that_fails_does_not_stop_the_free_queues(
    make_app: AppFactory, queue: Queue, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: any error in the limited queues' claim (here: an upgrade whose
    migration has not created the start log's table yet) failed every claim,
    limited or not, and `flask queue work` exited."""

    @queue.handler("api", rate="5/s")
    def api(job: Job[int]) -> None:
        return None

    app = make_app(queue)
    store = _store(app)
    with app.app_context():
        queue.enqueue("api", 1, delay="1s")
        queue.enqueue("echo", 2, delay="1s")
        queue.produce()
        starts = store.table.metadata.tables.get(f"{store.table.name}_starts")
        if starts is not None:
            starts.drop(store.engine)
        else:  # before the fix: break the queue row's log instead
            with store.engine.begin() as c:
                c.execute(sa.update(store.queues).values(starts="not json"))
    clock.advance(1)
    with app.app_context():
        claimed = store.claim(10, LEASE)
    assert [c.queue for c in claimed] == ["echo"]
    assert "limited queues" in caplog.text


# -- 2: an overridden running job never runs twice at once -------------------------------


@all_databases
@pytest.mark.parametrize("then", ["nothing more", "override again", "run_now"])
@pytest.mark.parametrize("limits", [{}, {"exclusive": True}], ids=["free", "exclusive"])
def test_a_second_override_or_run_now_keeps_the_old_runs_lease(
    make_app: AppFactory, queue: Queue, clock: Clock, then: str, limits: dict[str, Any]
) -> None:
    """Before: the second override (or run_now) of the replaced row cleared the
    old run's lease, and the next produce ran the new content beside it. (One
    override alone, "nothing more", was already right: issue 12's test, moved
    here.)"""
    gate = threading.Event()
    running: list[str] = []
    overlap: list[int] = []
    ran: list[str] = []
    lock = threading.Lock()

    @queue.handler("solo", **limits)
    def solo(job: Job[str]) -> None:
        with lock:
            running.append(job.payload)
            overlap.append(len(running))
        if job.payload == "old":
            gate.wait(20)
        with lock:
            running.remove(job.payload)
            ran.append(job.payload)

    app = make_app(queue, QUEUE_EXECUTOR="thread")
    with app.app_context():
        queue.enqueue("solo", "old", id="only", delay="1s")
        clock.advance(1)
        queue.produce()
        wait_until(lambda: running == ["old"], "the old run to start")
        replaced = queue.enqueue("solo", "new", id="only", override=True)
        assert replaced.payload == "new"
        if then == "override again":
            queue.enqueue("solo", "newer", id="only", override=True)
        elif then == "run_now":
            queue.run_now(replaced.id)
        for _ in range(3):
            queue.produce()
            time.sleep(0.1)
        try:
            assert running == ["old"] and ran == []  # the new content waits
        finally:
            gate.set()
        wait_until(lambda: ran[:1] == ["old"], "the old run to end")

        def new_content_ran() -> bool:
            queue.produce()
            return len(ran) == 2

        wait_until(new_content_ran, "the new content to run after the old run")
    assert ran[1] == ("newer" if then == "override again" else "new")
    assert max(overlap) == 1


# -- 3: a dead run takes its place by priority ---------------------------------------------


@all_databases
def test_an_expired_run_is_claimed_by_priority_under_a_backlog(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    """Before: the expired lease was claimed only when due jobs left room in
    the claim: under a steady backlog it was never claimed at all."""
    store = _store(app)
    dead = queue.enqueue("echo", "dead", delay="1s", priority=10)
    clock.advance(1)
    (claimed,) = store.claim_started(1, LEASE)
    store.mark_started([(claimed.id, claimed.attempt)])  # then its process dies
    queue.enqueue_many("echo", list(range(80)), delay="1s")
    clock.advance(LEASE.total_seconds() + 1)
    assert dead.id in [c.id for c in store.claim(5, LEASE)]


@all_databases
def test_an_expired_run_and_a_due_job_of_one_priority_go_by_age(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    store = _store(app)
    dead = queue.enqueue("echo", "dead", delay="1s")
    clock.advance(1)
    store.claim_started(1, LEASE)
    clock.advance(LEASE.total_seconds() + 10)  # expired 10 s ago
    fresh = queue.enqueue("echo", "fresh", delay="1s")
    clock.advance(1)
    assert [c.id for c in store.claim(1, LEASE)] == [dead.id]
    assert [c.id for c in store.claim(1, LEASE)] == [fresh.id]


# -- 4: an error line is stored whatever it holds -----------------------------------------


@all_databases
@pytest.mark.parametrize("text", ["\x00" * 300, "\udc80" * 300, "é\x00\udcff" * 120])
def test_an_error_message_that_grows_when_escaped_is_still_recorded(
    make_app: AppFactory, queue: Queue, text: str
) -> None:
    """Before: the one-line error was cut to 255 characters and then escaped
    (NUL -> \\x00), which PostgreSQL and MariaDB refused: the job stayed
    RUNNING, and the inline enqueue raised."""

    @queue.handler("weird", retry=0)
    def weird(job: Job[int]) -> None:
        raise ValueError(text)

    app = make_app(queue, QUEUE_KEEP_COMPLETED="1h")
    with app.app_context():
        job = queue.enqueue("weird", 1)
        stored = queue.get(job.id)
    assert stored is not None and stored.status.value == "FAILED"
    assert stored.error is not None and stored.error.startswith("ValueError: ")
    assert len(stored.error) <= 255
    assert "ValueError" in (stored.reason or "")


# -- 5: a rate limit counts starts --------------------------------------------------------


@all_databases
def test_a_rate_limit_counts_a_run_from_its_start_not_its_claim(
    make_app: AppFactory, queue: Queue, clock: Clock
) -> None:
    """Before: the window counted claims. A run claimed behind busy threads
    started 0.6 s late, and the next run, claimed a window after the first
    claim, started 0.45 s after it under rate="1/s"."""

    @queue.handler("api", rate="1/s")
    def api(job: Job[int]) -> None:
        return None

    app = make_app(queue)
    store = _store(app)
    with app.app_context():
        queue.produce(limit=0)  # stores the limit
        first = queue.enqueue("api", 1, delay="1s")
        clock.advance(0.1)
        second = queue.enqueue("api", 2, delay="1s")
        clock.advance(1)
        (claimed,) = store.claim_started(5, LEASE)
        assert claimed.id == first.id
        clock.advance(0.6)  # it waited for a thread
        store.mark_started([(claimed.id, claimed.attempt)])
        clock.advance(0.45)  # a window after the claim, 0.45 s after the start
        assert store.claim(5, LEASE) == []
        clock.advance(0.6)
        assert [c.id for c in store.claim(5, LEASE)] == [second.id]


@all_databases
def test_a_claim_holds_its_place_until_its_run_starts_or_is_given_back(
    make_app: AppFactory, queue: Queue, clock: Clock
) -> None:
    # A claim counts until its run starts; a run released unstarted (a failed
    # delivery) holds no place; one whose process died unstarted is counted as
    # started when found dead (it may have run unrecorded), for one window.
    @queue.handler("api", rate="1/s")
    def api(job: Job[int]) -> None:
        return None

    app = make_app(queue)
    store = _store(app)
    with app.app_context():
        queue.produce(limit=0)
        queue.enqueue_many("api", [1, 2, 3], delay="1s")
        clock.advance(1)
        (claimed,) = store.claim(5, LEASE)
        clock.advance(5)
        assert store.claim(5, LEASE) == []  # claimed, not started: counts
        assert store.release(claimed.id, claimed.attempt)
        assert len(store.claim(5, LEASE)) == 1
        clock.advance(LEASE.total_seconds() + 1)  # that claim's process died
        assert store.claim(5, LEASE) == []  # counted from now, for a window
        clock.advance(1)
        assert len(store.claim(5, LEASE)) == 1


@server_databases
def test_a_rate_limit_holds_for_starts_across_eight_producers(make_app: AppFactory) -> None:
    queue = Queue()
    starts: list[float] = []
    lock = threading.Lock()

    @queue.handler("api", rate="4/s")
    def api(job: Job[int]) -> None:
        with lock:
            starts.append(time.time())

    apps = sharing_apps(make_app, queue)
    with apps[0].app_context():
        queue.enqueue_many("api", list(range(10)))
    produce_until(apps, queue, lambda: len(starts) == 10, "10 starts")
    starts.sort()
    for i, begin in enumerate(starts):
        assert len([s for s in starts[i:] if s - begin < 1.0]) <= 4, starts


# -- 6: a cron changed while it runs follows the new schedule -----------------------------


@all_databases
def test_a_cron_changed_while_its_occurrence_runs_follows_the_new_schedule(
    make_app: AppFactory, clock: Clock
) -> None:
    """Before: the deploy's sync wrote the new expression on the RUNNING row,
    the run's finish planned from the old one (tomorrow 09:00), and no later
    sync saw a difference: the new `*/5` cron ran 0 times in the next hour."""
    old, new = Queue(clock=clock), Queue(clock=clock)
    gate, began = threading.Event(), threading.Event()

    @old.cron("0 9 * * *", name="digest")
    def digest_old(job: Job[None]) -> None:
        began.set()
        gate.wait(20)

    @new.cron("*/5 * * * *", name="digest")
    def digest_new(job: Job[None]) -> None:
        return None

    clock.now = clock.now.replace(hour=8, minute=59, second=59)
    old_app = make_app(old, QUEUE_EXECUTOR="thread")
    new_app = make_app(new, QUEUE_TABLE_NAME=old_app.config["QUEUE_TABLE_NAME"])
    with old_app.app_context():
        old.produce()
        clock.advance(1)  # 09:00:00
        old.produce()
        assert began.wait(10)
    with new_app.app_context():
        new.sync_crons()  # the deploy, while the occurrence runs
    gate.set()
    with old_app.app_context():
        wait_until(lambda: all_rows(old_app)[0].status == "SCHEDULED", "the finish")
    clock.advance(60)
    with new_app.app_context():
        new.produce()
        (row,) = all_rows(new_app)
    assert row.schedule == "*/5 * * * *"
    assert row.run_at <= clock.now.replace(tzinfo=None) + timedelta(minutes=5)


# -- 7, 8: priority order within a claim and across limited queues ---------------------------


@all_databases
def test_one_claims_jobs_run_by_priority(app: Flask, queue: Queue, clock: Clock) -> None:
    """Before: a claim's jobs ran in run_at order (MariaDB, SQLite) or the
    order RETURNING gave (PostgreSQL): the priority-10 job ran last."""
    recorder: list[Any] = []

    @queue.handler("ordered")
    def ordered(job: Job[str]) -> None:
        recorder.append(job.payload)

    for payload in ["a", "b", "c"]:
        queue.enqueue("ordered", payload, delay="1s")
        clock.advance(0.1)
    queue.enqueue("ordered", "urgent", delay="1s", priority=10)
    clock.advance(1)
    queue.produce()
    assert recorder == ["urgent", "a", "b", "c"]


@all_databases
def test_a_plain_claims_order_is_by_priority(app: Flask, queue: Queue, clock: Clock) -> None:
    low = []
    for payload in [1, 2, 3]:
        low.append(queue.enqueue("echo", payload, delay="1s"))
        clock.advance(0.1)
    high = queue.enqueue("echo", 4, delay="1s", priority=10)
    clock.advance(1)
    store = _store(app)
    assert [c.id for c in store.claim(10, LEASE)] == [high.id, *(j.id for j in low)]


@all_databases
def test_a_limited_queue_does_not_jump_the_priority_order(
    make_app: AppFactory, queue: Queue, clock: Clock
) -> None:
    """Before: limited queues were claimed before free ones, and in name order
    among themselves."""

    @queue.handler("a_limited", exclusive=True)
    def a_limited(job: Job[int]) -> None:
        return None

    @queue.handler("b_limited", concurrency=5)
    def b_limited(job: Job[int]) -> None:
        return None

    app = make_app(queue)
    store = _store(app)
    with app.app_context():
        queue.produce(limit=0)  # stores the limits
        low = queue.enqueue("a_limited", 1, delay="1s", priority=-5)
        free = queue.enqueue("echo", 2, delay="1s", priority=10)
        mid = queue.enqueue("b_limited", 3, delay="1s", priority=5)
        clock.advance(1)
        order = [c.id for c in store.claim(1, LEASE)]
        order += [c.id for c in store.claim(1, LEASE)]
        order += [c.id for c in store.claim(1, LEASE)]
    assert order == [free.id, mid.id, low.id]


# -- 9: a cancelled async handler writes an outcome ------------------------------------------


@all_databases
def test_an_async_handler_raising_cancelled_error_ends_its_run(
    make_app: AppFactory, queue: Queue
) -> None:
    """Before: CancelledError (a BaseException) escaped the runner: the inline
    enqueue raised it and the job stayed RUNNING until its lease."""

    @queue.handler("cancelled", retry=0)
    async def cancelled(job: Job[int]) -> None:
        raise asyncio.CancelledError()

    app = make_app(queue)
    with app.app_context():
        job = queue.enqueue("cancelled", 1)
        stored = queue.get(job.id)
    assert stored is not None and stored.status.value == "FAILED"
    assert "CancelledError" in (stored.error or "")


# -- 12: deadlocks of mark_started, delete of a running job ----------------------------------


@server_databases
def test_mark_started_chosen_as_a_deadlock_victim_tries_again(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    """Before: a deadlock between mark_started and another writer of the same
    rows (seen under eight claimers on MariaDB) was raised: with the inline
    executor out of produce, and the claimed job waited a lease. Here the
    deadlock is made on purpose, with mark_started as the database's victim."""
    store = _store(app)
    first, second = sorted(queue.enqueue_many("echo", [1, 2], delay="1s"), key=lambda j: j.id)
    filler = [j.id for j in queue.enqueue_many("echo", list(range(30)), delay="1h")]
    clock.advance(1)
    runs = [(j.id, j.attempt) for j in store.claim_started(2, LEASE)]
    assert sorted(i for i, _ in runs) == [first.id, second.id]
    t = store.table
    engine = store.engine
    if store.dialect == "mysql":
        engine = engine.execution_options(isolation_level="READ COMMITTED")
    errors: list[BaseException] = []

    def mark() -> None:
        try:
            store.mark_started(runs)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with engine.connect() as other:
        held = other.begin()
        # The other writer holds more (InnoDB's victim is the smaller one) and
        # the second row, then asks for the first, which mark_started holds.
        other.execute(sa.update(t).where(t.c.id.in_(filler)).values(priority=1))
        other.execute(sa.select(t.c.id).where(t.c.id == second.id).with_for_update()).all()
        marker = threading.Thread(target=mark)
        marker.start()
        time.sleep(0.3)  # mark_started holds the first row and waits for the second
        other.execute(sa.select(t.c.id).where(t.c.id == first.id).with_for_update()).all()
        held.commit()
    marker.join(30)
    assert errors == []
    with store.engine.connect() as c:
        started = c.execute(sa.select(t.c.started_at).where(t.c.id.in_([first.id, second.id])))
        assert all(row[0] is not None for row in started)


@all_databases
def test_deleting_a_running_job_keeps_its_row_while_its_run_holds_the_lease(
    make_app: AppFactory, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    """Before: the delete removed the row, and with it the run's concurrency
    slot, while the handler went on running. Since issue 19 the delete cancels
    the run first and the row goes when the run ends (tests/test_job_control.py)."""
    app = make_app(queue)
    store = _store(app)
    with app.app_context():
        job = queue.enqueue("echo", 1, delay="1s")
        clock.advance(1)
        store.claim_started(1, LEASE)
        assert queue.delete(job.id) is True
        asked = queue.get(job.id)
        assert asked is not None and asked.status is JobStatus.RUNNING
        assert asked.cancelled_at is not None and asked.cancel_action == "DELETE"
        clock.advance(LEASE.total_seconds() + 1)  # the run died: its row may go
        assert queue.delete(job.id) is True
        assert queue.get(job.id) is None
