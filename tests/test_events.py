"""Events (issue 20, items 2 and 3): ``queue.emit`` stores an event, starts a job
per subscribed handler and wakes the ``job.wait_for_event`` waits it matches,
in one transaction (the caller's with ``session=``); an id dedupes."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import Event, InvalidOptionError, InvalidPayloadError, Job, JobStatus, Queue
from flask_queue.events import contains, data_probes, wait_probe
from flask_queue.signals import event_emitted
from flask_queue.store import WaitRow
from tests.conftest import AppFactory, Clock, all_databases, server_databases

calls: list[Any] = []


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


def rows_of(app: Flask, table: str) -> list[Any]:
    store = app.extensions["queue"].store
    t = getattr(store.core, table)
    with store.engine.connect() as c:
        return list(c.execute(sa.select(t)))


def booking_queue(clock: Clock) -> Queue:
    """The README's booking flow: charge, wait up to a day for the booking's
    confirmation, then remind."""
    queue = Queue(clock=clock)

    @queue.handler("booking")
    def booking(job: Job[Any]) -> Any:
        paid = job.step("charge", lambda: calls.append("charge") or job.payload["amount"])
        confirmed = job.wait_for_event(
            "confirmed", "booking.confirmed", match={"booking_id": job.payload["id"]}, timeout="1d"
        )
        if confirmed is None:
            return {"paid": paid, "confirmed": None}
        calls.append("remind")
        return {"paid": paid, "confirmed": confirmed.data, "event": confirmed.id}

    return queue


# -- matching ------------------------------------------------------------------------------


def test_a_match_is_a_dict_subset_compared_as_json() -> None:
    data = {"booking_id": 7, "who": {"name": "Ann", "tier": "gold"}, "paid": True}
    assert contains(data, {})
    assert contains(data, {"booking_id": 7})
    assert contains(data, {"who": {"tier": "gold"}, "paid": True})
    assert not contains(data, {"booking_id": 8})
    assert not contains(data, {"paid": 1})  # True is not 1 in JSON
    assert not contains(data, {"booking_id": 7.0})
    assert not contains(data, {"who": {"tier": "silver"}})
    assert not contains(data, {"missing": None})
    assert not contains([1, 2], {"booking_id": 7})


def test_a_waits_probe_is_one_of_its_datas_probes() -> None:
    match = {"who": {"tier": "gold"}, "booking_id": 7}
    probe = wait_probe(match)
    assert probe is not None
    assert probe in (data_probes({"booking_id": 7, "x": 1}) or [])
    assert probe not in (data_probes({"booking_id": 8}) or [])
    assert wait_probe(None) is None and wait_probe({"who": {"a": 1}}) is None
    assert data_probes([1]) == []


# -- emit and fan-out ------------------------------------------------------------------------


@all_databases
def test_emit_starts_one_job_per_subscribed_handler(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)

    @queue.handler("mail", events=["booking.created"])
    def mail(job: Job[Any]) -> str:
        calls.append(("mail", job.payload))
        return "mailed"

    @queue.handler("crm", events=["booking.created", "booking.cancelled"])
    def crm(job: Job[Any]) -> str:
        calls.append(("crm", job.payload))
        return "synced"

    @queue.handler("other")
    def other(job: Job[Any]) -> None:
        calls.append(("other", job.payload))

    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        event = queue.emit("booking.created", {"id": 3})
        assert isinstance(event, Event) and event.name == "booking.created"
        assert event.data == {"id": 3} and event.created_at == clock()
        assert sorted(calls) == [("crm", {"id": 3}), ("mail", {"id": 3})]
        jobs = [queue.get(i) for i in event.started]
        assert sorted(j.queue for j in jobs) == ["crm", "mail"]  # type: ignore[union-attr]
        assert all(j.status is JobStatus.COMPLETED for j in jobs)  # type: ignore[union-attr]
        assert [e.id for e in queue.events()] == [event.id]
        nobody = queue.emit("nobody.listens", [1, 2])
        assert nobody.started == () and len(calls) == 2
        assert [e.name for e in queue.events(name="nobody.listens")] == ["nobody.listens"]


@all_databases
def test_an_id_dedupes_an_emit(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)

    @queue.handler("mail", events=["paid"])
    def mail(job: Job[Any]) -> None:
        calls.append(job.payload)

    app = make_app(queue)
    with app.app_context():
        first = queue.emit("paid", {"n": 1}, id="evt_1")
        clock.advance(5)
        again = queue.emit("paid", {"n": 2}, id="evt_1")
        assert again.id == "evt_1" and again.data == {"n": 1}
        assert again.created_at == first.created_at and again.started == first.started
        assert calls == [{"n": 1}]
        # Exact ids: a case or a trailing space makes another event (MariaDB too).
        queue.emit("paid", {"n": 3}, id="EVT_1 ")
        assert calls == [{"n": 1}, {"n": 3}]
        assert len(rows_of(app, "events")) == 2


@all_databases
def test_emit_with_a_session_commits_or_rolls_back_with_the_caller(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)

    @queue.handler("mail", events=["signed_up"])
    def mail(job: Job[Any]) -> None:
        calls.append(job.payload)

    app = make_app(queue)
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        queue.emit("signed_up", {"u": 1}, id="s1", session=db.session)
        assert calls == []  # dispatched after the commit only
        db.session.rollback()
        assert rows_of(app, "events") == [] and queue.get_by_custom_id("s1") is None
        assert len(list(queue.jobs())) == 0
        queue.emit("signed_up", {"u": 2}, id="s1", session=db.session)
        db.session.commit()
        assert calls == [{"u": 2}]
        assert len(rows_of(app, "events")) == 1


@all_databases
def test_bad_emits_say_what_is_wrong_and_write_nothing(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)

    @queue.handler("mail", events=["ok"])
    def mail(job: Job[Any]) -> None:
        calls.append(job.payload)

    app = make_app(queue)
    with app.app_context():
        with pytest.raises(InvalidOptionError, match="Invalid event name ''"):
            queue.emit("", {})
        with pytest.raises(InvalidOptionError, match="Invalid event name 7"):
            queue.emit(7, {})  # type: ignore[arg-type]
        with pytest.raises(InvalidPayloadError, match="not JSON-serialisable"):
            queue.emit("ok", {"when": object()})
        with pytest.raises(InvalidOptionError, match="Invalid id ''"):
            queue.emit("ok", {}, id="")
        assert rows_of(app, "events") == [] and list(queue.jobs()) == [] and calls == []
    with pytest.raises(InvalidOptionError, match="Invalid events 'ok' for queue 'x'"):
        queue.handler("x", events="ok")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="Invalid event name ''"):
        queue.handler("y", events=[""])


@all_databases
def test_event_emitted_is_sent_with_the_event(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)
    app = make_app(queue)
    seen: list[Event] = []

    def receiver(sender: Flask, event: Event, **extra: Any) -> None:
        seen.append(event)

    with event_emitted.connected_to(receiver, app), app.app_context():
        queue.emit("x.happened", {"a": 1}, id="e1")
        queue.emit("x.happened", {"a": 1}, id="e1")  # a duplicate sends nothing
    assert [(e.id, e.data) for e in seen] == [("e1", {"a": 1})]


# -- waits ----------------------------------------------------------------------------------


@all_databases
def test_an_emit_wakes_the_matching_wait(make_app: AppFactory, clock: Clock) -> None:
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        job = queue.enqueue("booking", {"id": 7, "amount": 30})
        waiting = queue.get(job.id)
        assert waiting.status is JobStatus.SCHEDULED  # type: ignore[union-attr]
        assert waiting.run_at == clock() + timedelta(days=1)  # type: ignore[union-attr]
        assert waiting.history[-1]["outcome"] == "waiting"  # type: ignore[union-attr]
        assert len(rows_of(app, "waits")) == 1
        clock.advance(60)
        other = queue.emit("booking.confirmed", {"booking_id": 8})
        assert other.woke == () and queue.get(job.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]
        event = queue.emit("booking.confirmed", {"booking_id": 7, "by": "ann"}, id="c7")
        assert event.woke == (job.id,)
        done = queue.get(job.id)
        assert done.status is JobStatus.COMPLETED, done.reason  # type: ignore[union-attr]
        assert done.result == {  # type: ignore[union-attr]
            "paid": 30,
            "confirmed": {"booking_id": 7, "by": "ann"},
            "event": "c7",
        }
        assert calls == ["charge", "remind"]
        assert rows_of(app, "waits") == []
        (stored,) = queue.events(name="booking.confirmed", limit=1)
        assert stored.woke == (job.id,)
        # Met once: the same event again wakes nothing.
        assert queue.emit("booking.confirmed", {"booking_id": 7}).woke == ()


@all_databases
def test_a_wait_times_out_with_none(make_app: AppFactory, clock: Clock) -> None:
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        job = queue.enqueue("booking", {"id": 7, "amount": 30})
        clock.advance(hours=23)
        queue.produce()
        assert queue.get(job.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]
        clock.advance(hours=1)
        queue.produce()
        done = queue.get(job.id)
        assert done.result == {"paid": 30, "confirmed": None}  # type: ignore[union-attr]
        assert calls == ["charge"]
        # A late event meets no wait.
        assert queue.emit("booking.confirmed", {"booking_id": 7}).woke == ()


@all_databases
def test_a_run_again_before_the_event_waits_again_until_the_same_deadline(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = booking_queue(clock)
    app = make_app(queue)
    with app.app_context():
        job = queue.enqueue("booking", {"id": 7, "amount": 30})
        deadline = queue.get(job.id).run_at  # type: ignore[union-attr]
        clock.advance(hours=2)
        queue.run_now(job.id)
        queue.produce()
        again = queue.get(job.id)
        assert again.status is JobStatus.SCHEDULED and again.run_at == deadline  # type: ignore[union-attr]
        assert calls == ["charge"] and len(rows_of(app, "waits")) == 1


@all_databases
def test_an_emit_while_the_waiting_run_ends_still_wakes_it(
    make_app: AppFactory, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event comes after the run registered its wait but before the run's
    outcome (SCHEDULED at the deadline) is written: the outcome must not put
    the job to sleep for a day with its event already recorded."""
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    steps = app.extensions["queue"].store.step_records
    register = steps.wait

    def wait_then_emit(wait: WaitRow, probe: str | None) -> Any:
        deadline = register(wait, probe)
        queue.emit("booking.confirmed", {"booking_id": 7})  # the job is RUNNING now
        return deadline

    monkeypatch.setattr(steps, "wait", wait_then_emit)
    with app.app_context():
        job = queue.enqueue("booking", {"id": 7, "amount": 30})
        monkeypatch.setattr(steps, "wait", register)
        woken = queue.get(job.id)
        assert woken.status is JobStatus.SCHEDULED  # type: ignore[union-attr]
        assert woken.run_at == clock()  # type: ignore[union-attr]  # due now, not in a day
        queue.produce()
        done = queue.get(job.id)
        assert done.result["confirmed"] == {"booking_id": 7}  # type: ignore[union-attr,index]


