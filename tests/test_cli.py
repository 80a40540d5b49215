"""``flask queue ...`` through ``app.test_cli_runner()``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask

from flask_queue import JobStatus, Queue
from tests.conftest import AppFactory, Clock, Recorder, all_databases


def test_help_lists_every_command(runner: Any) -> None:
    result = runner.invoke(args=["queue", "--help"])
    assert result.exit_code == 0
    for name in [
        "produce",
        "work",
        "enqueue",
        "list",
        "show",
        "retry",
        "delete",
        "stats",
        "token",
        "sync-crons",
    ]:
        assert name in result.output


def test_enqueue_list_show_delete(runner: Any, queue: Queue, app: Flask) -> None:
    result = runner.invoke(
        args=["queue", "enqueue", "echo", '{"a": 1}', "--delay", "5m", "--id", "c1"]
    )
    assert result.exit_code == 0, result.output
    job_id = result.output.split()[0]
    assert "SCHEDULED" in result.output
    listed = runner.invoke(args=["queue", "list"])
    assert job_id in listed.output and "c1" in listed.output and "QUEUE" in listed.output
    shown = runner.invoke(args=["queue", "show", job_id])
    assert json.loads(shown.output)["payload"] == {"a": 1}
    deleted = runner.invoke(args=["queue", "delete", job_id])
    assert deleted.exit_code == 0
    assert queue.get(job_id) is None
    again = runner.invoke(args=["queue", "delete", job_id])
    assert again.exit_code == 1 and "No job with id" in again.output


def test_bad_input_exits_non_zero_with_message(runner: Any, app: Flask, queue: Queue) -> None:
    cases = [
        (["queue", "enqueue", "nope", "1"], "Unknown queue 'nope'"),
        (["queue", "enqueue", "echo", "{bad json"], "is not JSON"),
        (["queue", "enqueue", "echo", "1", "--delay", "soon"], "'soon'"),
        (["queue", "enqueue", "echo", "1", "--cron", "99 * * * *"], "'99 * * * *'"),
        (["queue", "list", "--status", "DONE"], "'DONE'"),
        (["queue", "show", "missing"], "'missing'"),
        (["queue", "retry", "missing"], "'missing'"),
    ]
    for args, message in cases:
        result = runner.invoke(args=args)
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
    assert list(queue.jobs()) == []


def test_produce_retry_stats_token(
    runner: Any, app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    failed = queue.enqueue("boom", "x", delay="1s", retry=0)
    queue.enqueue("echo", "y", delay="1s")
    clock.advance(1)
    produced = runner.invoke(args=["queue", "produce"])
    assert produced.exit_code == 0
    assert json.loads(produced.output)["claimed"] == 2
    stats = runner.invoke(args=["queue", "stats"])
    assert "boom" in stats.output and "FAILED" in stats.output
    retried = runner.invoke(args=["queue", "retry", failed.id])
    assert retried.exit_code == 0 and "SCHEDULED" in retried.output
    assert queue.get(failed.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]
    token = runner.invoke(args=["queue", "token"])
    assert token.output.strip() == queue.produce_token()


def test_work_runs_jobs_then_stops(
    runner: Any, app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    queue.enqueue_many("echo", ["w1", "w2", "w3"], delay="1s")
    clock.advance(1)
    result = runner.invoke(args=["queue", "work", "--max-jobs", "3", "--interval", "0.05"])
    assert result.exit_code == 0, result.output
    assert sorted(recorder.payloads("echo")) == ["w1", "w2", "w3"]
    assert "worker stopped after 3 job(s)" in result.output
    assert list(queue.jobs()) == []


def test_produce_loop_runs_until_stopped(
    app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    import threading

    from flask_queue.worker import produce_loop

    queue.enqueue_many("echo", ["a", "b"], delay="1s")
    clock.advance(1)
    stop = threading.Event()
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        stop.set()  # one productive round is enough

    produce_loop(queue, 0.01, stop=stop, report=report)
    assert lines == ["claimed 2 job(s)"]
    assert sorted(recorder.payloads("echo")) == ["a", "b"]


def _one_error_line(result: Any, exit_code: int = 1) -> str:
    """The command failed the way every QueueError should: one ``Error:`` line, exit 1
    (2 for a value the option's own type refuses, as click does)."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors: list[str] = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert result.output.splitlines()[-1] == errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("options", "bad", "exit_code"),
    [
        # Durations are read by the options' own type (cli.Duration): a usage error.
        (["--delay", "9000y"], "9000y", 2),
        (["--every", "9000 years"], "9000 years", 2),
        (["--cron", "0 9 31 2 *"], "0 9 31 2 *", 1),
        (["--every", "1h", "--times", str(2**40)], str(2**40), 1),
    ],
)
def test_enqueue_out_of_range_values_are_errors_not_tracebacks(
    runner: Any, app: Flask, queue: Queue, options: list[str], bad: str, exit_code: int
) -> None:
    result = runner.invoke(args=["queue", "enqueue", "echo", "1", *options])
    assert bad in _one_error_line(result, exit_code)
    assert list(queue.jobs()) == []


