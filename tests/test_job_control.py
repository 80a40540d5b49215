"""Job control (issue 19): results and wait, progress, cancel, timeouts.

Storage paths run on every configured database; the thread executor's runs go
through the real heartbeat thread with a short lease, so a cancel written by one
app reaches a run in another within a beat.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import (
    InvalidOptionError,
    InvalidStatusError,
    Job,
    JobCancelled,
    JobNotFoundError,
    JobStatus,
    JobTimeoutError,
    Queue,
    QueueError,
)
from tests.conftest import AppFactory, Clock, all_databases, row_snapshot


def _wait_until(check: Any, seconds: float = 10.0) -> None:
    give_up = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < give_up, "timed out waiting"
        time.sleep(0.01)


# -- results -------------------------------------------------------------------------


@all_databases
def test_a_return_value_is_kept_with_the_completed_job(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)

    @queue.handler("total")
    def total(job: Job[list[int]]) -> dict[str, int]:
        return {"sum": sum(job.payload)}

    @queue.handler("quiet")
    def quiet(job: Job[Any]) -> None:
        return None

    app = make_app(queue)  # QUEUE_KEEP_COMPLETED is 0: only results keep a row
    with app.app_context():
        job = queue.enqueue("total", [1, 2, 3])
        done = queue.get(job.id)
        assert done is not None and done.status is JobStatus.COMPLETED
        assert done.result == {"sum": 6}
        assert job.wait(timeout="1s").result == {"sum": 6}
        assert queue.wait(job.id, timeout="1s").result == {"sum": 6}
        silent = queue.enqueue("quiet", None)
        assert queue.get(silent.id) is None  # nothing returned: deleted as before
        with pytest.raises(JobNotFoundError, match="No job"):
            queue.wait(silent.id, timeout="1s")


@all_databases
def test_results_are_purged_after_keep_results(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)

    @queue.handler("answer")
    def answer(job: Job[Any]) -> int:
        return 42

    app = make_app(queue, QUEUE_KEEP_RESULTS="1h")
    with app.app_context():
        job = queue.enqueue("answer", None)
        clock.advance(minutes=59)
        queue.produce()
        assert queue.get(job.id) is not None
        clock.advance(minutes=2)
        assert queue.produce().purged == 1
        assert queue.get(job.id) is None


@all_databases
def test_a_result_that_is_not_json_fails_the_run_clearly(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)

    @queue.handler("odd", retry=0)
    def odd(job: Job[Any]) -> Any:
        return {1, 2} if job.payload == "set" else "x" * 2_000

    app = make_app(queue, QUEUE_MAX_PAYLOAD=1_000)
    with app.app_context():
        for payload, why in (("set", "not JSON"), ("big", "more than QUEUE_MAX_PAYLOAD")):
            job = queue.enqueue("odd", payload)
            failed = queue.get(job.id)
            assert failed is not None and failed.status is JobStatus.FAILED
            assert "InvalidResultError: The handler returned" in (failed.error or "")
            assert why in (failed.reason or "")
            assert failed.result is None


def test_wait_times_out_and_names_the_job(app: Flask, queue: Queue) -> None:
    job = queue.enqueue("echo", 1, delay="1h")
    started = time.monotonic()
    with pytest.raises(JobTimeoutError, match=f"{job.id}.*SCHEDULED after 0.1s"):
        queue.wait(job.id, timeout=0.1)
    assert time.monotonic() - started < 2
    assert isinstance(JobTimeoutError(), TimeoutError)


def test_a_job_not_from_the_queue_cannot_wait(app: Flask, queue: Queue) -> None:
    job = queue.enqueue("echo", 1, delay="1h")
    listed = next(queue.jobs())
    with pytest.raises(InvalidStatusError, match=r"queue\.wait"):
        listed.wait()
    with pytest.raises(JobTimeoutError):  # the enqueued one can
        job.wait(timeout=0.05)


# -- progress ------------------------------------------------------------------------


@all_databases
def test_progress_is_written_with_the_heartbeat_not_per_call(make_app: AppFactory) -> None:
    queue = Queue()
    go = threading.Event()
    reported = threading.Event()

    @queue.handler("long")
    def long(job: Job[Any]) -> None:
        for i in range(10_000):
            job.progress(i / 10_000, f"row {i}")
        job.progress(0.5, "half way")
        reported.set()
        go.wait(10)

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="0.3s")
    state = app.extensions["queue"]
    writes: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and "progress" in statement:
            writes.append(statement)

    with app.app_context():
        sa.event.listen(state.store.engine, "before_cursor_execute", count)
        try:
            job = queue.enqueue("long", None)
            assert reported.wait(10)
            _wait_until(lambda: tuple(queue.get(job.id).progress) == (0.5, "half way"))  # type: ignore[union-attr]
            seen = queue.get(job.id)
            assert seen is not None and seen.progress.fraction == 0.5
            assert seen.progress.message == "half way"
        finally:
            go.set()
            sa.event.remove(state.store.engine, "before_cursor_execute", count)
        # 10,001 reports, a handful of beats: one write per beat at most.
        assert 1 <= len(writes) <= 20, len(writes)


def test_bad_progress_is_refused_by_name(app: Flask, queue: Queue) -> None:
    problems: list[str] = []

    @queue.handler("reports")
    def reports(job: Job[Any]) -> None:
        for bad in (1.5, -0.1, float("nan"), "half", True):
            try:
                job.progress(bad)
            except InvalidOptionError as exc:
                problems.append(str(exc))

    queue.enqueue("reports", None)
    assert len(problems) == 5
    assert "1.5" in problems[0] and "0 to 1" in problems[0]
    job = queue.enqueue("echo", 1, delay="1h")
    with pytest.raises(InvalidStatusError, match="inside the job's handler"):
        job.progress(0.5)


# -- cancel --------------------------------------------------------------------------


@all_databases
def test_cancel_a_scheduled_job(app: Flask, queue: Queue) -> None:
    job = queue.enqueue("echo", 1, delay="1h", id="report-7")
    cancelled = queue.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    # It gave up its custom id: a new job may take it.
    again = queue.enqueue("echo", 2, delay="1h", id="report-7")
    assert again.id != job.id
    assert queue.wait(job.id, timeout="1s").status is JobStatus.CANCELLED
    with pytest.raises(InvalidStatusError, match="CANCELLED"):
        queue.cancel(job.id)
    with pytest.raises(JobNotFoundError):
        queue.cancel("no-such-job")
    # Retryable, like FAILED (once the id is free again).
    queue.delete(again.id)
    back = queue.retry(job.id)
    assert back.status is JobStatus.SCHEDULED and back.cancelled_at is None


def _two_apps(make_app: AppFactory, queue: Queue) -> tuple[Flask, Flask]:
    """Two apps on one table: one runs jobs on threads, the other only asks."""
    runner = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="0.3s")
    other = make_app(
        Queue(), QUEUE_TABLE_NAME=runner.config["QUEUE_TABLE_NAME"], QUEUE_EXECUTOR="worker"
    )
    return runner, other


@all_databases
def test_a_cancel_reaches_a_run_in_another_process_within_a_beat(make_app: AppFactory) -> None:
    queue = Queue()
    started = threading.Event()
    saw: list[Any] = []

    @queue.handler("export", retry=3)
    def export(job: Job[Any]) -> str:
        started.set()
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            if job.cancelled:
                saw.append("cancelled")
                job.check()  # raises JobCancelled
            time.sleep(0.01)
        return "finished"

    runner, other = _two_apps(make_app, queue)
    other_queue: Queue = other.extensions["queue"].queue
    with runner.app_context():
        job = queue.enqueue("export", None)
    assert started.wait(10)
    asked = time.monotonic()
    with other.app_context():
        assert other_queue.cancel(job.id).status is JobStatus.RUNNING  # asked, still running
        done = other_queue.wait(job.id, timeout="10s")
    assert time.monotonic() - asked < 2.0  # a beat is 0.1 s
    assert saw == ["cancelled"]
    assert done.status is JobStatus.CANCELLED and done.errors == 0  # never retried
    assert "while it ran" in (done.reason or "")


@all_databases
def test_an_async_handler_is_cancelled_outright(make_app: AppFactory) -> None:
    queue = Queue()
    started = threading.Event()
    cleaned: list[str] = []

    @queue.handler("poll")
    async def poll(job: Job[Any]) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cleaned.append("cancelled")
            raise

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="0.3s")
    with app.app_context():
        job = queue.enqueue("poll", None)
        assert started.wait(10)
        queue.cancel(job.id)
        assert queue.wait(job.id, timeout="5s").status is JobStatus.CANCELLED
    assert cleaned == ["cancelled"]


@all_databases
def test_delete_of_a_running_job_cancels_it_then_removes_it(make_app: AppFactory) -> None:
    queue = Queue()
    started = threading.Event()

    @queue.handler("sync")
    def sync(job: Job[Any]) -> None:
        started.set()
        while True:
            job.check()
            time.sleep(0.01)

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="0.3s")
    with app.app_context():
        job = queue.enqueue("sync", None)
        assert started.wait(10)
        assert queue.delete(job.id) is True
        assert queue.get(job.id) is not None  # the run's slot until it ends
        _wait_until(lambda: queue.get(job.id) is None)


@all_databases
def test_a_job_cancelled_before_its_run_starts_never_runs(app: Flask, queue: Queue) -> None:
    store = app.extensions["queue"].store
    job = queue.enqueue("echo", "never", delay="1s")
    app.extensions["queue"].queue.clock.advance(2)  # type: ignore[attr-defined]
    claimed = store.claim(1, timedelta(seconds=30))
    assert [c.id for c in claimed] == [job.id]
    queue.cancel(job.id)  # between the claim and the start
    from flask_queue.runner import run_job

    assert run_job(app.extensions["queue"], job.id, claimed[0].attempt).outcome == "cancelled"
    assert queue.get(job.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]


# -- timeouts ------------------------------------------------------------------------


@all_databases
def test_a_sync_handler_past_its_timeout_fails_the_attempt_and_is_retried(
    make_app: AppFactory,
) -> None:
    queue = Queue()
    release = threading.Event()
    runs: list[int] = []

    @queue.handler("hangs", retry=["10ms"], timeout="0.2s")
    def hangs(job: Job[Any]) -> str:
        runs.append(job.attempt)
        if job.attempt == 1:
            release.wait(10)  # never checks: it is asked, not stopped
            return "late"
        return "second"

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="5s")
    with app.app_context():
        job = queue.enqueue("hangs", None)
        _wait_until(lambda: queue.get(job.id).errors == 1)  # type: ignore[union-attr]
        timed_out = queue.get(job.id)
        assert timed_out is not None
        assert "JobTimeoutError" in (timed_out.error or "")
        release.set()  # the first run's late outcome is discarded

        def finished() -> bool:
            queue.produce()  # the retry is due 10 ms after the timeout
            return queue.get(job.id).status is JobStatus.COMPLETED  # type: ignore[union-attr]

        _wait_until(finished)
        done = queue.wait(job.id, timeout="5s")
        assert done.result == "second", done
    assert runs == [1, 2]


@all_databases
def test_an_enqueue_timeout_cancels_an_async_handler(make_app: AppFactory) -> None:
    queue = Queue()

    @queue.handler("slow", retry=0)
    async def slow(job: Job[Any]) -> None:
        await asyncio.sleep(30)

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="5s")
    with app.app_context():
        started = time.monotonic()
        job = queue.enqueue("slow", None, timeout="0.2s")
        assert job.timeout == timedelta(seconds=0.2)
        failed = queue.wait(job.id, timeout="5s")
        assert time.monotonic() - started < 3
        assert failed.status is JobStatus.FAILED
        assert "JobTimeoutError" in (failed.error or "")


def test_a_check_past_the_timeout_raises_job_timeout_error(app: Flask, queue: Queue) -> None:
    raised: list[BaseException] = []

    @queue.handler("checks", retry=0, timeout="0.05s")
    def checks(job: Job[Any]) -> None:
        time.sleep(0.3)
        try:
            job.check()
        except JobTimeoutError as exc:
            raised.append(exc)
            raise
        except JobCancelled as exc:  # pragma: no cover - the wrong kind of stop
            raised.append(exc)

    job = queue.enqueue("checks", None)
    assert [type(e) for e in raised] == [JobTimeoutError]
    assert "JobTimeoutError" in (queue.get(job.id).error or "")  # type: ignore[union-attr]


@pytest.mark.parametrize("timeout", [-1, 0, 0.0004, "forever", "2d", True])
def test_bad_timeouts_are_refused_and_store_nothing(app: Flask, queue: Queue, timeout: Any) -> None:
    before = row_snapshot(app)
    with pytest.raises(InvalidOptionError, match="timeout"):
        queue.enqueue("echo", 1, timeout=timeout)
    with pytest.raises(InvalidOptionError, match="timeout"):
        queue.handler(f"h{abs(hash(str(timeout)))}", timeout=timeout)
    assert row_snapshot(app) == before


# -- windows -------------------------------------------------------------------------


@all_databases
def test_debounce_runs_once_after_the_last_enqueue_capped_by_max_wait(
    app: Flask, queue: Queue, clock: Clock, recorder: Any
) -> None:
    first = queue.enqueue("echo", "v1", id="search-index", debounce="5s", max_wait="12s")
    assert first.run_at == clock.now + timedelta(seconds=5)
    for n in range(2, 6):  # an edit every 2 s: each pushes the run back
        clock.advance(2)
        job = queue.enqueue("echo", f"v{n}", id="search-index", debounce="5s", max_wait="12s")
        assert job.id == first.id
        queue.produce()
    assert recorder.payloads("echo") == []
    stored = queue.get(first.id)
    # Pushed to 8 s + 5 s = 13 s, but capped at the first enqueue + 12 s.
    assert stored is not None and stored.run_at == first.run_at + timedelta(seconds=7)
    assert stored.payload == "v5"
    clock.advance(4)
    queue.produce()
    assert recorder.payloads("echo") == ["v5"]  # once, the last payload


@all_databases
def test_unique_for_returns_the_same_job_even_after_it_finished(
    app: Flask, queue: Queue, clock: Clock, recorder: Any
) -> None:
    job = queue.enqueue("echo", "once", id="daily-7", unique_for="1h")
    assert recorder.payloads("echo") == ["once"]  # due now: it ran (inline)
    clock.advance(minutes=30)
    again = queue.enqueue("echo", "twice", id="daily-7", unique_for="1h")
    assert again.id == job.id and again.status is JobStatus.COMPLETED
    assert recorder.payloads("echo") == ["once"]
    queue.produce()  # the purge keeps the row while its window is open
    clock.advance(minutes=31)
    queue.produce()
    later = queue.enqueue("echo", "next hour", id="daily-7", unique_for="1h")
    assert later.id != job.id
    assert recorder.payloads("echo") == ["once", "next hour"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"debounce": "5s"}, "needs id="),
        ({"unique_for": "1h"}, "needs id="),
        ({"id": "x", "max_wait": "1m"}, "needs debounce="),
        ({"id": "x", "debounce": "5s", "unique_for": "1h"}, "pass one"),
        ({"id": "x", "debounce": "5s", "override": True}, "pass one"),
        ({"id": "x", "debounce": "5s", "delay": "1s"}, "drop delay="),
        ({"id": "x", "debounce": -1}, "debounce"),
        ({"id": "x", "unique_for": "1h", "every": "1m"}, "one-off"),
    ],
)
def test_bad_windows_are_refused_and_store_nothing(
    app: Flask, queue: Queue, options: dict[str, Any], message: str
) -> None:
    before = row_snapshot(app)
    with pytest.raises(QueueError, match=message):
        queue.enqueue("echo", 1, **options)
    assert row_snapshot(app) == before


@all_databases
@pytest.mark.parametrize("window", ["debounce", "unique_for"])
def test_windows_hold_under_eight_concurrent_enqueuers(
    make_app: AppFactory, queue: Queue, window: str
) -> None:
    app = make_app(queue)
    options = {"debounce": {"debounce": "1h"}, "unique_for": {"unique_for": "1h", "delay": "1h"}}
    ids: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def enqueuer(n: int) -> None:
        try:
            with app.app_context():
                start.wait(10)
                for i in range(10):
                    ids.append(queue.enqueue("echo", [n, i], id="tenant-9", **options[window]).id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=enqueuer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(ids) == 80 and len(set(ids)) == 1
    assert len(row_snapshot(app)) == 1  # one job, whichever enqueuer wrote it


@all_databases
def test_unique_for_holds_when_the_first_job_finishes_during_the_race(
    make_app: AppFactory, queue: Queue
) -> None:
    """Review H2: a window read before the INSERT let a quick job that finished in
    between make room for a second one. Eight enqueuers, due now, run inline."""
    app = make_app(queue)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def enqueuer() -> None:
        try:
            with app.app_context():
                for n in range(15):
                    barrier.wait(10)
                    queue.enqueue("echo", n, id=f"u-{n}", unique_for="1h")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=enqueuer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with app.app_context():
        per_id: dict[str, int] = {}
        for job in queue.jobs():
            per_id[job.custom_id or ""] = per_id.get(job.custom_id or "", 0) + 1
    assert per_id == {f"u-{n}": 1 for n in range(15)}


@all_databases
def test_an_exclusive_queue_holds_across_a_timeout(make_app: AppFactory) -> None:
    """Review H3: the retry of a timed-out run started beside the still-running
    first attempt (two RUNNING in an exclusive queue)."""
    queue = Queue()
    release = threading.Event()
    running: list[int] = []
    peak: list[int] = []
    attempts: list[int] = []
    lock = threading.Lock()

    @queue.handler("solo", exclusive=True, retry=["10ms"], timeout="0.2s")
    def solo(job: Job[Any]) -> None:
        with lock:
            running.append(job.attempt)
            peak.append(len(running))
            attempts.append(job.attempt)
        try:
            if job.attempt == 1:
                release.wait(10)  # never checks
        finally:
            with lock:
                running.remove(job.attempt)

    # A lease long enough that a loaded machine's late beat cannot expire a run.
    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="3s")
    with app.app_context():
        job = queue.enqueue("solo", None)
        _wait_until(lambda: queue.get(job.id).errors == 1)  # type: ignore[union-attr]
        for _ in range(20):  # 1 s of produces while attempt 1 still runs
            queue.produce()
            time.sleep(0.05)
        assert max(peak) == 1 and len(peak) == 1  # the retry waited
        release.set()

        def finished() -> bool:
            queue.produce()
            return queue.get(job.id) is None  # completed (no result: deleted)

        _wait_until(finished)
    assert max(peak) == 1 and attempts == [1, 2], attempts


@all_databases
def test_a_cancelled_run_that_never_stops_ends_at_its_timeout(make_app: AppFactory) -> None:
    """Review M3: a cancel disabled the timeout, so a handler that ignored the
    cancel kept its lease alive for as long as it ran."""
    queue = Queue()
    started, release = threading.Event(), threading.Event()

    @queue.handler("deaf", timeout="0.5s")
    def deaf(job: Job[Any]) -> None:
        started.set()
        release.wait(10)

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="0.3s")
    try:
        with app.app_context():
            job = queue.enqueue("deaf", None)
            assert started.wait(10)
            queue.cancel(job.id)
            done = queue.wait(job.id, timeout="5s")
            assert done.status is JobStatus.CANCELLED
    finally:
        release.set()


@all_databases
@pytest.mark.parametrize("returns", [None, {"x": 1}])
def test_a_cancel_the_run_never_saw_still_ends_the_job(make_app: AppFactory, returns: Any) -> None:
    """Review M1: a cancel (or a delete) asked for between two beats of a run that
    then ended was lost: the job ended COMPLETED (or stayed). A 30 s lease: no
    beat comes between the cancel and the end."""
    queue = Queue()
    started, finish = threading.Event(), threading.Event()

    @queue.handler("quick")
    def quick(job: Job[Any]) -> Any:
        started.set()
        finish.wait(10)
        return returns

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_LEASE="30s")
    with app.app_context():
        for action in ("cancel", "delete"):
            started.clear()
            finish.clear()
            job = queue.enqueue("quick", action)
            assert started.wait(10)
            if action == "cancel":
                queue.cancel(job.id)
            else:
                assert queue.delete(job.id) is True
            finish.set()
            if action == "cancel":
                assert queue.wait(job.id, timeout="10s").status is JobStatus.CANCELLED
            else:
                _wait_until(lambda j=job: (queue.produce(), queue.get(j.id))[1] is None)


def test_a_result_that_is_not_json_is_not_retried(app: Flask, queue: Queue) -> None:
    """Review M7: the handler ran again on every retry, only to return the same
    value that cannot be stored."""
    runs: list[int] = []

    @queue.handler("sets", retry=["1ms", "1ms"])
    def sets(job: Job[Any]) -> Any:
        runs.append(job.attempt)
        return {1, 2}

    job = queue.enqueue("sets", None)
    failed = queue.get(job.id)
    assert failed is not None and failed.status is JobStatus.FAILED and runs == [1]


def test_a_huge_int_progress_is_refused_by_name(app: Flask, queue: Queue) -> None:
    seen: list[str] = []

    @queue.handler("huge")
    def huge(job: Job[Any]) -> None:
        try:
            job.progress(10**400)
        except InvalidOptionError as exc:
            seen.append(str(exc))

    queue.enqueue("huge", None)
    assert len(seen) == 1 and "Invalid progress" in seen[0]


def test_a_worker_with_one_hung_handler_keeps_draining(make_app: AppFactory) -> None:
    queue = Queue()
    release = threading.Event()
    quick: list[int] = []

    @queue.handler("hangs", timeout="0.2s", retry=0)
    def hangs(job: Job[Any]) -> None:
        release.wait(20)  # never checks: its thread stays busy

    @queue.handler("quick")
    def quick_one(job: Job[int]) -> None:
        quick.append(job.payload)

    app = make_app(queue, QUEUE_EXECUTOR="thread", QUEUE_THREADS=2, QUEUE_LEASE="3s")
    try:
        with app.app_context():
            hung = queue.enqueue("hangs", None)
            _wait_until(lambda: queue.get(hung.id).status is JobStatus.FAILED)  # type: ignore[union-attr]
            queue.enqueue_many("quick", list(range(20)), delay="1ms")
            time.sleep(0.01)

            def drained() -> bool:
                queue.produce()
                return len(quick) == 20

            _wait_until(drained)
            assert not release.is_set()  # all of it while the hung handler still runs
    finally:
        release.set()


def test_cli_cancel_and_result(app: Flask, queue: Queue) -> None:
    @queue.handler("answer")
    def answer(job: Job[Any]) -> dict[str, int]:
        return {"answer": 42}

    runner = app.test_cli_runner()
    done = queue.enqueue("answer", None)
    shown = runner.invoke(args=["queue", "result", done.id])
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == '{"answer": 42}'
    waited = runner.invoke(args=["queue", "result", done.id, "--wait", "1s"])
    assert waited.exit_code == 0 and '"answer": 42' in waited.output
    later = queue.enqueue("echo", 1, delay="1h")
    refused = runner.invoke(args=["queue", "result", later.id])
    assert refused.exit_code == 1 and "SCHEDULED" in refused.output
    cancelled = runner.invoke(args=["queue", "cancel", later.id])
    assert cancelled.exit_code == 0 and "CANCELLED" in cancelled.output
    assert queue.get(later.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    again = runner.invoke(args=["queue", "cancel", later.id])
    assert again.exit_code == 1 and "CANCELLED" in again.output
    missing = runner.invoke(args=["queue", "result", "nope"])
    assert missing.exit_code == 1 and "nope" in missing.output
    show = runner.invoke(args=["queue", "show", done.id])
    assert '"result": {' in show.output and '"answer": 42' in show.output


@all_databases
def test_a_debounce_of_a_running_job_starts_a_new_window(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    """Review M4: the new content inherited the running content's cap, already in
    the past: it was due at once, and every later call was "capped" there."""
    store = app.extensions["queue"].store
    first = queue.enqueue("echo", "v1", id="doc-3", debounce="1s", max_wait="2s")
    clock.advance(1)
    (claimed,) = store.claim_started(1, timedelta(minutes=5))  # v1 runs now
    assert claimed.id == first.id
    clock.advance(5)  # past v1's cap
    queue.enqueue("echo", "v2", id="doc-3", debounce="10s", max_wait="1m")
    queued = queue.get(first.id)
    assert queued is not None and queued.payload == "v2"
    assert queued.run_at == clock.now + timedelta(seconds=10)
    clock.advance(5)
    queue.enqueue("echo", "v3", id="doc-3", debounce="10s", max_wait="1m")
    assert queue.get(first.id).run_at == clock.now + timedelta(seconds=10)  # type: ignore[union-attr]


def test_an_unknown_enqueue_keyword_is_refused_by_name(app: Flask, queue: Queue) -> None:
    before = row_snapshot(app)
    with pytest.raises(InvalidOptionError, match="'dely'"):
        queue.enqueue("echo", 1, dely="1s")  # type: ignore[call-arg]
    with pytest.raises(InvalidOptionError, match="enqueue_many does not take 'id'"):
        queue.enqueue_many("echo", [1, 2], id="x")
    assert row_snapshot(app) == before
