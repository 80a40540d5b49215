"""Claiming, running and finishing jobs, with a frozen clock, on every database."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_queue import InvalidStatusError, Job, JobNotFoundError, JobStatus, Queue
from flask_queue.runner import run_job
from tests.conftest import Clock, Recorder, all_databases, row_snapshot


@all_databases
def test_claim_takes_due_jobs_once(app: Flask, queue: Queue, clock: Clock) -> None:
    store = app.extensions["queue"].store
    due = [queue.enqueue("echo", i, delay=f"{i + 1}s").id for i in range(3)]
    future = queue.enqueue("echo", "later", delay="1h").id
    clock.advance(10)
    claimed = store.claim(10, timedelta(minutes=5))
    assert [j.id for j in claimed] == due  # oldest run_at first
    assert all(j.attempt == 1 and j.queue == "echo" for j in claimed)
    for job_id in due:
        stored = queue.get(job_id)
        assert stored is not None
        assert (stored.status, stored.attempt) == (JobStatus.RUNNING, 1)
        assert stored.lease_until == clock() + timedelta(minutes=5)
        assert stored.started_at is None
    assert store.claim(10, timedelta(minutes=5)) == []
    assert queue.get(future).status is JobStatus.SCHEDULED  # type: ignore[union-attr]


@all_databases
def test_claim_respects_limit(app: Flask, queue: Queue, clock: Clock) -> None:
    store = app.extensions["queue"].store
    queue.enqueue_many("echo", list(range(7)), delay="1s")
    clock.advance(2)
    assert len(store.claim(3, timedelta(minutes=1))) == 3
    assert len(store.claim(3, timedelta(minutes=1))) == 3
    assert len(store.claim(3, timedelta(minutes=1))) == 1


@all_databases
def test_expired_lease_is_claimed_again_and_old_attempt_is_stale(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    state = app.extensions["queue"]
    job = queue.enqueue("echo", "x", delay="1s")
    clock.advance(2)
    (first,) = state.store.claim(5, timedelta(minutes=1))
    assert state.store.claim(5, timedelta(minutes=1)) == []  # lease still held
    clock.advance(61)
    (second,) = state.store.claim(5, timedelta(minutes=1))
    assert (second.id, second.attempt) == (job.id, first.attempt + 1)
    assert run_job(state, job.id, first.attempt).outcome == "stale"
    assert recorder.calls == []
    assert run_job(state, job.id, second.attempt).outcome == "completed"
    assert run_job(state, job.id, second.attempt).outcome == "missing"
    assert recorder.calls == [("echo", "x")]


@all_databases
def test_started_run_cannot_be_started_twice(app: Flask, queue: Queue, clock: Clock) -> None:
    state = app.extensions["queue"]
    queue.enqueue("echo", "x", delay="1s")
    clock.advance(2)
    (job,) = state.store.claim(5, timedelta(minutes=1))
    started, why = state.store.start(job.id, job.attempt, timedelta(minutes=1))
    assert why == "ok" and started is not None
    before = row_snapshot(app)
    assert state.store.start(job.id, job.attempt, timedelta(minutes=1)) == (None, "stale")
    assert row_snapshot(app) == before


@all_databases
def test_produce_runs_due_jobs_inline(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    queue.enqueue("echo", "now")  # immediate: ran at enqueue
    assert recorder.calls == [("echo", "now")]
    queue.enqueue("echo", "soon", delay="30s")
    assert queue.produce().claimed == 0
    clock.advance(31)
    result = queue.produce()
    assert result.claimed == 1
    assert recorder.payloads("echo") == ["now", "soon"]
    assert list(queue.jobs()) == []  # finished one-off jobs are deleted


@all_databases
def test_keep_completed_then_purge(make_app: Any, queue: Queue, clock: Clock) -> None:
    app = make_app(queue, QUEUE_KEEP_COMPLETED="1h")
    with app.app_context():
        job = queue.enqueue("echo", 1)
        kept = queue.get(job.id)
        assert kept is not None and kept.status is JobStatus.COMPLETED
        clock.advance(minutes=59)
        assert queue.produce().purged == 0
        clock.advance(minutes=2)
        assert queue.produce().purged == 1
        assert queue.get(job.id) is None


@all_databases
def test_every_with_times(app: Flask, queue: Queue, clock: Clock, recorder: Recorder) -> None:
    job = queue.enqueue("echo", "tick", every="10m", times=3)
    start = clock()
    for n in range(1, 4):
        clock.advance(minutes=10)
        assert queue.produce().claimed == 1
        if n < 3:
            stored = queue.get(job.id)
            assert stored is not None
            assert (stored.count, stored.status) == (n, JobStatus.SCHEDULED)
            assert stored.run_at == start + timedelta(minutes=10 * (n + 1))
    assert recorder.payloads("echo") == ["tick"] * 3
    assert queue.get(job.id) is None
    clock.advance(minutes=30)
    assert queue.produce().claimed == 0


@all_databases
def test_cron_reschedules_in_its_timezone(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    # 2026-03-01 12:00 UTC; daily 09:00 New York = 14:00 UTC, then 13:00 UTC after
    # the 2026-03-08 DST change.
    job = queue.enqueue("echo", "daily", cron="0 9 * * *", tz="America/New_York")
    runs = []
    for _ in range(9):
        stored = queue.get(job.id)
        assert stored is not None
        clock.now = stored.run_at
        queue.produce()
        runs.append(stored.run_at.strftime("%m-%d %H:%M"))
    assert runs[0] == "03-01 14:00"
    assert runs[6] == "03-07 14:00"
    assert runs[7] == "03-08 13:00"
    assert len(recorder.payloads("echo")) == 9


@all_databases
def test_retry_policy_then_failed_with_reason(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    job = queue.enqueue("boom", "x", delay="1s")  # handler retry=["10s", "1m"]
    clock.advance(1)
    queue.produce()
    stored = queue.get(job.id)
    assert stored is not None
    assert (stored.status, stored.errors) == (JobStatus.SCHEDULED, 1)
    assert stored.run_at == clock() + timedelta(seconds=10)
    assert "RuntimeError: boom x" in (stored.reason or "")
    clock.advance(9)
    assert queue.produce().claimed == 0
    clock.advance(1)
    queue.produce()
    stored = queue.get(job.id)
    assert stored is not None and stored.run_at == clock() + timedelta(minutes=1)
    clock.advance(60)
    queue.produce()
    failed = queue.get(job.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.errors == 3
    assert "Traceback" in (failed.reason or "") and "RuntimeError: boom x" in (failed.reason or "")
    assert len(recorder.payloads("boom")) == 3
    clock.advance(3600)
    assert queue.produce().claimed == 0


@all_databases
def test_per_job_retry_overrides_handler(app: Flask, queue: Queue, clock: Clock) -> None:
    job = queue.enqueue("boom", "x", delay="1s", retry=0)
    clock.advance(1)
    queue.produce()
    assert queue.get(job.id).status is JobStatus.FAILED  # type: ignore[union-attr]


@all_databases
def test_flaky_job_recovers_on_retry(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    recorder.fail_next = 1
    job = queue.enqueue("flaky", "x", delay="1s")
    clock.advance(1)
    queue.produce()
    clock.advance(10)
    queue.produce()
    assert recorder.payloads("flaky") == ["x", "x"]
    assert queue.get(job.id) is None


@all_databases
def test_failing_repeating_job_keeps_failed_record_and_goes_on(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    job = queue.enqueue("boom", "r", every="1h", retry=0)
    clock.advance(hours=1)
    queue.produce()
    schedule = queue.get(job.id)
    assert schedule is not None
    assert (schedule.status, schedule.count, schedule.errors) == (JobStatus.SCHEDULED, 1, 0)
    assert schedule.run_at == clock() + timedelta(hours=1)
    (failed,) = queue.jobs(status="FAILED")
    assert failed.id != job.id
    assert failed.custom_id is None
    assert failed.payload == "r" and "boom r" in (failed.reason or "")
    clock.advance(hours=1)
    queue.produce()
    assert len(list(queue.jobs(status="FAILED"))) == 2


@all_databases
def test_job_without_handler_waits_out_the_grace_then_fails_with_reason(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    job = queue.enqueue("echo", "orphan", delay="1s")
    handler = queue.handlers.pop("echo")  # this release lacks the handler (rolling deploy)
    clock.advance(1)
    queue.produce()
    waiting = queue.get(job.id)
    assert waiting is not None
    # Left for a release that has the handler: no attempt used, offered again soon.
    assert (waiting.status, waiting.errors) == (JobStatus.SCHEDULED, 0)
    assert waiting.run_at == clock() + timedelta(seconds=30)
    assert "left for a release that has one" in (waiting.reason or "")
    # A release that has it runs it within the grace.
    queue.handlers["echo"] = handler
    clock.advance(30)
    queue.produce()
    assert queue.get(job.id) is None and recorder.payloads("echo") == ["orphan"]
    # Past the grace (QUEUE_HANDLER_GRACE, 15 minutes) the handler is taken to be gone.
    gone = queue.enqueue("echo", "orphan 2", delay="1s")
    del queue.handlers["echo"]
    for _ in range(40):
        clock.advance(30)
        queue.produce()
    failed = queue.get(gone.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert "No handler is registered for queue 'echo'" in (failed.reason or "")
    clock.advance(3600)
    assert queue.produce().claimed == 0


@all_databases
def test_retry_and_run_now_actions(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    failed = queue.enqueue("boom", "x", delay="1s", retry=0)
    clock.advance(1)
    queue.produce()
    job = queue.retry(failed.id)
    assert (job.status, job.errors, job.run_at) == (JobStatus.SCHEDULED, 0, clock())
    later = queue.enqueue("echo", "later", delay="1 day")
    with pytest.raises(InvalidStatusError, match="SCHEDULED"):
        queue.retry(later.id)
    queue.run_now(later.id)
    queue.produce()
    assert "later" in recorder.payloads("echo")
    with pytest.raises(JobNotFoundError, match="'nope'"):
        queue.retry("nope")


def test_handler_runs_in_app_context_with_its_own_session(make_app: Any, clock: Clock) -> None:
    from flask import current_app

    q = Queue(clock=clock)
    seen: list[str] = []

    @q.handler("ctx")
    def ctx(job: Job[None]) -> None:
        seen.append(current_app.name)

    app = make_app(q)
    with app.app_context():
        q.enqueue("ctx", None)
    assert seen == [app.name]


@all_databases
def test_runs_that_keep_dying_use_retries_then_fail(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    state = app.extensions["queue"]
    lease = timedelta(minutes=1)
    job = queue.enqueue("echo", "poison", delay="1s", retry=["10s"])

    def start_and_die() -> None:
        (claimed,) = state.store.claim(5, lease)
        _, why = state.store.start(claimed.id, claimed.attempt, lease)
        assert why == "ok"
        clock.advance(61)  # the process died: nothing finishes the run

    clock.advance(1)
    start_and_die()  # first run dies
    start_and_die()  # recovered (1 failure, 1 retry allowed), dies again
    stuck = queue.get(job.id)
    assert stuck is not None and stuck.status is JobStatus.RUNNING
    (claimed,) = state.store.claim(5, lease)  # recovered again: 2 failures
    assert run_job(state, claimed.id, claimed.attempt).outcome == "failed"
    assert recorder.calls == []  # not run a third time
    failed = queue.get(job.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert "did not finish within its lease" in (failed.reason or "")


@all_databases
def test_a_lost_dispatch_does_not_count_as_a_failure(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    state = app.extensions["queue"]
    job = queue.enqueue("echo", "lost", delay="1s", retry=0)
    clock.advance(1)
    state.store.claim(5, timedelta(minutes=1))  # claimed, never started
    clock.advance(61)
    (claimed,) = state.store.claim(5, timedelta(minutes=1))
    assert run_job(state, claimed.id, claimed.attempt).outcome == "completed"
    assert recorder.calls == [("echo", "lost")]
    assert queue.get(job.id) is None


@all_databases
def test_enqueue_many_due_now_is_dispatched_as_one_claim(
    app: Flask, queue: Queue, recorder: Recorder
) -> None:
    store = app.extensions["queue"].store
    calls: list[str] = []
    claim, claim_one, started = store.claim, store.claim_one, store.claim_started
    store.claim = lambda *a, **k: calls.append("claim") or claim(*a, **k)
    store.claim_one = lambda *a, **k: calls.append("claim_one") or claim_one(*a, **k)
    store.claim_started = lambda *a, **k: calls.append("claim_started") or started(*a, **k)
    try:
        queue.enqueue_many("echo", list(range(50)))  # due now: dispatched at once
    finally:
        store.claim, store.claim_one, store.claim_started = claim, claim_one, started
    # One statement for the batch, not one per job; the inline executor's
    # claim starts the runs too.
    assert calls == ["claim_started"]
    assert sorted(recorder.payloads("echo")) == list(range(50))
    assert list(queue.jobs()) == []


@all_databases
def test_batch_dispatch_claims_only_what_the_pool_can_start(
    make_app: Any, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_THREADS=2)
    with app.app_context():
        executor = app.extensions["queue"].executor
        release = threading.Event()
        queue.handlers["echo"].func = lambda job: (release.wait(5), recorder.calls.append(job))
        queue.enqueue_many("echo", list(range(20)))
        for _ in range(100):  # the batch is claimed on the pool, not in enqueue
            running = list(queue.jobs(status="RUNNING"))
            if len(recorder.calls) == 0 and running:
                break
            threading.Event().wait(0.02)
        running = list(queue.jobs(status="RUNNING"))
        assert 1 <= len(running) <= 2 * 2  # the rest stay plain due rows
        assert len(list(queue.jobs(status="SCHEDULED"))) == 20 - len(running)
        release.set()
        executor.shutdown(wait=True)
        for _ in range(20):  # the producer takes the rest, a pool's worth at a time
            queue.produce()
            executor.shutdown(wait=True)
        assert len(recorder.calls) == 20


def test_shutdown_waits_for_the_runs_its_claims_submit(
    make_app: Any, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the thread executor claims on its pool, then submits the run; a
    ``shutdown(wait=True)`` that began while the claim was in flight waited for
    the claim only, and its run went to a fresh pool nobody waited for, so the
    job was still RUNNING after shutdown returned (CI, test_steps on PostgreSQL)."""

    @queue.handler("slow")
    def slow(job: Job[Any]) -> str:
        threading.Event().wait(0.2)
        return "done"

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_KEEP_COMPLETED="1d")
    state = app.extensions["queue"]
    claiming = threading.Event()
    real_claim = state.store.claim_started

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        claiming.set()
        threading.Event().wait(0.2)  # shutdown starts while the claim is in flight
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(state.store, "claim_started", slow_claim)
    with app.app_context():
        job = queue.enqueue("slow", None)
        assert claiming.wait(5)
        state.executor.shutdown(wait=True)
        assert queue.get(job.id).status is JobStatus.COMPLETED  # type: ignore[union-attr]
