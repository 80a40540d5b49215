"""Job control over real HTTP: the example app under waitress with the ``http``
executor, so each run is an invoke request of its own, and a second app in this
process (another "host") that only reads and cancels."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flask_queue import JobStatus
from tests.conftest import all_databases
from tests.servers import Server, isolated_database


def _reader(url: str) -> Any:
    from example_app import create_app

    return create_app(SQLALCHEMY_DATABASE_URI=url, QUEUE_SCHEDULER=False, QUEUE_EXECUTOR="worker")


def _until(check: Any, seconds: float = 20) -> Any:
    give_up = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.05)


@all_databases
def test_result_progress_cancel_and_timeout_through_the_invoke_endpoint(
    db_url: str, tmp_path: Path
) -> None:
    from example_app import queue

    with isolated_database(db_url, tmp_path) as url:
        # A short lease: beats every 0.2 s carry progress and bring the cancel.
        server = Server(url, QUEUE_LEASE="0.6s").start()
        try:
            reader = _reader(url)
            quick = server.enqueue("export", {"rows": 2, "pause": 0.01})
            long = server.enqueue("export", {"rows": 400, "pause": 0.05})
            hung = server.enqueue("export", {"rows": 400, "pause": 0.05}, timeout="0.5s", retry=0)
            with reader.app_context():
                done = queue.wait(quick["id"], timeout="20s")
                assert done.status is JobStatus.COMPLETED and done.result == {"rows": 2}
                running = _until(lambda: (j := queue.get(long["id"])) and j.progress and j)
                assert running.status is JobStatus.RUNNING
                assert running.progress.message.startswith("row ")
                queue.cancel(long["id"])  # from another process than the run's
                cancelled = queue.wait(long["id"], timeout="20s")
                assert cancelled.status is JobStatus.CANCELLED and cancelled.errors == 0
                timed_out = queue.wait(hung["id"], timeout="20s")
                assert timed_out.status is JobStatus.FAILED
                assert "JobTimeoutError" in (timed_out.error or "")
            server.ping()  # nothing left to run: the cancelled job stays so
            with reader.app_context():
                assert queue.get(long["id"]).status is JobStatus.CANCELLED  # type: ignore[union-attr]
        finally:
            server.stop()


@all_databases
def test_a_booking_flow_through_the_invoke_endpoint(db_url: str, tmp_path: Path) -> None:
    # Each run is an invoke request that ends at the wait or the sleep: the
    # emit of the confirmation wakes the flow (and starts its mail), the run
    # after that sleeps until a day before the stay, and a ping once it is due
    # replays the handler past the charge and the confirmation.
    from example_app import queue

    with isolated_database(db_url, tmp_path) as url:
        server = Server(url, QUEUE_KEEP_COMPLETED="1h").start()
        try:
            reader = _reader(url)
            stay = datetime.now(timezone.utc) + timedelta(days=1, seconds=2)
            flow = server.enqueue("bookingFlow", {"booking": 7, "starts_at": stay.isoformat()})
            with reader.app_context():
                waiting = _until(lambda: (j := queue.get(flow["id"])) and j.history and j)
                assert waiting.status is JobStatus.SCHEDULED
                assert waiting.history[-1]["outcome"] == "waiting"
            emitted = server.emit("booking.confirmed", {"booking": 7}, "confirm-7")
            assert emitted["woke"] == [flow["id"]] and len(emitted["started"]) == 1
            with reader.app_context():
                _until(lambda: (j := queue.get(flow["id"])) and len(j.history or []) == 2)
                slept = queue.get(flow["id"])
                assert slept.history[-1]["outcome"] == "slept"  # type: ignore[union-attr]
                mail = queue.wait(emitted["started"][0], timeout="20s")
                assert mail.status is JobStatus.COMPLETED
            again = server.emit("booking.confirmed", {"booking": 7}, "confirm-7")
            assert again["id"] == "confirm-7"  # the same event: nothing more happens
            time.sleep(
                max(0.0, (stay - timedelta(days=1) - datetime.now(timezone.utc)).total_seconds())
                + 0.1
            )
            server.ping()
            with reader.app_context():
                done = queue.wait(flow["id"], timeout="20s")
                assert done.status is JobStatus.COMPLETED and done.result == "charge-7"
                assert [h["outcome"] for h in done.history or []] == [
                    "waiting",
                    "slept",
                    "succeeded",
                ]
            runs = [(r["queue"], r["event"]) for r in server.runs()]
            assert [e for q, e in runs if q == "bookingFlow"] == ["charged", "reminded"]
            assert [e for q, e in runs if q == "confirmationMail"] == ["mailed"]
        finally:
            server.stop()
