"""QUEUE_SCHEDULER=True: APScheduler calls produce in the serving process only."""

from __future__ import annotations

import threading
from typing import Any

from flask_queue import Job, Queue


def test_scheduler_starts_on_first_request_once_and_runs_due_jobs(make_app: Any) -> None:
    q = Queue()  # real clock: APScheduler runs on real time
    ran = threading.Event()

    @q.handler("tick")
    def tick(job: Job[str]) -> None:
        ran.set()

    app = make_app(q, QUEUE_SCHEDULER=True, QUEUE_PRODUCE_INTERVAL="0.2s")
    state = app.extensions["queue"]
    with app.app_context():
        q.enqueue("tick", "x", delay="0.3s")
    # Building the app and running CLI commands start nothing.
    assert app.test_cli_runner().invoke(args=["queue", "list"]).exit_code == 0
    assert state.scheduler is None
    client = app.test_client()
    threads = [threading.Thread(target=client.get, args=("/_queue/produce",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scheduler = state.scheduler
    assert scheduler is not None and scheduler.running
    assert len(scheduler.get_jobs()) == 1
    assert ran.wait(10), "the in-process producer never ran the due job"
    client.get("/_queue/produce")
    assert state.scheduler is scheduler  # still the one scheduler
    scheduler.shutdown(wait=True)
    assert not scheduler.running


def test_scheduler_needs_apscheduler_message(monkeypatch: Any, make_app: Any) -> None:
    import builtins

    import pytest

    from flask_queue import ConfigError

    real_import = builtins.__import__

    def no_apscheduler(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("apscheduler"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_apscheduler)
    with pytest.raises(ConfigError, match=r"flask_queue\[scheduler\]"):
        make_app(Queue(), QUEUE_SCHEDULER=True)
