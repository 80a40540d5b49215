"""Flow control (issue 10): priorities, pause/resume, per-queue concurrency and
rate limits, enforced by the claim in every process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import Job, Queue
from flask_queue.errors import InvalidOptionError, UnknownQueueError
from flask_queue.executors import ThreadExecutor
from tests.conftest import AppFactory, Clock, Recorder, all_databases, server_databases

LEASE = timedelta(minutes=1)
PRODUCERS = 8


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def all_rows(app: Flask) -> list[Any]:
    store = app.extensions["queue"].store
    with store.engine.connect() as c:
        return list(c.execute(sa.select(store.table)))


# -- priorities ------------------------------------------------------------------------


@all_databases
def test_claim_takes_the_highest_priority_first_then_the_oldest(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    store = app.extensions["queue"].store
    low_old = queue.enqueue("echo", "low, oldest", delay="1s", priority=-5)
    clock.advance(1)
    default = queue.enqueue("echo", "default", delay="1s")
    high_new = queue.enqueue("echo", "high", delay="2s", priority=5)
    high_old = queue.enqueue("echo", "high, older", delay="1s", priority=5)
    clock.advance(5)
    order = [store.claim(1, LEASE)[0].id for _ in range(4)]
    assert order == [high_old.id, high_new.id, default.id, low_old.id]
    assert store.claim(1, LEASE) == []


@all_databases
def test_priority_comes_from_the_job_then_the_handler(
    make_app: AppFactory, queue: Queue, clock: Clock
) -> None:
    @queue.handler("urgent", priority=7)
    def urgent(job: Job[Any]) -> None:
        return None

    app = make_app(queue)
    with app.app_context():
        a = urgent.enqueue(1, delay="1s")
        b = urgent.enqueue(2, delay="1s", priority=-1)
        c = queue.enqueue_many("urgent", [3, 4], delay="1s")
        assert [queue.get(j.id).priority for j in (a, b, *c)] == [7, -1, 7, 7]  # type: ignore[union-attr]
        assert a.priority == 7 and b.priority == -1


@all_databases
@pytest.mark.parametrize("bad", [101, -101, 1.5, "5", True])
def test_a_bad_priority_is_refused_and_nothing_is_written(
    app: Flask, queue: Queue, bad: Any
) -> None:
    with pytest.raises(InvalidOptionError, match=r"Invalid priority"):
        queue.enqueue("echo", 1, priority=bad)
    with pytest.raises(InvalidOptionError, match=r"Invalid priority"):
        queue.enqueue_many("echo", [1, 2], priority=bad)
    assert all_rows(app) == []


# -- pause / resume --------------------------------------------------------------------


@all_databases
def test_a_paused_queue_is_not_claimed_by_any_process_until_resumed(
    make_app: AppFactory, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    app = make_app(queue)
    other = make_app(queue, QUEUE_TABLE_NAME=app.config["QUEUE_TABLE_NAME"])  # another process
    with app.app_context():
        queue.pause("echo")
        job = queue.enqueue("echo", "waits")  # due now, dispatched: not claimed
        queue.enqueue("boom", "not paused", delay="1s")
        clock.advance(1)
    with other.app_context():
        assert queue.produce().claimed == 1  # boom's job only
        stored = queue.get(job.id)
        assert stored is not None and stored.status.value == "SCHEDULED"
        assert queue.queue_settings()["echo"]["paused"] is True
    assert recorder.payloads("echo") == []
    with app.app_context():
        queue.resume("echo")
    with other.app_context():
        assert queue.produce().claimed == 1
    assert recorder.payloads("echo") == ["waits"]


@all_databases
def test_pausing_lets_a_running_job_finish(
    make_app: AppFactory, queue: Queue, clock: Clock
) -> None:
    started, release = threading.Event(), threading.Event()

    @queue.handler("slow")
    def slow(job: Job[Any]) -> None:
        started.set()
        assert release.wait(10)

    app = make_app(queue, QUEUE_EXECUTOR="thread")
    with app.app_context():
        job = queue.enqueue("slow", None)
        assert started.wait(10)
        queue.pause("slow")
        release.set()
        app.extensions["queue"].executor.shutdown(wait=True)  # writes the outcome
        assert queue.get(job.id) is None  # it finished and was deleted


def test_pause_refuses_an_unknown_queue(app: Flask, queue: Queue, runner: Any) -> None:
    with pytest.raises(UnknownQueueError, match=r"Unknown queue 'nope'"):
        queue.pause("nope")
    result = runner.invoke(args=["queue", "pause", "nope"])
    assert result.exit_code != 0 and "Unknown queue 'nope'" in result.output
    assert queue.queue_settings() == {}


def test_cli_pause_and_resume(app: Flask, queue: Queue, runner: Any, clock: Clock) -> None:
    result = runner.invoke(args=["queue", "pause", "echo"])
    assert result.exit_code == 0, result.output
    assert "echo paused" in result.output
    queue.enqueue("echo", 1)
    assert queue.produce().claimed == 0
    result = runner.invoke(args=["queue", "resume", "echo"])
    assert result.exit_code == 0 and "echo resumed" in result.output
    assert queue.produce().claimed == 1


# -- declared limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "Invalid concurrency 0"),
        ({"concurrency": 2, "exclusive": True}, "contradicts concurrency=2"),
        ({"rate": "10/q"}, "Invalid rate '10/q'"),
        ({"rate": "0/s"}, "Invalid rate '0/s'"),
        ({"rate": "1/0.0001s"}, "Invalid rate '1/0.0001s'"),
        ({"rate": "5/1.0005s"}, "Invalid rate '5/1.0005s'"),
        ({"rate": "20000/s"}, "at most 10,000 per period"),
        ({"priority": 500}, "Invalid priority 500"),
    ],
)
def test_bad_limits_are_refused_at_declaration(options: dict[str, Any], message: str) -> None:
    queue = Queue()
    with pytest.raises(InvalidOptionError, match=message):
        queue.handler("limited", **options)
    assert queue.handlers == {}


@all_databases
def test_declared_limits_are_stored_before_the_first_claim(
    make_app: AppFactory, queue: Queue
) -> None:
    @queue.handler("gateway", concurrency=3, rate="100/m")
    def gateway(job: Job[Any]) -> None:
        return None

    @queue.handler("export", exclusive=True)
    def export(job: Job[Any]) -> None:
        return None

    app = make_app(queue)
    with app.app_context():
        assert queue.queue_settings() == {}  # nothing claimed yet
        queue.produce()
        settings = queue.queue_settings()
    assert settings["gateway"] == {
        "paused": False,
        "concurrency": 3,
        "rate": (100, timedelta(minutes=1)),
        "fair": False,
    }
    assert settings["export"]["concurrency"] == 1


def _producers(apps: list[Flask], queue: Queue, stop: threading.Event) -> list[threading.Thread]:
    """One producer per app (each its own engine and pool, as separate processes
    would be), each handing its claims to a pool of 4 threads."""

    def loop(app: Flask) -> None:
        with app.app_context():
            executor = ThreadExecutor(app.extensions["queue"], workers=4)
            try:
                while not stop.is_set():
                    if executor.capacity() <= 0:
                        executor.wait_for_room(0.05)
                        continue
                    if not queue.produce(executor=executor, housekeeping=False).claimed:
                        time.sleep(0.005)
            finally:
                executor.shutdown(wait=True)

    threads = [threading.Thread(target=loop, args=(a,), daemon=True) for a in apps]
    for thread in threads:
        thread.start()
    return threads


def sharing_apps(make_app: AppFactory, queue: Queue, **config: Any) -> list[Flask]:
    """PRODUCERS apps on one job table, as many processes would be."""
    first = make_app(queue, **config)
    table = first.config["QUEUE_TABLE_NAME"]
    return [first] + [
        make_app(queue, QUEUE_TABLE_NAME=table, **config) for _ in range(PRODUCERS - 1)
    ]


def produce_until(apps: list[Flask], queue: Queue, done: Callable[[], bool], what: str) -> None:
    """Run ``_producers`` over ``apps`` until ``done``, then stop and join them."""
    stop = threading.Event()
    threads = _producers(apps, queue, stop)
    try:
        wait_until(done, what)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


@all_databases
def test_concurrency_limit_holds_across_eight_producers(
    make_app: AppFactory, queue: Queue, clock: Clock
) -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}
    done: list[int] = []

    @queue.handler("gateway", concurrency=3)
    def gateway(job: Job[int]) -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
            done.append(job.payload)

    apps = sharing_apps(make_app, queue)
    first = apps[0]
    with first.app_context():
        queue.enqueue_many("gateway", list(range(40)), delay="1s")
        queue.enqueue_many("echo", list(range(40)), delay="1s")  # unlimited, alongside
    clock.advance(1)
    produce_until(
        apps,
        queue,
        lambda: len(done) == 40 and all_rows(first) == [],
        "40 limited jobs, and every row finished",
    )
    assert sorted(done) == list(range(40))  # each once
    assert state["max"] <= 3
    assert state["max"] >= 2  # and not one at a time


@all_databases
def test_exclusive_queue_runs_one_at_a_time(
    make_app: AppFactory, queue: Queue, clock: Clock
) -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}
    order: list[int] = []

    @queue.handler("export", exclusive=True)
    def export(job: Job[int]) -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            order.append(job.payload)
        time.sleep(0.005)
        with lock:
            state["now"] -= 1

    apps = sharing_apps(make_app, queue)
    with apps[0].app_context():
        for i in range(15):
            queue.enqueue("export", i, delay="1s")
            clock.advance(0.001)  # distinct run_at: the order is theirs
    clock.advance(1)
    produce_until(apps, queue, lambda: len(order) == 15, "15 exclusive jobs")
    assert state["max"] == 1
    assert order == list(range(15))  # in run_at order


@all_databases
def test_rate_limit_holds_in_every_window_across_eight_producers(
    make_app: AppFactory,
) -> None:
    queue = Queue()  # the real clock: the limit is over real seconds

    claimed_at: list[Any] = []

    @queue.handler("api", rate="10/s")
    def api(job: Job[int]) -> None:
        claimed_at.append(job.updated_at)  # the claim's time: the rate gates claims

    apps = sharing_apps(make_app, queue, QUEUE_KEEP_COMPLETED="1h")  # keep started_at
    first = apps[0]
    with first.app_context():
        queue.enqueue_many("api", list(range(25)))
    produce_until(
        apps,
        queue,
        lambda: sum(r.status == "COMPLETED" for r in all_rows(first)) == 25,
        "25 jobs",
    )
    starts = sorted(claimed_at)
    assert len(starts) == 25
    for i, begin in enumerate(starts):
        in_window = [s for s in starts[i:] if s - begin < timedelta(seconds=1)]
        assert len(in_window) <= 10, " ".join(str(s)[17:] for s in starts)
    # 25 starts at 10 per second: the last at least two seconds after the first.
    assert starts[-1] - starts[0] >= timedelta(seconds=2)


@all_databases
def test_a_limited_queues_job_enqueued_due_is_dispatched_under_its_limit(
    make_app: AppFactory, queue: Queue
) -> None:
    ran: list[int] = []

    @queue.handler("solo", exclusive=True)
    def solo(job: Job[int]) -> None:
        ran.append(job.payload)

    app = make_app(queue)
    with app.app_context():
        queue.enqueue("solo", 1)  # inline: claimed through the limited path, runs now
        assert ran == [1]
        assert all_rows(app) == []


@server_databases
def test_a_claim_passes_over_rows_another_claimer_holds(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    # Another claimer holds the 40 best candidates (a transaction still open):
    # this claim must take the next free ones, not come back empty.
    store = app.extensions["queue"].store
    best = [j.id for j in queue.enqueue_many("echo", list(range(40)), delay="1s", priority=5)]
    rest = {j.id for j in queue.enqueue_many("echo", list(range(40, 60)), delay="1s")}
    clock.advance(1)
    t = store.table
    engine = store.engine
    if store.dialect == "mysql":
        engine = engine.execution_options(isolation_level="READ COMMITTED")
    with engine.connect() as other:
        held = other.begin()
        # One by primary key: a scan would lock every row it reads on InnoDB.
        for job_id in best:
            other.execute(sa.select(t.c.id).where(t.c.id == job_id).with_for_update()).all()
        claimed = store.claim(5, LEASE)
        held.rollback()
    assert len(claimed) == 5 and {c.id for c in claimed} <= rest


@all_databases
def test_a_release_without_the_limit_does_not_clear_it_until_the_deploy_sync(
    make_app: AppFactory, clock: Clock
) -> None:
    # Rolling deploy: the old release declares `exclusive`, the new one has the
    # same handler without it. The new release's produce must not lift the
    # limit (the old one would write it back: between the two, no limit).
    old, new = Queue(clock=clock), Queue(clock=clock)

    @old.handler("export", exclusive=True)
    def export_old(job: Job[Any]) -> None:
        return None

    @new.handler("export")
    def export_new(job: Job[Any]) -> None:
        return None

    old_app = make_app(old)
    new_app = make_app(new, QUEUE_TABLE_NAME=old_app.config["QUEUE_TABLE_NAME"])
    with old_app.app_context():
        old.produce()
    with new_app.app_context():
        new.produce()
        assert new.queue_settings()["export"]["concurrency"] == 1  # kept
        result = new_app.test_cli_runner().invoke(args=["queue", "sync-crons"])
        assert result.exit_code == 0, result.output
        assert new.queue_settings()["export"]["concurrency"] is None  # the deploy's sync


def _rows_read_by(app: Flask, stmt: Any) -> int:
    """Index entries and rows the database reads to answer ``stmt``: PostgreSQL's
    EXPLAIN ANALYZE (rows out of every scan node), MariaDB's session handler
    counters."""
    engine = app.extensions["queue"].store.engine
    with engine.connect() as c:
        if engine.dialect.name == "postgresql":
            c.exec_driver_sql(f"ANALYZE {app.config['QUEUE_TABLE_NAME']}")
            sql = stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
            (plan,) = c.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").scalar()

            def scanned(node: dict[str, Any]) -> int:
                own = node["Actual Rows"] if "Scan" in node["Node Type"] else 0
                own += node.get("Rows Removed by Filter", 0) if "Scan" in node["Node Type"] else 0
                return own + sum(scanned(child) for child in node.get("Plans", []))

            return scanned(plan["Plan"])
        c.exec_driver_sql("FLUSH STATUS")
        c.execute(stmt).all()
        counters = dict(c.exec_driver_sql("SHOW SESSION STATUS LIKE 'Handler_read%%'").all())
        return sum(
            int(counters[k])
            for k in (
                "Handler_read_next",
                "Handler_read_prev",
                "Handler_read_rnd_next",
                "Handler_read_key",
                "Handler_read_first",
            )
        )


@server_databases
def test_a_claim_reads_what_it_takes_not_the_whole_due_backlog(
    make_app: AppFactory, queue: Queue, clock: Clock
) -> None:
    # The claim takes the highest priority, then the oldest: it used to read the
    # whole due range of (status, run_at) and sort it by priority, so a queue
    # that fell behind claimed slower the further behind it was (80 ms per claim
    # of 100 at 100,000 due on PostgreSQL, 430 ms on MariaDB). It now walks
    # (status, priority DESC, run_at) and stops at its LIMIT.
    app = make_app(queue)
    store = app.extensions["queue"].store
    t = store.table
    with app.app_context():
        queue.enqueue_many("echo", [None] * 4000, delay="1s")
        queue.enqueue_many("echo", [None] * 20, delay="1s", priority=5)
    clock.advance(1)
    # The claim's own due range and order (every claim path builds it here).
    due = store._due_phases(store.now())[0]
    candidates = sa.select(t.c.id).where(due.where).order_by(*due.order).limit(100)
    read = _rows_read_by(app, candidates)
    assert read <= 400, read