@all_databases
def test_an_emit_reads_only_the_waits_its_data_may_match(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = booking_queue(clock)
    app = make_app(queue)
    store = app.extensions["queue"].store
    with app.app_context():
        queue.enqueue_many("booking", [{"id": i, "amount": 1} for i in range(30)])
        assert len(rows_of(app, "waits")) == 30
        with store.engine.connect() as c:
            read = store.step_records.waiting(
                "booking.confirmed", data_probes({"booking_id": 12, "by": "x"}), c
            )
        assert [json.loads(w.match or "{}") for w in read] == [{"booking_id": 12}]


@all_databases
def test_a_timed_out_wait_that_an_emit_met_first_keeps_the_event(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = booking_queue(clock)
    app = make_app(queue)
    steps = app.extensions["queue"].store.step_records
    with app.app_context():
        job = queue.enqueue("booking", {"id": 7, "amount": 30})
        (wait,) = [steps.current_wait(job.id, 0)]
        assert wait is not None and wait.event == "booking.confirmed"
        queue.emit("booking.confirmed", {"booking_id": 7})
        assert steps.time_out(wait, 2) is False  # the emit resolved it first
        record = steps.read(job.id, 0)["confirmed"]
        assert json.loads(record.result or "null")["data"] == {"booking_id": 7}


@server_databases
def test_concurrent_emits_wake_a_wait_once(make_app: AppFactory, clock: Clock) -> None:
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        jobs = queue.enqueue_many("booking", [{"id": i % 4, "amount": i} for i in range(16)])
    woke: list[str] = []
    errors: list[BaseException] = []
    go = threading.Barrier(8)

    def emitter(n: int) -> None:
        try:
            with app.app_context():
                go.wait()
                event = queue.emit("booking.confirmed", {"booking_id": n % 4, "n": n})
                woke.extend(event.woke)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=emitter, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(woke) == sorted(j.id for j in jobs)  # every wait met exactly once
    with app.app_context():
        done = [queue.get(j.id) for j in jobs]
        assert [d.status for d in done] == [JobStatus.COMPLETED] * 16, [
            (d.run_at, d.history, d.attempt) for d in done if d.status is not JobStatus.COMPLETED
        ]  # type: ignore[union-attr]
        assert calls.count("remind") == 16


@all_databases
def test_events_and_waits_are_pruned(make_app: AppFactory, clock: Clock) -> None:
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_EVENTS="1h")
    with app.app_context():
        job = queue.enqueue("booking", {"id": 1, "amount": 1})
        queue.emit("unrelated", {}, id="old")
        clock.advance(hours=2)
        queue.emit("unrelated", {}, id="new")
        queue.delete(job.id)
        queue.produce()
        assert [e.id for e in queue.events()] == ["new"]
        assert rows_of(app, "waits") == []
        # Past its keep, an id is a new event again.
        assert queue.emit("unrelated", {"again": True}, id="old").data == {"again": True}


def test_flask_queue_emit(make_app: AppFactory, clock: Clock) -> None:
    queue = booking_queue(clock)
    app = make_app(queue)
    with app.app_context():
        job = queue.enqueue("booking", {"id": 5, "amount": 1})
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["queue", "emit", "booking.confirmed", '{"booking_id": 5}', "--id", "w5"]
    )
    assert result.exit_code == 0, result.output
    assert (
        result.output
        == f"event w5 (booking.confirmed): started 0 job(s), woke 1\n  woke {job.id}\n"
    )
    again = runner.invoke(args=["queue", "emit", "booking.confirmed", "{}", "--id", "w5"])
    assert again.exit_code == 0
    assert again.output == "event w5 was emitted already at 2026-03-01 12:00:00 UTC: nothing done\n"
    bad = runner.invoke(args=["queue", "emit", "booking.confirmed", "{nope"])
    assert bad.exit_code == 2 and "JSON" in bad.output


