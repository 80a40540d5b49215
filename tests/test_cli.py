"""``flask queue ...`` through ``app.test_cli_runner()``."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask

from flask_queue import JobStatus, Queue
from tests.conftest import Clock, Recorder


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
    assert queue.jobs() == []


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
    assert queue.jobs() == []


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
