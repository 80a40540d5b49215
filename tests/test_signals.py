"""Signals (issue 11): sent in the process where the event happens, a raising
receiver changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_queue import Queue
from flask_queue.signals import job_enqueued, job_failed, job_started, job_succeeded
from flask_queue.worker import work
from tests.conftest import AppFactory, Clock, all_databases


@pytest.fixture
def events(app: Flask) -> Any:
    seen: list[tuple[str, Any]] = []

    def on(name: str) -> Any:
        def receiver(sender: Any, **kwargs: Any) -> None:
            assert sender is app
            seen.append((name, kwargs))

        return receiver

    receivers = {
        job_enqueued: on("enqueued"),
        job_started: on("started"),
        job_succeeded: on("succeeded"),
        job_failed: on("failed"),
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver, sender=app)
    yield seen
    for signal, receiver in receivers.items():
        signal.disconnect(receiver, sender=app)


@all_databases
def test_a_run_sends_enqueued_started_succeeded(app: Flask, queue: Queue, events: Any) -> None:
    job = queue.enqueue("echo", "x")
    names = [name for name, _ in events]
    assert names == ["enqueued", "started", "succeeded"]
    assert all(kwargs["job"].id == job.id for _, kwargs in events)
    assert events[2][1]["duration"] >= 0


@all_databases
def test_failures_say_whether_the_job_will_retry(
    app: Flask, queue: Queue, clock: Clock, events: Any
) -> None:
    job = queue.enqueue("boom", 1, delay="1s")  # retry=["10s", "1m"]
    for step in (1, 10, 60):
        clock.advance(step)
        queue.produce()
    failed = [kwargs for name, kwargs in events if name == "failed"]
    assert [f["will_retry"] for f in failed] == [True, True, False]
    assert all(isinstance(f["error"], RuntimeError) and f["job"].id == job.id for f in failed)


@all_databases
def test_enqueue_many_sends_one_signal_per_job_and_the_worker_runs_send_too(
    make_app: AppFactory, queue: Queue
) -> None:
    app = make_app(queue, QUEUE_EXECUTOR="worker")
    seen: list[str] = []

    def enqueued(sender: Any, job: Any) -> None:
        seen.append(f"enqueued {job.payload}")

    def succeeded(sender: Any, job: Any, duration: float) -> None:
        seen.append(f"succeeded {job.payload}")

    job_enqueued.connect(enqueued, sender=app)
    job_succeeded.connect(succeeded, sender=app)
    try:
        with app.app_context():
            queue.enqueue_many("echo", [1, 2])
            work(queue, concurrency=2, interval=0.05, max_jobs=2, report=lambda _: None)
    finally:
        job_enqueued.disconnect(enqueued, sender=app)
        job_succeeded.disconnect(succeeded, sender=app)
    assert seen[:2] == ["enqueued 1", "enqueued 2"]
    assert sorted(seen[2:]) == ["succeeded 1", "succeeded 2"]


def test_a_raising_receiver_changes_nothing(
    app: Flask, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sender: Any, **kwargs: Any) -> None:
        raise ValueError("receiver bug")

    job_succeeded.connect(broken, sender=app)
    job_enqueued.connect(broken, sender=app)
    try:
        job = queue.enqueue("echo", "x")
    finally:
        job_succeeded.disconnect(broken, sender=app)
        job_enqueued.disconnect(broken, sender=app)
    assert queue.get(job.id) is None  # ran and completed
    assert "a receiver of job-succeeded raised" in caplog.text


# -- QUEUE_MAX_PAYLOAD (issue 11) --------------------------------------------------------


@all_databases
def test_a_payload_over_the_limit_is_refused_naming_its_size(
    make_app: AppFactory, queue: Queue
) -> None:
    from flask_queue.errors import InvalidPayloadError

    app = make_app(queue, QUEUE_MAX_PAYLOAD=1000)
    with app.app_context():
        queue.enqueue("echo", "é" * 100, delay="1h")  # 602 bytes of JSON (\\u00e9 each)
        big = "x" * 1000  # 1,002 bytes with its quotes
        with pytest.raises(InvalidPayloadError, match=r"Payload is 1,002 bytes of JSON.*\(1,000\)"):
            queue.enqueue("echo", big, delay="1h")
        with pytest.raises(InvalidPayloadError, match=r"1,002 bytes"):
            queue.enqueue_many("echo", ["small", big], delay="1h")  # none of it is stored
        assert [j.payload for j in queue.jobs()] == ["é" * 100]


def test_the_default_limit_is_one_mebibyte(app: Flask, queue: Queue) -> None:
    from flask_queue.errors import InvalidPayloadError

    with pytest.raises(InvalidPayloadError, match=r"1,048,576"):
        queue.enqueue("echo", "x" * (1024 * 1024), delay="1h")
    assert list(queue.jobs()) == []
