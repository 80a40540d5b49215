"""Database outages: the worker loops ride them out, enqueue fails cleanly.

The app talks to PostgreSQL/MariaDB through a :class:`~tests.faultproxy.FaultProxy`
that the tests cut and restore; a second app on the same job table talks to the
database directly, to enqueue and to look at the rows while the proxy is cut.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

import flask_queue.worker
from flask_queue import Queue, StorageError
from flask_queue.errors import InvalidOptionError
from flask_queue.extension import ProduceResult
from flask_queue.store import _is_outage
from flask_queue.worker import produce_loop, work
from tests.conftest import AppFactory, Clock, Recorder, all_databases, server_databases
from tests.faultproxy import FaultProxy

#: How long each test keeps the database away: several retries at the test backoff.
OUTAGE = 1.0
#: The loops' backoff in these tests: small, so recovery is seen within the test.
BACKOFF = 0.05
MAX_BACKOFF = 0.2


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Outage:
    proxy: FaultProxy
    #: The app under test: its database URL points at the proxy.
    app: Flask
    #: Same database and job table, no proxy: works while the proxy is cut.
    direct: Flask

    def rows(self) -> int:
        store = self.direct.extensions["queue"].store
        with store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(store.table)).scalar())


@pytest.fixture
def proxy(db_url: str) -> Iterator[FaultProxy]:
    url = sa.make_url(db_url)
    default_port = 5432 if url.get_backend_name() == "postgresql" else 3306
    with FaultProxy(url.host or "127.0.0.1", url.port or default_port) as p:
        yield p


@pytest.fixture
def outage(proxy: FaultProxy, make_app: AppFactory, queue: Queue, db_url: str) -> Iterator[Outage]:
    # Requested before make_app, so the proxy outlives make_app's teardown,
    # which drops the table through it.
    proxied_url = sa.make_url(db_url).set(host="127.0.0.1", port=proxy.port)
    app = make_app(queue, proxied_url.render_as_string(hide_password=False))
    direct = make_app(queue, db_url, QUEUE_TABLE_NAME=app.config["QUEUE_TABLE_NAME"])
    yield Outage(proxy, app, direct)
    proxy.restore()  # a test that failed mid-outage must not break the teardown


class LoopThread(threading.Thread):
    """Runs a loop in an app context; keeps what it raised instead of printing it."""

    def __init__(self, app: Flask, loop: Callable[[], Any]) -> None:
        super().__init__(name="loop-under-test", daemon=True)
        self.app = app
        self.loop = loop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.app.app_context():
                self.loop()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def ride_out_an_outage(
    outage: Outage,
    queue: Queue,
    clock: Clock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    loop: Callable[[threading.Event], Any],
) -> None:
    caplog.set_level(logging.INFO, logger="flask_queue")
    stop = threading.Event()
    thread = LoopThread(outage.app, lambda: loop(stop))
    try:
        # A delay keeps enqueue from running the job itself (the inline
        # executor dispatches due jobs at once): the loop must claim them.
        with outage.app.app_context():
            queue.enqueue_many("echo", list(range(5)), delay="1s")
        clock.advance(1)
        thread.start()
        # Rows gone, not just handlers called: a cut between a handler's return
        # and its finish would leave the row RUNNING until its lease.
        wait_until(lambda: outage.rows() == 0, "the first jobs to finish")
        assert sorted(recorder.payloads("echo")) == list(range(5))

        outage.proxy.cut()
        with outage.direct.app_context():
            queue.enqueue_many("echo", list(range(5, 10)), delay="1s")
        clock.advance(1)
        time.sleep(OUTAGE)
        assert thread.error is None, repr(thread.error)
        assert thread.is_alive()
        assert outage.rows() == 5  # nothing ran while the database was away
        outage.proxy.restore()

        wait_until(lambda: outage.rows() == 0, "the jobs enqueued during the outage")
        assert sorted(recorder.payloads("echo")) == list(range(10))  # each exactly once
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert thread.error is None, repr(thread.error)

    logged = [r for r in caplog.records if r.name == "flask_queue"]
    warnings = [
        r for r in logged if r.levelno == logging.WARNING and "is the database down?" in r.message
    ]
    assert len(warnings) == 1, [r.message for r in logged]
    assert "StorageError" in warnings[0].message
    recovered = [r for r in logged if r.levelno == logging.INFO and "database back" in r.message]
    assert len(recovered) == 1, [r.message for r in logged]
    assert warnings[0].created < recovered[0].created


@server_databases
def test_worker_survives_a_database_outage(
    outage: Outage,
    queue: Queue,
    clock: Clock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines: list[str] = []

    def loop(stop: threading.Event) -> int:
        return work(
            queue,
            concurrency=2,
            interval=0.05,
            stop=stop,
            report=lines.append,
            backoff=BACKOFF,
            max_backoff=MAX_BACKOFF,
        )

    ride_out_an_outage(outage, queue, clock, recorder, caplog, loop)
    assert lines[-1] == "worker stopped after 10 job(s)"


@server_databases
def test_produce_loop_survives_a_database_outage(
    outage: Outage,
    queue: Queue,
    clock: Clock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines: list[str] = []

    def loop(stop: threading.Event) -> None:
        produce_loop(
            queue, 0.05, stop=stop, report=lines.append, backoff=BACKOFF, max_backoff=MAX_BACKOFF
        )

    ride_out_an_outage(outage, queue, clock, recorder, caplog, loop)
    claimed = sum(int(line.split()[1]) for line in lines)
    assert claimed == 10, lines


@server_databases
@pytest.mark.parametrize("loop_name", ["work", "produce_loop"])
def test_a_blip_between_polls_leaves_no_dead_connection_behind(
    outage: Outage,
    queue: Queue,
    clock: Clock,
    recorder: Recorder,
    loop_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The database drops and returns while the loop sleeps: no failed produce
    # has told the pool, which still holds the dead connections. The next
    # produce must still claim (the app sets no pool_pre_ping).
    stop = threading.Event()
    produced = threading.Event()
    real_produce = queue.produce

    def produce(**kwargs: Any) -> ProduceResult:
        try:
            return real_produce(**kwargs)
        finally:
            produced.set()

    # The loops call producer.produce(state): stub it where the worker looks it up.
    monkeypatch.setattr(flask_queue.worker, "produce", lambda state, **kw: produce(**kw))
    interval = 0.5

    def loop() -> None:
        if loop_name == "work":
            work(
                queue,
                concurrency=2,
                interval=interval,
                stop=stop,
                report=lambda _: None,
                backoff=BACKOFF,
                max_backoff=MAX_BACKOFF,
            )
        else:
            produce_loop(
                queue,
                interval,
                stop=stop,
                report=lambda _: None,
                backoff=BACKOFF,
                max_backoff=MAX_BACKOFF,
            )

    thread = LoopThread(outage.app, loop)
    thread.start()
    try:
        wait_until(produced.is_set, "a first produce")
        # The loop now idles for `interval`, its connection back in the pool.
        assert outage.proxy.open_connections() > 0
        outage.proxy.cut()
        outage.proxy.restore()
        with outage.direct.app_context():
            queue.enqueue_many("echo", [1, 2, 3], delay="1s")
        clock.advance(1)
        wait_until(lambda: outage.rows() == 0, "the jobs enqueued after the blip")
        assert sorted(recorder.payloads("echo")) == [1, 2, 3]
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=5)
    assert thread.error is None, repr(thread.error)


@server_databases
def test_loop_stops_promptly_while_the_database_is_away(
    outage: Outage, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    # A long backoff: stop must cut the wait short, not sit it out.
    thread = LoopThread(
        outage.app,
        lambda: work(
            queue,
            concurrency=1,
            interval=0.05,
            stop=stop,
            report=lambda _: None,
            backoff=30,
            max_backoff=30,
        ),
    )
    outage.proxy.cut()
    thread.start()
    wait_until(
        lambda: any("is the database down?" in r.message for r in caplog.records),
        "the outage warning",
    )
    started = time.monotonic()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2
    assert thread.error is None, repr(thread.error)


@server_databases
def test_enqueue_during_an_outage_fails_without_leaking_the_payload(
    outage: Outage, queue: Queue
) -> None:
    # Built at run time: were it in this file, a traceback quoting the source
    # line would contain it and prove nothing.
    secret = "-".join(["tok", uuid.uuid4().hex, "x"])
    with outage.app.app_context():
        # A pooled connection first, so the first failure is a statement on a
        # dead connection (the error SQLAlchemy would print parameters for),
        # and the next ones are failed connects.
        assert list(queue.jobs()) == []
        outage.proxy.cut()
        failures: list[StorageError] = []
        for enqueue in (
            lambda: queue.enqueue("echo", {"token": secret}, delay="1s"),
            lambda: queue.enqueue("echo", {"token": secret}, delay="1s", id="outage-key"),
            lambda: queue.enqueue_many("echo", [{"token": secret}] * 3, delay="1s"),
        ):
            with pytest.raises(StorageError) as info:
                enqueue()
            failures.append(info.value)
    for exc in failures:
        assert secret not in str(exc)
        formatted = "".join(traceback.format_exception(exc))
        assert secret not in formatted
        assert "Could not" in str(exc)

    outage.proxy.restore()
    assert outage.rows() == 0
    with outage.app.app_context():
        # Through the proxy again, after the outage: nothing half-written either.
        assert list(queue.jobs()) == []


class RecordingEvent(threading.Event):
    """A stop event whose waits return at once and are remembered."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        return self.is_set()


