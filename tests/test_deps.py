"""Dependencies and batches (issue 20, item 4): ``enqueue(after=[...])`` keeps a
job BLOCKED until every parent completed (a failed or cancelled parent cancels
it, naming the parent); ``queue.batch`` enqueues its callbacks exactly once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import InvalidOptionError, Job, JobStatus, Queue, UnknownQueueError
from tests.conftest import AppFactory, Clock, all_databases, server_databases

calls: list[Any] = []


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


def flow_queue(clock: Clock) -> Queue:
    queue = Queue(clock=clock)

    @queue.handler("make", retry=0)
    def make(job: Job[Any]) -> Any:
        calls.append(("make", job.payload))
        if job.payload == "boom":
            raise RuntimeError("the part broke")
        return None if job.payload == "quiet" else {"made": job.payload}

    @queue.handler("ship")
    def ship(job: Job[Any]) -> Any:
        calls.append(("ship", job.parent_results))
        return "shipped"

    @queue.handler("report")
    def report(job: Job[Any]) -> None:
        calls.append(("report", job.payload))

    return queue


def all_rows(app: Flask, table: str) -> list[Any]:
    store = app.extensions["queue"].store
    t = getattr(store.core, table) if table != "jobs" else store.table
    with store.engine.connect() as c:
        return list(c.execute(sa.select(t)))


def status(queue: Queue, job: Job[Any]) -> JobStatus:
    found = queue.get(job.id)
    assert found is not None
    return found.status


@all_databases
def test_a_child_waits_for_every_parent_then_gets_their_results(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = flow_queue(clock)
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1d")
    with app.app_context():
        a = queue.enqueue("make", "a", delay="10s")
        b = queue.enqueue("make", "b", delay="20s")
        child = queue.enqueue("ship", None, after=[a, b.id])
        assert child.status is JobStatus.BLOCKED
        clock.advance(11)
        queue.produce()
        queue.produce()
        assert status(queue, child) is JobStatus.BLOCKED  # b has not run yet
        clock.advance(10)
        queue.produce()  # b completes
        queue.produce()  # the child is freed, then runs
        assert status(queue, child) is JobStatus.COMPLETED
        assert calls[-1] == ("ship", {a.id: {"made": "a"}, b.id: {"made": "b"}})


@all_databases
def test_a_parent_done_and_gone_frees_its_child_at_once(make_app: AppFactory, clock: Clock) -> None:
    queue = flow_queue(clock)
    app = make_app(queue)  # QUEUE_KEEP_COMPLETED=0: a None result deletes the row
    with app.app_context():
        quiet = queue.enqueue("make", "quiet")
        assert queue.get(quiet.id) is None  # ran inline, completed, deleted
        child = queue.enqueue("ship", None, after=[quiet])
        assert child.status is JobStatus.COMPLETED
        assert calls[-1] == ("ship", {quiet.id: None})
        # A bare id that names no job is refused (a typo), and nothing is written.
        before = len(all_rows(app, "jobs"))
        with pytest.raises(InvalidOptionError, match=f"after= names no job '{quiet.id}'"):
            queue.enqueue("ship", None, after=[quiet.id])
        assert len(all_rows(app, "jobs")) == before


@all_databases
def test_a_failed_parent_cancels_its_children_and_theirs(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = flow_queue(clock)
    app = make_app(queue)
    with app.app_context():
        bad = queue.enqueue("make", "boom", delay="1s")
        child = queue.enqueue("ship", None, after=[bad])
        grandchild = queue.enqueue("ship", None, after=[child])
        clock.advance(2)
        queue.produce()
        queue.produce()
        assert status(queue, bad) is JobStatus.FAILED
        found = queue.get(child.id)
        assert found is not None and found.status is JobStatus.CANCELLED
        assert found.reason == f"Cancelled: its parent job {bad.id} ended FAILED."
        gone = queue.get(grandchild.id)
        assert gone is not None and gone.status is JobStatus.CANCELLED
        assert gone.reason == f"Cancelled: its parent job {child.id} ended CANCELLED."
        assert [c for c in calls if c[0] == "ship"] == []


@all_databases
def test_cancel_and_delete_of_a_parent_cancel_the_child(make_app: AppFactory, clock: Clock) -> None:
    queue = flow_queue(clock)
    app = make_app(queue)
    with app.app_context():
        first = queue.enqueue("make", "a", delay="1h")
        second = queue.enqueue("make", "b", delay="1h")
        by_cancel = queue.enqueue("ship", None, after=[first])
        by_delete = queue.enqueue("ship", None, after=[second])
        queue.cancel(first.id)
        assert queue.delete(second.id)
        queue.produce()
        assert status(queue, by_cancel) is JobStatus.CANCELLED
        deleted = queue.get(by_delete.id)
        assert deleted is not None and deleted.status is JobStatus.CANCELLED
        assert deleted.reason == f"Cancelled: its parent job {second.id} was deleted."
        # A BLOCKED job itself can be cancelled.
        third = queue.enqueue("make", "c", delay="1h")
        blocked = queue.enqueue("ship", None, after=[third])
        assert queue.cancel(blocked.id).status is JobStatus.CANCELLED


@all_databases
def test_deleting_failed_parents_in_bulk_cancels_their_children(
    make_app: AppFactory, clock: Clock
) -> None:
    from flask_queue import actions

    queue = flow_queue(clock)
    app = make_app(queue)
    with app.app_context():
        bad = queue.enqueue("make", "boom", delay="1s")
        child = queue.enqueue("ship", None, after=[bad])
        clock.advance(2)
        queue.produce()  # the parent fails after the housekeeping: the child stays BLOCKED
        assert status(queue, bad) is JobStatus.FAILED
        assert status(queue, child) is JobStatus.BLOCKED
        # Gone, the failed parent would count as completed: its delete cancels the child.
        assert actions.delete_failed(app.extensions["queue"]) == 1
        queue.produce()
        assert status(queue, child) is JobStatus.CANCELLED
        assert [c for c in calls if c[0] == "ship"] == []


@all_databases
def test_after_with_a_session_commits_or_rolls_back_with_the_caller(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = flow_queue(clock)
    app = make_app(queue)
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        parent = queue.enqueue("make", "quiet")
        queue.enqueue("ship", None, after=[parent], session=db.session)
        db.session.rollback()
        assert all_rows(app, "deps") == [] and [c for c in calls if c[0] == "ship"] == []
        child = queue.enqueue("ship", None, after=[parent], session=db.session)
        assert child.status is JobStatus.BLOCKED
        db.session.commit()  # freed and run after the commit
        assert calls[-1] == ("ship", {parent.id: None})


@all_databases
def test_bad_after_says_what_is_wrong_and_writes_nothing(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = flow_queue(clock)
    app = make_app(queue)
    with app.app_context():
        parent = queue.enqueue("make", "a", delay="1h")
        for after, message in [
            (parent.id, "Invalid after '"),
            ([], "after= lists 0 jobs"),
            ([parent] * 101, "after= lists 101 jobs"),
            ([5], "Invalid parent 5 in after="),
            (["nope"], "after= names no job 'nope'"),
        ]:
            with pytest.raises(InvalidOptionError, match=message):
                queue.enqueue("ship", None, after=after)
        with pytest.raises(InvalidOptionError, match="after= and id= both given"):
            queue.enqueue("ship", None, after=[parent], id="x")
        with pytest.raises(InvalidOptionError, match="enqueue_many"):
            queue.enqueue_many("ship", [1], after=[parent])  # type: ignore[call-arg]
        assert len(all_rows(app, "jobs")) == 1 and all_rows(app, "deps") == []


# -- batches --------------------------------------------------------------------------------


@all_databases
def test_a_batch_calls_back_once_with_its_counts(make_app: AppFactory, clock: Clock) -> None:
    queue = flow_queue(clock)
    app = make_app(queue)
    with app.app_context():
        with queue.batch(on_complete="report", on_success="report") as batch:
            batch.enqueue("make", "a", delay="1s")
            batch.enqueue_many("make", ["boom", "quiet"], delay="1s")
        done, success = batch.callback_jobs
        assert done.status is JobStatus.BLOCKED and len(batch.jobs) == 3
        clock.advance(2)
        for _ in range(3):
            queue.produce()
        reports = [c[1] for c in calls if c[0] == "report"]
        assert reports == [
            {"batch": batch.id, "total": 3, "completed": 2, "failed": 1, "cancelled": 0}
        ]
        cancelled = queue.get(success.id)
        assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
        assert "ended FAILED" in (cancelled.reason or "")
        # Freed once: a later pass over the same callbacks changes nothing.
        resolved = app.extensions["queue"].store.deps.resolve([done.id, success.id])
        assert (resolved.freed, resolved.cancelled) == ([], [])


@all_databases
def test_an_empty_batch_calls_back_at_once(make_app: AppFactory, clock: Clock) -> None:
    queue = flow_queue(clock)
    app = make_app(queue)
    with app.app_context():
        with queue.batch(on_success="report") as batch:
            pass
        assert calls == [
            ("report", {"batch": batch.id, "total": 0, "completed": 0, "failed": 0, "cancelled": 0})
        ]
        with pytest.raises(InvalidOptionError, match="needs on_complete= or on_success="):
            queue.batch()
        with pytest.raises(UnknownQueueError):
            queue.batch(on_complete="nope")
        with pytest.raises(RuntimeError), queue.batch(on_complete="report") as failed:
            failed.enqueue("make", "a", delay="1h")
            raise RuntimeError("the block failed")
        assert failed.callback_jobs == []  # no callback for a block that raised


@server_databases
def test_eight_concurrent_finishers_start_the_callback_once(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = flow_queue(clock)
    app = make_app(queue, QUEUE_EXECUTOR="inline")
    with app.app_context(), queue.batch(on_complete="report") as batch:
        batch.enqueue_many("make", [f"p{i}" for i in range(8)], delay="1s")
    clock.advance(2)
    go = threading.Barrier(8)
    errors: list[BaseException] = []

    def finisher() -> None:
        try:
            with app.app_context():
                go.wait()
                queue.produce(limit=1)  # claim, run and finish one member
                go.wait()
                app.extensions["queue"].store.deps.resolve()  # all free the callback at once
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finisher) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with app.app_context():
        queue.produce()
        queue.produce()
    reports = [c[1] for c in calls if c[0] == "report"]
    assert reports == [{"batch": batch.id, "total": 8, "completed": 8, "failed": 0, "cancelled": 0}]
