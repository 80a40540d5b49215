"""``flask_queue.worker``: the ``work`` and ``produce --loop`` loops, called directly."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask

import flask_queue.worker
from flask_queue import JobStatus, Queue
from flask_queue.errors import InvalidOptionError
from flask_queue.extension import ProduceResult
from flask_queue.worker import produce_loop, work
from tests.conftest import Clock, Recorder


def test_max_jobs_claims_no_more_than_it_runs(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    jobs = queue.enqueue_many("echo", list(range(8)), delay="1s")
    clock.advance(1)
    stop = threading.Event()
    lines: list[str] = []
    ran = work(queue, concurrency=4, interval=0.01, max_jobs=1, stop=stop, report=lines.append)
    assert ran == 1
    assert len(recorder.payloads("echo")) == 1
    # The other seven were never claimed: not RUNNING under a lease nobody serves.
    # The job that ran is gone (completed jobs are not kept here).
    statuses = [j.status for j in map(queue.get, (j.id for j in jobs)) if j is not None]
    assert statuses.count(JobStatus.SCHEDULED) == 7
    assert JobStatus.RUNNING not in statuses
    assert lines[-1] == "worker stopped after 1 job(s)"


def test_max_jobs_adds_up_over_several_claims(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    queue.enqueue_many("echo", list(range(30)), delay="1s")
    clock.advance(1)
    # Capacity is 2 x concurrency = 2, so 5 jobs take several rounds.
    ran = work(queue, concurrency=1, interval=0.01, max_jobs=5, stop=threading.Event())
    assert ran == 5
    assert len(recorder.payloads("echo")) == 5
    assert len(list(queue.jobs(status="SCHEDULED", limit=100))) == 25


class _IdleRecorder(threading.Event):
    """A stop event that records every idle wait (and returns at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.idle: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.idle.append(timeout)
        return self.is_set()


def test_worker_never_idles_while_jobs_are_due(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    # The old loop slept a whole interval whenever its pool was full (8 jobs/s
    # with the CLI defaults): with a 30 s interval this drain took minutes.
    queue.enqueue_many("echo", list(range(12)), delay="1s")
    clock.advance(1)
    stop = _IdleRecorder()
    ran = work(queue, concurrency=1, interval=30, max_jobs=12, stop=stop, report=lambda _: None)
    assert ran == 12 and len(recorder.payloads("echo")) == 12
    assert stop.idle == []  # claimed again as soon as a thread was free


def test_worker_never_idles_while_its_own_runs_hold_a_limit(
    make_app: Any, queue: Queue, clock: Clock
) -> None:
    # A limited queue's next jobs wait on the worker's own runs: the claim that
    # finds the limit reached while they end (outcomes not written yet) found
    # nothing, and the worker slept a whole interval: 2 jobs/s for a
    # concurrency=2 queue with the CLI defaults.
    done: list[int] = []

    @queue.handler("gate", concurrency=2, key=lambda payload: f"tenant-{payload % 2}")
    def gate(job: Any) -> None:
        done.append(job.payload)

    app = make_app(queue)
    with app.app_context():
        queue.enqueue_many("gate", list(range(12)), delay="1s")
        clock.advance(1)
        stop = _IdleRecorder()
        ran = work(queue, concurrency=4, interval=30, max_jobs=12, stop=stop, report=lambda _: None)
    assert ran == 12 and sorted(done) == list(range(12))
    assert stop.idle == []


def test_reports_what_it_serves_on_start(app: Flask, queue: Queue) -> None:
    stop = threading.Event()
    stop.set()
    lines: list[str] = []
    work(queue, concurrency=3, interval=0.5, stop=stop, report=lines.append)
    assert lines == [
        "worker started: queues echo, boom, flaky; concurrency 3; idle poll 0.5s; database sqlite",
        "worker stopped after 0 job(s)",
    ]


def test_start_line_names_max_jobs(app: Flask, queue: Queue) -> None:
    stop = threading.Event()
    stop.set()
    lines: list[str] = []
    work(queue, concurrency=4, interval=1.0, max_jobs=7, stop=stop, report=lines.append)
    assert lines[0] == (
        "worker started: queues echo, boom, flaky; concurrency 4; idle poll 1.0s;"
        " database sqlite; stops after 7 job(s)"
    )


@pytest.mark.parametrize("interval", [0, -1, -0.5, float("inf"), float("nan")])
def test_loops_refuse_an_interval_that_would_spin(
    app: Flask, queue: Queue, interval: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()
    calls: list[Any] = []

    def produce(**kwargs: Any) -> ProduceResult:
        # Were the loop to start, it would stop after this one call, not spin.
        calls.append(kwargs)
        stop.set()
        return ProduceResult()

    # The loops call producer.produce(state): stub it where the worker looks it up.
    monkeypatch.setattr(flask_queue.worker, "produce", lambda state, **kw: produce(**kw))
    with pytest.raises(InvalidOptionError, match="interval"):
        work(queue, concurrency=1, interval=interval, stop=stop)
    with pytest.raises(InvalidOptionError, match="interval"):
        produce_loop(queue, interval, stop=stop)
    assert calls == []
