"""End to end over real HTTP: the example app under waitress, the ``http``
executor posting signed requests to its own invoke endpoint, and the producer
pinged the way a cron pinger does (GET with a bearer token)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flask_queue import JobStatus
from tests.conftest import all_databases
from tests.servers import Server, free_port, isolated_database

UTC = timezone.utc


def _reader(url: str) -> Any:
    """The example app in this process, on the same database, to look at rows."""
    from example_app import create_app

    return create_app(SQLALCHEMY_DATABASE_URI=url, QUEUE_SCHEDULER=False)


def _done(runs: list[dict[str, str]]) -> Counter[str]:
    return Counter(r["payload"] for r in runs if r["event"] == "done")


@all_databases
def test_every_kind_of_job_runs_the_right_number_of_times(db_url: str, tmp_path: Path) -> None:
    from example_app import queue

    with isolated_database(db_url, tmp_path) as url:
        server = Server(url).start()
        try:
            server.enqueue("record", "immediate")
            server.enqueue("record", "delayed", delay="1s")
            server.enqueue("record", "every", every="1s", times=3)
            # A minute of the hour half an hour away: no run of the cron can come
            # by itself while the test runs; the test makes it due with run_now.
            # Its first run is on its schedule, at or after the delay (not at it).
            minute = (datetime.now(UTC).minute + 30) % 60
            cron = server.enqueue("record", "cron", cron=f"{minute} * * * *", times=2, delay="1s")
            # Immediate jobs are dispatched at enqueue: no ping needed.
            runs = server.wait_for_runs(lambda r: _done(r)["'immediate'"] == 1)
            assert _done(runs)["'immediate'"] == 1
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                server.ping()
                done = _done(server.runs())
                if done["'every'"] >= 3 and done["'delayed'"]:
                    break
                time.sleep(0.3)
            reader = _reader(url)
            for runs_so_far in (0, 1):
                with reader.app_context():
                    row = queue.get(cron["id"])
                    assert row is not None
                    assert (row.count, row.status) == (runs_so_far, JobStatus.SCHEDULED)
                    assert _done(server.runs())["'cron'"] == runs_so_far
                    # The next fire is that minute, 25 to 35 minutes from now.
                    assert (row.run_at.minute, row.run_at.second, row.run_at.microsecond) == (
                        minute,
                        0,
                        0,
                    )
                    assert (
                        timedelta(minutes=25)
                        < row.run_at - datetime.now(UTC)
                        < timedelta(minutes=35)
                    )
                    queue.run_now(cron["id"])  # don't wait half an hour
                    digest = queue.get_by_custom_id("flask_queue.cron:digest")
                    assert digest is not None and digest.schedule == "* * * * *"
                server.ping()
                server.wait_for_runs(lambda r, n=runs_so_far: _done(r)["'cron'"] == n + 1)
            for _ in range(5):  # more pings must not run anything twice
                server.ping()
                time.sleep(0.2)
            done = _done(server.runs())
            assert done["'immediate'"] == 1
            assert done["'delayed'"] == 1
            assert done["'every'"] == 3
            assert done["'cron'"] == 2
            with reader.app_context():
                assert queue.get(cron["id"]).status is JobStatus.COMPLETED  # type: ignore[union-attr]
                assert list(queue.jobs(status="SCHEDULED", queue="record")) == []
        finally:
            server.stop()


@all_databases
def test_killed_server_mid_run_recovers_after_lease(db_url: str, tmp_path: Path) -> None:
    from example_app import queue

    with isolated_database(db_url, tmp_path) as url:
        port = free_port()
        first = Server(url, port=port, QUEUE_LEASE="5s").start()
        try:
            job = first.enqueue("slow", 60)
            runs = first.wait_for_runs(lambda r: any(x["event"] == "started#1" for x in r))
            assert [r["event"] for r in runs if r["queue"] == "slow"] == ["started#1"]
        finally:
            first.kill()  # SIGKILL while the handler sleeps
        reader = _reader(url)
        with reader.app_context():
            stuck = queue.get(job["id"])
            assert stuck is not None and stuck.status is JobStatus.RUNNING
            assert stuck.lease_until is not None
        second = Server(url, port=port, QUEUE_LEASE="5s").start()

        def slow_events() -> list[str]:
            # Only this job's events: the example's declared per-minute cron may
            # run too, when the minute turns during the test.
            return [r["event"] for r in second.runs() if r["queue"] == "slow"]

        try:
            if datetime.now(UTC) < stuck.lease_until - timedelta(seconds=0.5):
                second.ping()
                with reader.app_context():
                    held = queue.get(job["id"])
                    # The dead run's lease still holds: not claimed again yet.
                    assert held is not None and held.attempt == stuck.attempt
            time.sleep(max(0.0, (stuck.lease_until - datetime.now(UTC)).total_seconds()) + 0.2)
            assert second.ping()["claimed"] >= 1
            deadline = time.monotonic() + 15
            while "done" not in slow_events() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert slow_events() == ["started#1", "started#2", "done"]
            with reader.app_context():
                finished = queue.get(job["id"])
                assert finished is not None and finished.status is JobStatus.COMPLETED
                assert finished.attempt == 2
        finally:
            second.stop()
