"""Job control over real HTTP: the example app under waitress with the ``http``
executor, so each run is an invoke request of its own, and a second app in this
process (another "host") that only reads and cancels."""

from __future__ import annotations

import time
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
def test_steps_and_a_sleep_through_the_invoke_endpoint(db_url: str, tmp_path: Path) -> None:
    # Each run is an invoke request that ends at the sleep; the run after it
    # (a ping once it is due) replays the handler past the charge.
    from example_app import queue

    with isolated_database(db_url, tmp_path) as url:
        server = Server(url, QUEUE_KEEP_COMPLETED="1h").start()
        try:
            reader = _reader(url)
            flow = server.enqueue("bookingFlow", {"booking": 7, "remind_in": "1s"})
            with reader.app_context():
                slept = _until(lambda: (j := queue.get(flow["id"])) and j.history and j)
                assert slept.status is JobStatus.SCHEDULED
                assert slept.history[-1]["outcome"] == "slept"
            time.sleep(1.1)
            server.ping()
            with reader.app_context():
                done = queue.wait(flow["id"], timeout="20s")
                assert done.status is JobStatus.COMPLETED and done.result == "charge-7"
                assert [h["outcome"] for h in done.history or []] == ["slept", "succeeded"]
            events = [r["event"] for r in server.runs() if r["queue"] == "bookingFlow"]
            assert events == ["charged", "reminded"]
        finally:
            server.stop()