@pytest.mark.parametrize(
    "args",
    [
        # (produce --loop and work ride out storage errors: tests/test_outage.py)
        ["produce"],
        ["enqueue", "echo", "1"],
        ["list"],
        ["show", "x"],
        ["retry", "x"],
        ["delete", "x"],
        ["stats"],
        ["sync-crons"],
    ],
)
def test_storage_errors_are_one_line(make_app: AppFactory, queue: Queue, args: list[str]) -> None:
    # A missing table (migrations not run) fails every statement, and the
    # database's message spans several lines (SQL, a link): still one line here.
    app = make_app(queue)
    with app.app_context():
        app.extensions["queue"].store.table.drop(app.extensions["queue"].store.engine)
        result = app.test_cli_runner().invoke(args=["queue", *args])
    line = _one_error_line(result)
    assert "Could not" in line
    assert "flask db upgrade" in line  # says how to fix it


@all_databases
def test_a_queue_table_not_migrated_yet_says_how_to_fix_it(
    make_app: AppFactory, queue: Queue
) -> None:
    from flask_queue import StorageError

    app = make_app(queue)
    with app.app_context():
        store = app.extensions["queue"].store
        store.queues.drop(store.engine)
        with pytest.raises(StorageError, match=r"flask db migrate.*flask db upgrade"):
            queue.produce()
        store.queues.create(store.engine)  # for the teardown's drop_all