def storage_error(message: str, cause: Exception) -> StorageError:
    """A StorageError as the store raises it: chained to SQLAlchemy's error."""
    exc = StorageError(message)
    exc.__cause__ = cause
    exc.transient = _is_outage(cause)  # what the store's boundary decides
    return exc


class SQLiteLikeError(Exception):
    def __init__(self, message: str, errorname: str) -> None:
        super().__init__(message)
        self.sqlite_errorname = errorname


def down(message: str = "down") -> StorageError:
    driver = ConnectionRefusedError(message)
    return storage_error(
        f"Could not claim jobs: {message}", sa.exc.OperationalError("", {}, driver)
    )


@pytest.mark.parametrize("loop_name", ["work", "produce_loop"])
def test_loops_back_off_while_the_database_is_away(
    app: Flask,
    queue: Queue,
    caplog: pytest.LogCaptureFixture,
    loop_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_queue")
    stop = RecordingEvent()
    outcomes: list[ProduceResult | Exception] = [down()] * 7
    outcomes += [ProduceResult(), down("down again"), ProduceResult(), KeyError("a bug")]

    def produce(**_: Any) -> ProduceResult:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    # The loops call producer.produce(state): stub it where the worker looks it up.
    monkeypatch.setattr(flask_queue.worker, "produce", lambda state, **kw: produce(**kw))
    with pytest.raises(KeyError, match="a bug"):  # not an outage: ends the loop
        if loop_name == "work":
            work(queue, concurrency=1, interval=5, stop=stop, report=lambda _: None)
        else:
            produce_loop(queue, 5, stop=stop, report=lambda _: None)
    assert outcomes == []

    # 0.5 s doubling to the 30 s cap, each up to 20% shorter; the idle polls
    # (5 s) come after each produce that succeeded; a new outage starts over.
    expected = [0.5, 1, 2, 4, 8, 16, 30, 5, 0.5, 5]
    assert len(stop.waits) == len(expected)
    for waited, nominal in zip(stop.waits, expected, strict=True):
        low = nominal if nominal == 5 else 0.8 * nominal
        assert low <= waited <= nominal
    messages = [(r.levelname, r.message) for r in caplog.records if r.name == "flask_queue"]
    levels = [level for level, _ in messages]
    assert levels == ["WARNING"] + ["DEBUG"] * 6 + ["INFO", "WARNING", "INFO"]
    assert "StorageError: Could not claim jobs: down" in messages[0][1]
    assert "after 7 failed attempt(s)" in messages[7][1]


def _invalidated() -> Exception:
    # What SQLAlchemy raises when the dialect recognised a dropped connection,
    # whatever DBAPI class the driver used for it.
    exc = sa.exc.InternalError("", {}, Exception("Packet sequence number wrong"))
    exc.connection_invalidated = True
    return exc


@pytest.mark.parametrize(
    ("cause", "outage"),
    [
        (sa.exc.OperationalError("", {}, ConnectionResetError()), True),
        (sa.exc.InterfaceError("", {}, Exception("the connection is closed")), True),
        (_invalidated(), True),
        (sa.exc.TimeoutError("QueuePool limit reached"), True),
        (sa.exc.OperationalError("", {}, SQLiteLikeError("locked", "SQLITE_BUSY")), True),
        (sa.exc.OperationalError("", {}, SQLiteLikeError("no such table", "SQLITE_ERROR")), False),
        (sa.exc.ProgrammingError("", {}, Exception("relation does not exist")), False),
        (sa.exc.IntegrityError("", {}, Exception("duplicate key")), False),
        (sa.exc.DataError("", {}, Exception("value too long")), False),
        (None, False),
    ],
)
def test_only_an_unreachable_database_is_waited_out(
    app: Flask, queue: Queue, cause: Exception | None, outage: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = RecordingEvent()
    error = storage_error("Could not claim jobs", cause) if cause else StorageError("kept changing")
    calls: list[int] = []

    def produce(**_: Any) -> ProduceResult:
        calls.append(1)
        if len(calls) == 1:
            raise error
        stop.set()
        return ProduceResult()

    # The loops call producer.produce(state): stub it where the worker looks it up.
    monkeypatch.setattr(flask_queue.worker, "produce", lambda state, **kw: produce(**kw))
    # Every database error is waited out (issue 21: the worker never exits on
    # one); only an outage is called one.
    produce_loop(queue, 1, stop=stop, report=lambda _: None)
    assert len(calls) == 2 and stop.waits[0] <= 0.5
    assert error.transient is outage


@all_databases
@pytest.mark.parametrize("loop_name", ["work", "produce_loop"])
def test_a_missing_table_is_waited_out_until_a_migration_creates_it(
    make_app: AppFactory, queue: Queue, caplog: pytest.LogCaptureFixture, loop_name: str
) -> None:
    # Migrations not run yet: the loops do not exit (issue 21), they say once
    # how to fix it and go on once the table is there (a deploy migrated).
    app = make_app(queue)
    stop = threading.Event()
    with app.app_context():
        store = app.extensions["queue"].store
        store.table.drop(store.engine)
        job_ids: list[str] = []

        def migrate_later() -> None:
            with app.app_context():
                store.table.create(store.engine)
                job_ids.append(queue.enqueue("echo", "after the migration").id)
                time.sleep(0.5)
                stop.set()

        threading.Timer(0.3, migrate_later).start()
        if loop_name == "work":
            work(
                queue,
                concurrency=1,
                interval=0.05,
                stop=stop,
                report=lambda _: None,
                backoff=0.05,
                max_backoff=0.1,
            )
        else:
            produce_loop(
                queue, 0.05, stop=stop, report=lambda _: None, backoff=0.05, max_backoff=0.1
            )
        assert queue.get(job_ids[0]) is None  # it ran (and its row went at its success)
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert len([w for w in warnings if "produce failed (StorageError" in w]) == 1
    assert any("flask db upgrade" in w for w in warnings)
    assert not any("is the database down?" in r.message for r in caplog.records)


def test_a_poolers_lost_prepared_statement_names_the_fix() -> None:
    from flask_queue.worker import pooler_hint

    lost = StorageError('Could not claim jobs: DuplicatePreparedStatement: "_pg3_0" already exists')
    assert "transaction pooler" in pooler_hint(lost) and "prepare_threshold" in pooler_hint(lost)
    assert pooler_hint(StorageError("Could not claim jobs: no such table")) == ""


@pytest.mark.parametrize(
    ("backoff", "max_backoff"),
    [(0, 1), (-1, 1), (2, 1), (1, float("inf")), (float("nan"), 1), (1, float("nan"))],
)
def test_loops_refuse_a_backoff_that_makes_no_sense(
    app: Flask, queue: Queue, backoff: float, max_backoff: float
) -> None:
    stop = threading.Event()
    with pytest.raises(InvalidOptionError, match="backoff"):
        work(queue, concurrency=1, interval=1, stop=stop, backoff=backoff, max_backoff=max_backoff)
    with pytest.raises(InvalidOptionError, match="backoff"):
        produce_loop(queue, 1, stop=stop, backoff=backoff, max_backoff=max_backoff)


@server_databases
def test_cut_between_a_handlers_success_and_its_finish_does_not_run_it_twice(
    outage: Outage, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    """The handler returns, then the database goes away before its finish lands:
    the finish is retried until it does, and the handler does not run again."""
    ran: list[int] = []

    def cut_after(job: Any) -> None:
        ran.append(job.payload)
        outage.proxy.cut()  # the handler is done; its finish is next
        threading.Timer(OUTAGE, outage.proxy.restore).start()

    queue.handlers["echo"].func = cut_after
    with outage.app.app_context():
        queue.enqueue("echo", 1, delay="1s")
        clock.advance(1)
        queue.produce()  # inline: claim, start, handler, finish (retried over the cut)
        assert outage.rows() == 0  # finished and deleted, not left RUNNING
        clock.advance(3600)  # past any lease: nothing left to claim again
        assert queue.produce().claimed == 0
    assert ran == [1]


@server_databases
def test_cut_mid_claim_loses_nothing_and_runs_each_job_once(
    outage: Outage, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    store = outage.app.extensions["queue"].store
    with outage.app.app_context():
        queue.enqueue_many("echo", list(range(20)), delay="1s")
    clock.advance(1)

    def cut_on_claim(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FOR UPDATE" in statement and not outage.proxy.is_cut:
            outage.proxy.cut()

    sa.event.listen(store.engine, "before_cursor_execute", cut_on_claim)
    try:
        with outage.app.app_context(), pytest.raises(StorageError) as info:
            queue.produce()
        assert info.value.transient
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", cut_on_claim)
        outage.proxy.restore()
    assert recorder.payloads("echo") == []
    with outage.app.app_context():
        for _ in range(3):
            queue.produce()
    assert sorted(recorder.payloads("echo")) == list(range(20))
    assert outage.rows() == 0


@server_databases
def test_produce_counts_what_it_claimed_before_a_cut(outage: Outage, queue: Queue) -> None:
    # The database goes away between two claim batches of one produce. The
    # jobs of the first batch are already handed off and will run: produce
    # must report them (the worker counts by it, `produce --loop` logs it)
    # instead of raising and losing the count.
    from flask_queue.executors import Executor

    class CutAfterFirstBatch(Executor):
        def __init__(self) -> None:
            super().__init__(outage.app.extensions["queue"])
            self.submitted: list[str] = []

        def capacity(self) -> int:
            return 3

        def submit(self, job: Any) -> None:
            self.submitted.append(job.id)
            outage.proxy.cut()

    with outage.direct.app_context():
        # An hour out, then made due: the inline executor would run jobs
        # enqueued as due at once.
        queue.enqueue_many("echo", list(range(10)), delay="1h")
        store = outage.direct.extensions["queue"].store
        with store.engine.begin() as conn:
            conn.execute(sa.update(store.table).values(run_at=store.now()))
    executor = CutAfterFirstBatch()
    with outage.app.app_context():
        result = queue.produce(executor=executor)
    assert result.claimed == len(executor.submitted) == 3
    assert result.more
    outage.proxy.restore()
    with outage.direct.app_context():
        running = queue.jobs(status="RUNNING")
    assert sorted(j.id for j in running) == sorted(executor.submitted)


@server_databases
def test_cut_mid_enqueue_many_stores_nothing_and_a_retry_stores_all(
    outage: Outage, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    # 2,500 rows go as three INSERTs in one transaction: the connection dies
    # after the first, so the call raises and the database keeps none of them
    # (no half batch a retry would then duplicate).
    store = outage.app.extensions["queue"].store
    inserts: list[str] = []

    def cut_on_second_insert(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)
            if len(inserts) == 2:
                outage.proxy.cut()

    sa.event.listen(store.engine, "before_cursor_execute", cut_on_second_insert)
    payloads = [{"n": i, "token": "s3cret-value"} for i in range(2500)]
    try:
        with outage.app.app_context(), pytest.raises(StorageError) as info:
            queue.enqueue_many("echo", payloads, delay="1s")
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", cut_on_second_insert)
        outage.proxy.restore()
    assert len(inserts) == 2 and info.value.transient
    assert "s3cret-value" not in str(info.value)
    assert outage.rows() == 0
    with outage.app.app_context():
        queue.enqueue_many("echo", payloads, delay="1s")
        assert outage.rows() == 2500
        clock.advance(1)
        while queue.produce().claimed:
            pass
    assert sorted(p["n"] for p in recorder.payloads("echo")) == list(range(2500))
