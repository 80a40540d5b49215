"""Enqueue inside the app's own db.session transaction."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import Job, JobStatus, Queue
from tests.conftest import Clock, all_databases


@pytest.fixture
def booking_app(db_url: str, clock: Clock) -> Any:
    import uuid

    suffix = uuid.uuid4().hex[:10]
    db = SQLAlchemy()
    queue = Queue(clock=clock)
    ran: list[Any] = []

    class Booking(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = f"booking_{suffix}"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(50), nullable=False)

    @queue.handler("confirm")
    def confirm(job: Job[int]) -> None:
        # The handler sees the committed booking: it runs after the commit, in
        # a session of its own.
        ran.append((job.payload, db.session.get(Booking, job.payload) is not None))

    app = Flask("bookings")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=db_url,
        SECRET_KEY="k",
        QUEUE_EXECUTOR="inline",
        QUEUE_TABLE_NAME=f"qj_{suffix}",
    )
    db.init_app(app)
    queue.init_app(app)
    with app.app_context():
        db.create_all()
        yield app, db, queue, Booking, ran
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


def _count(app: Flask, table: sa.Table) -> int:
    with app.extensions["queue"].store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


@all_databases
def test_commit_keeps_job_and_row_and_dispatches_after(booking_app: Any) -> None:
    app, db, queue, Booking, ran = booking_app
    booking = Booking(name="Ada")
    db.session.add(booking)
    db.session.flush()
    queue.enqueue("confirm", booking.id, session=db.session)
    delayed = queue.enqueue("confirm", booking.id, delay="1h", session=db.session)
    # Not committed: nothing ran, and other connections cannot see the rows.
    assert ran == []
    assert _count(app, Booking.__table__) == 0
    db.session.commit()
    assert ran == [(booking.id, True)]
    assert _count(app, Booking.__table__) == 1
    stored = queue.get(delayed.id)
    assert stored is not None and stored.status is JobStatus.SCHEDULED


@all_databases
def test_rollback_keeps_neither_and_dispatches_nothing(booking_app: Any) -> None:
    app, db, queue, Booking, ran = booking_app
    booking = Booking(name="Grace")
    db.session.add(booking)
    db.session.flush()
    queue.enqueue("confirm", booking.id, session=db.session)
    queue.enqueue_many("confirm", [1, 2], session=db.session)
    db.session.rollback()
    assert ran == []
    assert _count(app, Booking.__table__) == 0
    assert list(queue.jobs()) == []
    # The dropped dispatches do not fire on a later, unrelated commit.
    db.session.add(Booking(name="Later"))
    db.session.commit()
    assert ran == []


@all_databases
def test_custom_id_conflict_inside_transaction_keeps_callers_work(booking_app: Any) -> None:
    app, db, queue, Booking, _ran = booking_app
    first = queue.enqueue("confirm", 1, id="once", delay="1h")
    db.session.add(Booking(name="Kept"))
    same = queue.enqueue("confirm", 2, id="once", delay="1h", session=db.session)
    assert same.id == first.id
    db.session.commit()
    assert _count(app, Booking.__table__) == 1
    assert len(list(queue.jobs())) == 1


@all_databases
def test_plain_enqueue_commits_on_its_own(booking_app: Any) -> None:
    _app, db, queue, Booking, _ran = booking_app
    db.session.add(Booking(name="Unrelated"))
    job = queue.enqueue("confirm", 7, delay="1m")
    db.session.rollback()
    assert queue.get(job.id) is not None
