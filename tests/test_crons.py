"""Declared crons (``@queue.cron``): one row each, kept in step with the code."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone
from typing import Any

from flask_queue import Job, JobStatus, Queue, ScheduleType
from flask_queue.store import CRON_ID_PREFIX
from tests.conftest import Clock, Recorder, all_databases

UTC = timezone.utc


def _declare(queue: Queue, recorder: Recorder) -> None:
    @queue.cron("0 9 * * *", name="digest", tz="Europe/Paris")
    def digest(job: Job[None]) -> None:
        recorder.calls.append(("digest", job.payload))


def _cron_rows(queue: Queue) -> list[Job[Any]]:
    return [j for j in queue.jobs(limit=1000) if (j.custom_id or "").startswith(CRON_ID_PREFIX)]


@all_databases
def test_declared_cron_is_one_row_and_runs(
    make_app: Any, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    _declare(queue, recorder)
    app = make_app(queue)
    with app.app_context():
        assert queue.sync_crons() == {"created": 1, "updated": 0, "removed": 0, "failed": 0}
        assert queue.sync_crons() == {"created": 0, "updated": 0, "removed": 0, "failed": 0}
        (row,) = _cron_rows(queue)
        assert (row.schedule_type, row.schedule, row.tz) == (
            ScheduleType.CRON,
            "0 9 * * *",
            "Europe/Paris",
        )
        # 2026-03-01 12:00 UTC is 13:00 in Paris: next 09:00 Paris is 08:00 UTC on 03-02.
        assert row.run_at == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
        clock.now = row.run_at
        queue.produce()
        assert recorder.payloads("digest") == [None]
        (after,) = _cron_rows(queue)
        assert after.id == row.id and after.count == 1
        assert after.run_at == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)


@all_databases
def test_changed_expression_updates_and_removed_declaration_deletes(
    make_app: Any, queue: Queue, recorder: Recorder
) -> None:
    _declare(queue, recorder)
    app = make_app(queue)
    with app.app_context():
        queue.sync_crons()
        (row,) = _cron_rows(queue)
        queue.crons["digest"].expr = "30 18 * * *"  # as if the code was redeployed
        assert queue.sync_crons()["updated"] == 1
        (changed,) = _cron_rows(queue)
        assert changed.id == row.id
        assert changed.schedule == "30 18 * * *"
        assert changed.run_at == datetime(2026, 3, 1, 17, 30, tzinfo=UTC)
        # A plain cron job enqueued by the app is not a declaration: sync keeps it.
        user_cron = queue.enqueue("echo", None, cron="0 * * * *")
        del queue.crons["digest"]
        result = app.test_cli_runner().invoke(args=["queue", "sync-crons"])
        assert "removed 1" in result.output
        assert _cron_rows(queue) == []
        assert queue.get(user_cron.id) is not None


@all_databases
def test_concurrent_syncs_never_create_two_rows(
    make_app: Any, queue: Queue, recorder: Recorder
) -> None:
    _declare(queue, recorder)
    app = make_app(queue)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def sync() -> None:
        with app.app_context():
            try:
                barrier.wait()
                queue.sync_crons()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    for _ in range(3):
        threads = [threading.Thread(target=sync) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        barrier.reset()
    assert errors == []
    with app.app_context():
        assert len(_cron_rows(queue)) == 1


def test_invalid_cron_declaration_is_refused(queue: Queue) -> None:
    import pytest

    from flask_queue import InvalidScheduleError

    with pytest.raises(InvalidScheduleError, match="'0 25 \\* \\* \\*'"):
        queue.cron("0 25 * * *")
    with pytest.raises(InvalidScheduleError, match="'Nowhere/Town'"):
        queue.cron("0 1 * * *", tz="Nowhere/Town")


@all_databases
def test_two_releases_share_the_table_during_a_rolling_deploy(make_app: Any, clock: Clock) -> None:
    """Old release declares crons {a} and handles "x"; new declares {a, b} and
    handles "x" and "y". During the overlap neither deletes the other's crons nor
    fails the other's jobs; `flask queue sync-crons` of the new release prunes."""
    ran: list[tuple[str, str]] = []

    def release(name: str, crons: list[str], handlers: list[str]) -> Queue:
        q = Queue(clock=clock)
        for queue_name in handlers:
            q.handler(queue_name)(lambda job, n=name: ran.append((n, job.queue)))
        for cron_name in crons:
            q.cron("* * * * *", name=cron_name)(lambda job, n=name: ran.append((n, job.queue)))
        return q

    old = release("old", ["a"], ["x"])
    new = release("new", ["a", "b"], ["x", "y"])
    table = f"qj_deploy_{uuid.uuid4().hex[:8]}"
    old_app = make_app(old, QUEUE_TABLE_NAME=table)
    new_app = make_app(new, QUEUE_TABLE_NAME=table)

    def crons(app: Any, q: Queue) -> set[str]:
        with app.app_context():
            return {
                (j.custom_id or "")[len(CRON_ID_PREFIX) :]
                for j in q.jobs(status="SCHEDULED")
                if (j.custom_id or "").startswith(CRON_ID_PREFIX)
            }

    with new_app.app_context():
        new.produce()
        job_y = new.enqueue("y", "only the new release has y", delay="1s")
    assert crons(new_app, new) == {"a", "b"}
    clock.advance(1)
    with old_app.app_context():
        old.produce()  # claims y, lacks its handler, leaves it for the new release
        waiting = old.get(job_y.id)
        assert waiting is not None and waiting.status is JobStatus.SCHEDULED
    assert crons(old_app, old) == {"a", "b"}  # the old release removed nothing
    clock.advance(60)
    with new_app.app_context():
        new.produce()
        assert new.get(job_y.id) is None
    assert ("new", "y") in ran
    # The deploy finishes; the new release drops cron a and prunes at deploy.
    del new.crons["a"]
    result = new_app.test_cli_runner().invoke(args=["queue", "sync-crons"])
    assert "removed 1" in result.output, result.output
    assert crons(new_app, new) == {"b"}
