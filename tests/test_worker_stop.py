"""`flask queue work` stopping: the first signal finishes what runs (up to --grace),
the second (or the grace's end) hands the unfinished runs back at once. A real
subprocess and real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_queue import JobStatus
from tests.conftest import all_databases
from tests.servers import REPO


@pytest.fixture
def table() -> str:
    return f"qstop_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def reader(db_url: str, table: str) -> Iterator[Any]:
    os.environ["STOP_DB_URL"], os.environ["STOP_TABLE"] = db_url, table
    from tests.stop_app import create_app, db

    app = create_app()
    with app.app_context():
        yield app
        db.drop_all()
        db.engine.dispose()


WORK = [sys.executable, "-m", "flask", "--app", "tests.stop_app:create_app", "queue", "work"]


def _worker(db_url: str, table: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "STOP_DB_URL": db_url, "STOP_TABLE": table, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [*WORK, "--interval", "0.05", *args],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _until(check: Any, seconds: float = 20) -> Any:
    give_up = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.05)
    return value


def _running(job_id: str) -> bool:
    from tests.stop_app import queue

    job = queue.get(job_id)
    return job is not None and job.status is JobStatus.RUNNING and job.started_at is not None


@all_databases
def test_the_first_signal_lets_the_run_finish(reader: Any, db_url: str, table: str) -> None:
    from tests.stop_app import queue

    proc = _worker(db_url, table, "--grace", "20s")
    job = queue.enqueue("slow", 1.0)
    _until(lambda: _running(job.id))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "stopping: 1 run(s) in progress, up to --grace 20s" in out
    assert queue.get(job.id).result == "attempt 1"  # type: ignore[union-attr]


@all_databases
@pytest.mark.parametrize("how", ["second signal", "grace ends"])
def test_a_forced_stop_hands_the_run_back_for_another_worker(
    reader: Any, db_url: str, table: str, how: str
) -> None:
    from tests.stop_app import queue

    proc = _worker(db_url, table, "--grace", "20s" if how == "second signal" else "0.5s")
    job = queue.enqueue("slow", 60.0)
    _until(lambda: _running(job.id))
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    if how == "second signal":
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert time.monotonic() - signalled < 10, out  # not the handler's 60 s
    assert proc.returncode == 0, out
    assert "stopped at once: 1 unfinished run(s) handed back" in out
    back = queue.get(job.id)
    assert back is not None and back.status is JobStatus.SCHEDULED
    assert back.errors == 0 and back.lease_until is None and back.started_at is None
    # Another worker takes it at once, not a lease (30 s) later.
    again = _worker(db_url, table, "--max-jobs", "1")
    out, _ = again.communicate(timeout=20)
    assert again.returncode == 0, out
    assert queue.get(job.id).result == "attempt 2"  # type: ignore[union-attr]


@all_databases
def test_a_handed_back_runs_late_outcome_is_refused(reader: Any) -> None:
    from datetime import timedelta

    from flask_queue.store import Finish

    state = reader.extensions["queue"]
    from tests.stop_app import queue

    job = queue.enqueue("slow", 0.0)
    (claimed,) = state.store.claim_started(1, timedelta(seconds=30))
    assert state.store.hand_back([(claimed.id, claimed.attempt)]) == 1
    late = Finish(status="COMPLETED", run_at=claimed.run_at, count=1)
    assert state.store.finish(claimed, late) is False
    assert queue.get(job.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]


def test_grace_must_be_a_duration(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STOP_DB_URL": f"sqlite:///{tmp_path / 'g.db'}",
        "STOP_TABLE": "qstop_g",
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [*WORK, "--grace", "soon"],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "'soon'" in done.stderr
