"""``flask_queue.testing`` (issue 21, item 4): the ``queue_tester`` fixture, from
the pytest plugin the package registers, on the example app as its users
would write their tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import JobStatus
from flask_queue.testing import QueueTester


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    from example_app import create_app

    monkeypatch.setenv("EXAMPLE_FAILURE_RATE", "0")  # the card charge never fails
    app = create_app(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'test.db'}",
        QUEUE_KEEP_COMPLETED="1d",
        TESTING=True,
    )
    yield app
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def events(app: Flask, queue: str) -> list[str]:
    from example_app import JobRun, db

    with app.app_context():
        return list(db.session.scalars(sa.select(JobRun.event).where(JobRun.queue == queue)))


def test_a_booking_as_a_user_would_test_it(app: Flask, queue_tester: QueueTester) -> None:
    client = app.test_client()
    client.post("/bookings", data={"guest": "Ada"})
    # Enqueued and waiting: nothing ran on its own.
    assert [j.payload for j in queue_tester.enqueued("bookingReminder")] == [1]
    # (and the example's declared cron, "digest", every minute)
    assert {j.queue for j in queue_tester.enqueued()} >= {
        "bookingReminder",
        "chargeCard",
        "bookingFlow",
    }
    assert events(app, "chargeCard") == []
    assert queue_tester.drain() >= 2  # the charge, the flow up to its wait (a digest?)
    assert events(app, "chargeCard") == ["done"]
    assert events(app, "bookingFlow") == ["charged"]
    assert queue_tester.advance("10s") >= 1  # the reminder fell due
    assert events(app, "bookingReminder") == ["done"]
    client.post("/bookings/1/confirm")
    queue_tester.drain()  # the woken flow sleeps until a day before the stay
    assert events(app, "confirmationMail") == ["mailed"]
    (flow,) = queue_tester.enqueued("bookingFlow")
    assert flow.status is JobStatus.SCHEDULED
    queue_tester.advance("1d")
    assert events(app, "bookingFlow") == ["charged", "reminded"]
    assert queue_tester.enqueued("bookingFlow") == []


def test_a_handler_error_fails_the_test(
    app: Flask, queue_tester: QueueTester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXAMPLE_FAILURE_RATE", "1")
    from example_app import charge_card

    with app.app_context():
        job = charge_card.enqueue(7)
    with pytest.raises(ConnectionError, match="payment gateway timed out for booking 7"):
        queue_tester.drain()
    # The job itself is recorded as in production: retrying.
    with app.app_context():
        again: Any = app.extensions["queue"].queue.get(job.id)
    assert again.status is JobStatus.SCHEDULED and again.errors == 1
    # The retry, failing quietly. Counted by the job's errors, not by the runs
    # ``advance`` returns: the tester's clock starts at the wall clock's time,
    # and two seconds that cross a minute also run the example's every-minute
    # digest cron (seen: 2 runs where 1 was asserted).
    assert queue_tester.advance("2s", raise_errors=False) >= 1
    with app.app_context():
        retried: Any = app.extensions["queue"].queue.get(job.id)
    assert retried.status is JobStatus.SCHEDULED and retried.errors == 2


def test_the_tester_gives_the_app_back(app: Flask) -> None:
    state = app.extensions["queue"]
    before = (state.queue.clock, state.executor)
    with QueueTester(app) as tester:
        assert state.executor is not before[1]
        assert state.queue.clock() == tester.now
    assert (state.queue.clock, state.executor) == before
