"""Attempt history (issue 11): each job keeps its last attempts on its row."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import JobStatus, Queue
from flask_queue.history import HISTORY_SIZE
from flask_queue.job import Job
from tests.conftest import AppFactory, Clock, Recorder, all_databases


def _settled(app: Flask, queue: Queue, job_id: str, attempt: int) -> Job[Any]:
    """The job once attempt ``attempt``'s outcome is written (thread executors
    write it after ``produce`` returns)."""
    deadline = time.monotonic() + 10
    while True:
        with app.app_context():
            job = queue.get(job_id)
        assert job is not None
        if job.status is not JobStatus.RUNNING and job.attempt >= attempt:
            return job
        assert time.monotonic() < deadline, f"attempt {attempt} of {job_id} never finished"
        time.sleep(0.01)


@all_databases
@pytest.mark.parametrize("executor", ["inline", "thread"])
def test_each_attempt_is_kept_with_its_time_duration_outcome_and_error(
    make_app: AppFactory, queue: Queue, clock: Clock, recorder: Recorder, executor: str
) -> None:
    # inline writes each outcome with finish(); thread batches them (finish_many).
    app = make_app(queue, QUEUE_EXECUTOR=executor, QUEUE_KEEP_COMPLETED="1h")
    recorder.fail_next = 2
    with app.app_context():
        job = queue.enqueue("flaky", {"n": 1}, delay="1s", retry=["5s", "5s"])
    starts = []
    for attempt in (1, 2, 3):
        clock.advance(5)
        starts.append(clock())
        with app.app_context():
            queue.produce()
        done = _settled(app, queue, job.id, attempt)
    assert done.status is JobStatus.COMPLETED and done.error is None
    history = done.history
    assert history is not None
    assert [h["n"] for h in history] == [1, 2, 3]
    assert [h["outcome"] for h in history] == ["failed", "failed", "succeeded"]
    assert [h["error"] for h in history] == ["ValueError: flaky failure"] * 2 + [None]
    assert [h["at"] for h in history] == [s.isoformat() for s in starts]
    assert all(isinstance(h["ms"], int) and 0 <= h["ms"] < 5000 for h in history)


@all_databases
def test_a_retrying_job_shows_its_last_error_line_and_keeps_the_traceback(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    job = queue.enqueue("boom", "x", delay="1s")
    clock.advance(1)
    queue.produce()
    stored = queue.get(job.id)
    assert stored is not None and stored.status is JobStatus.SCHEDULED
    assert stored.error == "RuntimeError: boom x"
    assert stored.reason is not None and stored.reason.startswith("Traceback")


@all_databases
def test_history_is_bounded_to_the_newest_attempts(app: Flask, queue: Queue, clock: Clock) -> None:
    runs = HISTORY_SIZE + 5
    job = queue.enqueue("boom", "x", delay="1s", retry=["1s"] * runs)
    for _ in range(runs):
        clock.advance(1)
        queue.produce()
    stored = queue.get(job.id)
    assert stored is not None and stored.history is not None
    assert [h["n"] for h in stored.history] == list(range(6, runs + 1))


@all_databases
def test_a_repeating_job_keeps_its_history_and_its_failed_run_takes_it_along(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    job = queue.enqueue("flaky", "tick", delay="1m", every="1m", retry=[])
    clock.advance(60)
    queue.produce()  # succeeds
    recorder.fail_next = 1
    clock.advance(60)
    queue.produce()  # fails with no retries: a FAILED copy, the schedule goes on
    schedule = queue.get(job.id)
    assert schedule is not None and schedule.status is JobStatus.SCHEDULED
    assert [h["outcome"] for h in schedule.history or []] == ["succeeded", "failed"]
    assert schedule.error is None  # the schedule itself is fine
    (copy,) = queue.jobs(status="FAILED")
    assert copy.error == "ValueError: flaky failure"
    assert [h["outcome"] for h in copy.history or []] == ["succeeded", "failed"]


@all_databases
def test_the_job_page_lists_attempts_newest_first_with_gaps_named(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    store = debug_app.extensions["queue"].store
    job = queue.enqueue("boom", "x", delay="1s", retry=["1s", "1s"])
    clock.advance(1)
    queue.produce()  # attempt 1 fails
    # Attempt 2: claimed, then released undelivered; attempt 3 fails.
    clock.advance(1)
    (claimed,) = store.claim(1, timedelta(minutes=1))
    assert store.release(claimed.id, claimed.attempt)
    queue.produce()
    page = debug_app.test_client().get(f"/_queue/job/{job.id}").get_data(as_text=True)
    section = page[page.index("<h2>Attempts</h2>") :]
    rows = section[: section.index("</tbody>")].split("<tr class=")[1:]
    assert [r.split('"')[1] for r in rows] == [
        "outcome-failed",
        "outcome-no-outcome",
        "outcome-failed",
    ]
    assert ">3<" in rows[0] and ">2<" in rows[1] and ">1<" in rows[2]
    assert "RuntimeError: boom x" in rows[0] and "Released undelivered" in rows[1]


@all_databases
def test_lists_do_not_read_the_history(debug_app: Flask, queue: Queue, clock: Clock) -> None:
    store = debug_app.extensions["queue"].store
    queue.enqueue("boom", "x", delay="1s")
    clock.advance(1)
    queue.produce()
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        assert debug_app.test_client().get("/_queue/jobs/scheduled").status_code == 200
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    listing = [s for s in seen if "ORDER BY" in s and store.table.name in s]
    assert listing and all(f"{store.table.name}.history" not in s for s in listing)