# -- found by the review of the events (each failed before its fix) ----------------------------


@all_databases
def test_an_event_name_matches_exactly(make_app: AppFactory, clock: Clock) -> None:
    """Before: on MariaDB the names' collation folded case and trailing spaces,
    so "BOOKING.CONFIRMED" woke a wait for "booking.confirmed"."""
    queue = booking_queue(clock)
    app = make_app(queue)
    with app.app_context():
        queue.enqueue("booking", {"id": 7, "amount": 30})
        assert queue.emit("BOOKING.CONFIRMED", {"booking_id": 7}).woke == ()
        assert queue.emit("booking.confirmed ", {"booking_id": 7}).woke == ()
        assert [e.name for e in queue.events(name="booking.confirmed")] == []
        assert [e.name for e in queue.events(name="BOOKING.CONFIRMED")] == ["BOOKING.CONFIRMED"]


@all_databases
def test_an_emit_between_a_replays_read_and_its_wait_leaves_no_wait_behind(
    make_app: AppFactory, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the replay had read its records before the emit resolved the
    wait, so it registered the wait again; the job completed, but the wait row
    stayed, and every later matching emit failed on the record's primary key."""
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    steps = app.extensions["queue"].store.step_records
    register = steps.wait

    def emit_then_wait(wait: WaitRow, probe: str | None) -> Any:
        queue.emit("booking.confirmed", {"booking_id": 7, "n": 1})
        return register(wait, probe)

    with app.app_context():
        job = queue.enqueue("booking", {"id": 7, "amount": 30})
        clock.advance(hours=1)
        monkeypatch.setattr(steps, "wait", emit_then_wait)
        queue.run_now(job.id)
        queue.produce()
        monkeypatch.setattr(steps, "wait", register)
        done = queue.get(job.id)
        assert done.status is JobStatus.COMPLETED  # type: ignore[union-attr]
        assert done.result["confirmed"] == {"booking_id": 7, "n": 1}  # type: ignore[union-attr,index]
        assert rows_of(app, "waits") == []
        later = queue.emit("booking.confirmed", {"booking_id": 7, "n": 2}, id="later")
        assert later.woke == () and [e.id for e in queue.events(limit=1)] == ["later"]


@all_databases
def test_a_cancelled_or_deleted_waiting_job_is_not_woken(
    make_app: AppFactory, clock: Clock
) -> None:
    """Before: an emit 'woke' a cancelled or deleted job and wrote it a record."""
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        cancelled = queue.enqueue("booking", {"id": 7, "amount": 30})
        queue.cancel(cancelled.id)
        deleted = queue.enqueue("booking", {"id": 8, "amount": 30})
        queue.delete(deleted.id)
        assert queue.emit("booking.confirmed", {"booking_id": 7}).woke == ()
        assert queue.emit("booking.confirmed", {"booking_id": 8}).woke == ()
        assert [r.kind for r in rows_of(app, "steps")] == ["step", "step"]  # the two charges
        assert rows_of(app, "waits") == []


def _a_snapshot(app: Flask, table: str) -> None:
    """The caller's transaction reads first: on REPEATABLE READ (MariaDB's
    default) its snapshot is fixed from here on."""
    db = app.extensions["sqlalchemy"]
    name = getattr(app.extensions["queue"].store.core, table).name
    db.session.execute(sa.text(f"SELECT 1 FROM {name} LIMIT 1")).all()


@server_databases
def test_a_session_emit_of_an_id_stored_meanwhile_is_a_duplicate(
    make_app: AppFactory, clock: Clock
) -> None:
    """Before: on MariaDB the duplicate's read went through the caller's old
    snapshot, found nothing, and the event was processed a second time."""
    queue = Queue(clock=clock)

    @queue.handler("mail", events=["paid"])
    def mail(job: Job[Any]) -> None:
        calls.append(job.payload)

    app = make_app(queue)
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        _a_snapshot(app, "events")
        other = threading.Thread(target=lambda: _in_app(app, queue.emit, "paid", {"n": 1}, id="e1"))
        other.start()
        other.join()
        again = queue.emit("paid", {"n": 2}, id="e1", session=db.session)
        db.session.commit()
        assert again.data == {"n": 1} and calls == [{"n": 1}]


@server_databases
def test_a_session_emit_sees_a_wait_registered_after_its_snapshot(
    make_app: AppFactory, clock: Clock
) -> None:
    """Before: on MariaDB the emit read the waits through the caller's old
    snapshot and missed one registered since: the job slept until its timeout."""
    queue = booking_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        _a_snapshot(app, "waits")
        made: list[Job[Any]] = []
        other = threading.Thread(
            target=lambda: made.append(
                _in_app(app, queue.enqueue, "booking", {"id": 7, "amount": 1})
            )
        )
        other.start()
        other.join()
        event = queue.emit("booking.confirmed", {"booking_id": 7}, session=db.session)
        db.session.commit()
        assert event.woke == (made[0].id,)
        assert queue.get(made[0].id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def _in_app(app: Flask, fn: Any, *args: Any, **kwargs: Any) -> Any:
    with app.app_context():
        return fn(*args, **kwargs)