@pytest.mark.parametrize(
    "args",
    [
        ["work", "--interval", "0"],
        ["work", "--interval", "-1"],
        ["produce", "--loop", "--interval", "0"],
        ["produce", "--loop", "--interval", "-1"],
    ],
)
def test_loops_refuse_an_interval_that_would_spin(
    runner: Any, app: Flask, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    import flask_queue.worker

    started: list[Any] = []
    monkeypatch.setattr(flask_queue.worker, "work", lambda *a, **kw: started.append(kw))
    monkeypatch.setattr(flask_queue.worker, "produce_loop", lambda *a, **kw: started.append(a))
    result = runner.invoke(args=["queue", *args])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--interval'" in result.output
    assert started == []


def test_loops_pass_a_positive_interval_on(
    runner: Any, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flask_queue.worker

    seen: list[float] = []
    monkeypatch.setattr(flask_queue.worker, "work", lambda q, **kw: seen.append(kw["interval"]))
    monkeypatch.setattr(flask_queue.worker, "produce_loop", lambda q, i, **kw: seen.append(i))
    assert runner.invoke(args=["queue", "work", "--interval", "0.25"]).exit_code == 0
    assert runner.invoke(args=["queue", "produce", "--loop", "--interval", "0.5"]).exit_code == 0
    # Without --interval, produce --loop uses QUEUE_PRODUCE_INTERVAL (10s).
    assert runner.invoke(args=["queue", "produce", "--loop"]).exit_code == 0
    assert seen == [0.25, 0.5, 10.0]


def test_work_max_jobs_leaves_the_rest_scheduled(
    runner: Any, app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    jobs = queue.enqueue_many("echo", list(range(8)), delay="1s")
    clock.advance(1)
    result = runner.invoke(args=["queue", "work", "--max-jobs", "1", "--interval", "0.01"])
    assert result.exit_code == 0, result.output
    assert len(recorder.payloads("echo")) == 1
    # The job that ran is gone (completed jobs are not kept here).
    statuses = [j.status for j in map(queue.get, (j.id for j in jobs)) if j is not None]
    assert statuses.count(JobStatus.SCHEDULED) == 7
    assert result.output.splitlines() == [
        "worker started: queues echo, boom, flaky; concurrency 4; idle poll 0.01s;"
        " database sqlite; stops after 1 job(s)",
        "worker stopped after 1 job(s)",
    ]


def test_show_finds_a_job_by_id_or_custom_id(runner: Any, app: Flask, queue: Queue) -> None:
    plain = queue.enqueue("echo", "plain", delay="1h")
    named = queue.enqueue("echo", "named", delay="1h", id="report-7")
    shown = runner.invoke(args=["queue", "show", "report-7"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["id"] == named.id
    # A job's id wins over another job's custom id that spells the same.
    queue.enqueue("echo", "decoy", delay="1h", id=plain.id)
    shown = runner.invoke(args=["queue", "show", plain.id])
    assert json.loads(shown.output)["payload"] == "plain"
    missing = runner.invoke(args=["queue", "show", "nope"])
    assert missing.exit_code == 1
    assert missing.output == "Error: No job with id or custom id 'nope'.\n"


def test_enqueue_says_when_it_kept_or_replaced_a_job(runner: Any, app: Flask, queue: Queue) -> None:
    first = runner.invoke(args=["queue", "enqueue", "echo", "1", "--delay", "1h", "--id", "c1"])
    first_id = first.output.split()[0]
    kept = runner.invoke(args=["queue", "enqueue", "echo", "2", "--delay", "5m", "--id", "c1"])
    assert kept.exit_code == 0, kept.output
    assert kept.output.startswith(f"kept existing job {first_id} (custom id 'c1') SCHEDULED at ")
    assert kept.output.rstrip().endswith(" UTC; pass --override to replace it")
    assert queue.get(first_id).payload == 1  # type: ignore[union-attr]
    replaced = runner.invoke(
        args=["queue", "enqueue", "echo", "3", "--delay", "5m", "--id", "c1", "--override"]
    )
    assert replaced.exit_code == 0, replaced.output
    new = queue.get_by_custom_id("c1")
    assert new is not None and new.payload == 3
    # Replaced in place (same job id) or by a new row: the message says which.
    how = "in place" if new.id == first_id else f"with job {new.id}"
    assert replaced.output == (
        f"replaced job {first_id} (custom id 'c1') {how}:"
        f" SCHEDULED at {new.run_at:%Y-%m-%d %H:%M:%S} UTC\n"
    )
    # Overriding when nothing had the id is a plain enqueue.
    fresh = runner.invoke(args=["queue", "enqueue", "echo", "4", "--id", "c2", "--override"])
    assert "replaced" not in fresh.output and "kept" not in fresh.output


def test_enqueue_after_a_finished_job_with_the_custom_id_is_plain(
    runner: Any, app: Flask, queue: Queue, clock: Clock
) -> None:
    failed = queue.enqueue("boom", "x", delay="1s", retry=0, id="c3")
    clock.advance(1)
    queue.produce()
    assert queue.get(failed.id).status is JobStatus.FAILED  # type: ignore[union-attr]
    result = runner.invoke(args=["queue", "enqueue", "echo", "1", "--id", "c3", "--delay", "1h"])
    assert result.exit_code == 0, result.output
    live = queue.get_by_custom_id("c3")
    assert live is not None and live.id != failed.id
    assert result.output.startswith(f"{live.id} SCHEDULED at ")


def test_list_reads_at_most_limit_jobs_from_an_iterator(
    runner: Any, app: Flask, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = queue.enqueue_many("echo", list(range(5)), delay="1h")
    taken: list[int] = []

    def every_job(state: Any, **kwargs: Any) -> Any:
        # As actions.jobs is: a lazy iterator over every matching job.
        for job in sorted(jobs, key=lambda j: j.id):
            taken.append(1)
            yield job

    import flask_queue.actions

    monkeypatch.setattr(flask_queue.actions, "jobs", every_job)
    listed = runner.invoke(args=["queue", "list", "--limit", "2"])
    assert listed.exit_code == 0, listed.output
    assert len(listed.output.splitlines()) == 2 + 2  # header, rule, two rows
    assert len(taken) == 2
